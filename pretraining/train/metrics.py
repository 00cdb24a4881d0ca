"""Run metrics: ``metrics.jsonl`` always, a progress line on stdout, W&B when enabled.

Only the main rank writes. ``metrics.jsonl`` holds one JSON object per line with a
``type`` of ``train``, ``eval`` or ``end`` (see training.py for the fields). W&B is
used unless ``--no_wandb`` or ``WANDB_MODE=disabled``; without an API key (no
``WANDB_API_KEY``, no wandb entry in ~/.netrc) it runs offline into the run folder.
Argument values whose names look like secrets are never sent.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import sys
from pathlib import Path

SECRET_WORDS = ("key", "token", "secret", "password")


def format_clock(seconds: float) -> str:
    """``H:MM:SS`` for a number of seconds."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(record: dict, budget_s: float, loss_scale: float | None = None) -> str:
    """The human-readable line printed every --print_steps."""
    parts = [
        f"step {record['step']}", f"epoch {record['epoch']}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.3e}",
        f"{record['seq_per_s']:.1f} seq/s", f"{record['tokens_per_s']:,.0f} tok/s",
        f"elapsed {format_clock(record['elapsed_s'])} / {format_clock(budget_s)} "
        f"(remaining {format_clock(budget_s - record['elapsed_s'])})",
    ]
    if loss_scale is not None:
        parts.append(f"loss scale {loss_scale:g}")
    if record.get("skipped_steps"):
        parts.append(f"{record['skipped_steps']} updates skipped (fp16 overflow)")
    return " | ".join(parts)


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(no_wandb: bool) -> str:
    """disabled, offline or online, from --no_wandb, WANDB_MODE and whether a key is configured."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if no_wandb or env in ("disabled", "dryrun"):
        return "disabled"
    if env in ("offline", "online"):
        return env
    return "online" if _has_wandb_credentials() else "offline"


def redact(config: dict) -> dict:
    """``config`` without entries whose names look like secrets."""
    return {k: v for k, v in config.items() if not any(word in k.lower() for word in SECRET_WORDS)}


class RunLogger:
    """Writes metrics.jsonl, prints progress lines and mirrors to W&B (main rank only)."""

    def __init__(self, run_dir: Path, *, is_main: bool, budget_s: float, wandb: dict | None = None,
                 resume_step: int | None = None, stream=None):
        self.is_main = is_main
        self.budget_s = budget_s
        self.stream = stream or sys.stdout
        self.path = Path(run_dir) / "metrics.jsonl"
        self.run = None
        self._bar = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        if wandb and wandb.get("mode", "disabled") != "disabled":
            self.run = _start_wandb(run_dir=Path(run_dir), **wandb)
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(desc="pretraining", unit="step", dynamic_ncols=True)

    @property
    def wandb_run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def _truncate_after(self, step: int) -> None:
        """On resume, drop what the interrupted run logged after the checkpoint (and its end line)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            if record.get("type") != "end" and record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: _json_number(v) for k, v in record.items()}) + "\n")

    def print(self, message: str) -> None:
        """A line on stdout (main rank), above the progress bar when there is one."""
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def advance(self, step: int) -> None:
        """Move the interactive progress bar to ``step``."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def train(self, record: dict, loss_scale: float | None = None) -> None:
        if not self.is_main:
            return
        record = {"type": "train", **record}
        self._write(record)
        self.print(progress_line(record, self.budget_s, loss_scale))
        if self.run is not None:
            self.run.log({f"train/{k}": v for k, v in record.items() if k not in ("type", "step")}, step=record["step"])

    def eval(self, record: dict) -> None:
        if not self.is_main:
            return
        record = {"type": "eval", **record}
        self._write(record)
        extra = "".join(f", {label} {record[key]:.4f}" for key, label in (
            ("eval_mlm_accuracy", "MLM accuracy"), ("eval_unigram_loss", "unigram baseline")) if key in record)
        self.print(f"validation at step {record['step']}: eval loss {record['eval_loss']:.4f}{extra}")
        if self.run is not None:
            self.run.log({"validation/loss": record["eval_loss"],
                          **{f"validation/{k[len('eval_'):]}": v for k, v in record.items()
                             if k.startswith("eval_") and k != "eval_loss"}}, step=record["step"])

    def end(self, record: dict) -> None:
        if not self.is_main:
            return
        record = {"type": "end", **record}
        self._write(record)
        self.print(f"training ended ({record['reason']}) at step {record['step']} after "
                   f"{format_clock(record['elapsed_s'])} of training time; final loss {record['final_loss']:.4f}")
        if self.run is not None:
            self.run.summary.update({k: v for k, v in record.items() if k != "type"})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.run is not None:
            self.run.finish()
            self.run = None


def _json_number(value):
    """NaN/inf are not JSON: write them as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _start_wandb(*, run_dir: Path, mode: str, project: str, name: str, config: dict, run_id: str | None):
    import wandb

    return wandb.init(project=project, name=name, id=run_id, resume="allow" if run_id else None, dir=str(run_dir),
                      config=redact(config), mode=mode)
