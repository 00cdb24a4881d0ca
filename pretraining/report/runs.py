"""Run folders read back: what ``run_pretraining.py`` wrote (``args.json``, ``metrics.jsonl``) and what
``run_glue.py`` wrote under it (``finetune/<task>/all_results.json``), as a :class:`RunRecord`; damaged or
missing files become the record's ``problems``, never an exception. The table built from them is
:mod:`pretraining.report.table`; the demo reads its stages' state through these names too."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

ARGS_FILE = "args.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "all_results.json"
FINETUNE_DIR = "finetune"

MISSING = "n/a"
#: the optimizer shown for a no-pretraining control run (``run_pretraining.py --max_steps 0``)
CONTROL = "none"


@dataclass
class RunRecord:
    """Everything read from one run folder: its arguments, metric curves and fine-tune results."""

    path: Path
    name: str
    args: dict = field(default_factory=dict)
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    end: Optional[dict] = None
    finetune: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def has_pretraining(self) -> bool:
        return bool(self.train or self.end or (self.path / METRICS_FILE).exists())

    @property
    def is_control(self) -> bool:
        """A finished run that took no optimizer step: the untrained model (``--max_steps 0``)."""
        return self.end is not None and self.end.get("step") == 0

    @property
    def optimizer(self) -> str:
        if self.is_control:
            return CONTROL
        return str(self.args.get("optimizer_type") or ("pretrained" if not self.has_pretraining else MISSING))

    @property
    def precision(self) -> str:
        precision = self.args.get("precision")
        if precision:
            return str(precision)
        if self.args.get("bf16"):
            return "bf16"
        if self.args.get("fp16"):
            return "fp16"
        return "fp32" if self.args else MISSING

    @property
    def partial(self) -> bool:
        return self.has_pretraining and self.end is None


def format_duration(seconds: float) -> str:
    """``75.3`` -> ``"1m15s"``; ``4000`` -> ``"1h06m40s"``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_count(value: float) -> str:
    """``1234567`` -> ``"1.23M"``; small numbers as integers."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _read_json(path: Path, problems: list[str]) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"unreadable {path.name}: {exc}")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object")
        return {}
    return data


def _read_metrics(path: Path, record: RunRecord) -> None:
    """Fill ``record.train/evals/end`` from metrics.jsonl, skipping malformed lines (a killed writer)."""
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(entry, dict):
                bad += 1
                continue
            kind = entry.get("type")
            if kind == "train":
                record.train.append(entry)
            elif kind == "eval":
                record.evals.append(entry)
            elif kind == "end":
                record.end = entry
    if bad:
        record.problems.append(f"{bad} malformed line(s) in {METRICS_FILE} skipped")


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in (ARGS_FILE, METRICS_FILE, RESULTS_FILE, FINETUNE_DIR))


def discover_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Expand ``paths`` to run folders: a run folder stays, a folder of run folders becomes its runs.

    Paths that do not exist are kept (they are reported as missing runs); a folder with no
    run anywhere below it (two levels deep) is kept as well, so that it shows as missing.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir() or _is_run_dir(path):
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and _is_run_dir(p))
        if not children:
            children = sorted(g for c in path.iterdir() if c.is_dir() for g in c.iterdir()
                              if g.is_dir() and _is_run_dir(g))
        found.extend(children or [path])
    return found


def load_run(path: str | Path) -> RunRecord:
    """Read one run folder. Never raises for missing or damaged files: they go to ``problems``."""
    path = Path(path)
    record = RunRecord(path=path, name=path.name or str(path))
    if not path.is_dir():
        record.problems.append("no such folder")
        return record
    if (path / ARGS_FILE).exists():
        record.args = _read_json(path / ARGS_FILE, record.problems)
    record.name = str(record.args.get("job_name") or record.name)
    if (path / METRICS_FILE).exists():
        _read_metrics(path / METRICS_FILE, record)
    if (path / RESULTS_FILE).exists():  # a fine-tune output folder given directly
        results = _read_json(path / RESULTS_FILE, record.problems)
        record.finetune[str(results.get("task_name") or record.args.get("task_name") or "task")] = results
    finetune_root = path / FINETUNE_DIR
    if finetune_root.is_dir():
        for task_dir in sorted(p for p in finetune_root.iterdir() if p.is_dir()):
            if (task_dir / RESULTS_FILE).exists():
                results = _read_json(task_dir / RESULTS_FILE, record.problems)
                if results:
                    record.finetune[task_dir.name] = results
    if not (record.args or record.train or record.end or record.finetune):
        record.problems.append(f"no {ARGS_FILE}, {METRICS_FILE} or fine-tune results")
    return record
