"""Results table and plots from run folders.

``python -m pretraining.report RUN_DIR... --out results.md --plot results.png [--csv results.csv]``;
``python -m pretraining.report --glue_submission FINETUNE_DIR... --out glue.zip`` (:mod:`pretraining.finetune.glue.submission`)

A run folder is what ``run_pretraining.py`` writes (``args.json``, ``metrics.jsonl``)
plus what ``run_glue.py`` writes under it (``finetune/<task>/all_results.json``). A
folder that only holds a fine-tuning result (``all_results.json``, e.g. a reference
model fine-tuned directly) is a run too, shown as "fine-tune only". A folder that holds
none of these but has run folders below it stands for all of them.

The table has the seed's columns (model name, optimizer, precision, epochs, pretrain
loss, finetune loss, accuracy, F1) plus eval loss, wall time, tokens seen, throughput
and a status: ``complete``, ``partial: no end line`` (the run died or is still
running), ``missing fine-tune``, ``missing: ...``. Missing and partial runs are shown
as such, never crashed on. The report reads files only; it never needs wandb.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from pretraining.atomic import write_text_atomic
from pretraining.errors import UserError, run_main
from pretraining.outputs import check_output_file
from pretraining.train.progress import exit_code
from pretraining.report.runs import (ARGS_FILE, CONTROL, FINETUNE_DIR, METRICS_FILE, MISSING, RESULTS_FILE, RunRecord,
                              discover_runs, format_count, format_duration, load_run)

# (key, markdown header, formatter of a row -> cell text, or None when the value is missing)
COLUMNS: list[tuple[str, str, object]] = [
    ("run", "model name", None),
    ("model", "model", None),
    ("optimizer", "optimizer", None),
    ("precision", "precision", None),
    ("epochs", "epochs", lambda v: f"{v:g}"),
    ("pretrain_loss", "pretrain loss", lambda v: f"{v:.4f}"),
    ("eval_loss", "pretrain eval loss", lambda v: f"{v:.4f}"),
    ("eval_unigram_loss", "unigram baseline", lambda v: f"{v:.4f}"),
    ("eval_mlm_accuracy", "MLM accuracy", lambda v: f"{v:.4f}"),
    ("task", "fine-tune task", None),
    ("finetune_loss", "finetune loss", lambda v: f"{v:.4f}"),
    ("accuracy", "accuracy", "spread"),
    ("f1", "F1", "spread"),
    ("other_metrics", "other metrics", None),
    ("seeds", "seeds", lambda v: f"{v:d}"),
    ("gain", "gain vs control (points)", "gain"),
    ("wall_s", "wall time", lambda v: format_duration(v)),
    ("tokens", "tokens seen", lambda v: format_count(v)),
    ("tokens_per_s", "throughput (tokens/s)", lambda v: format_count(v)),
    ("status", "status", None),
]
#: CSV columns: the table's raw values (a mean under its *_mean name), then the spread and significance
CSV_NAMES = {"accuracy": "accuracy_mean", "f1": "f1_mean"}
CSV_EXTRA = ["accuracy_std", "f1_std", "main_metric", "main_mean", "main_std", "gain_spread", "significant",
             "control", "path"]
#: eval_* keys of all_results.json that are not task metrics (or have their own column)
NOT_OTHER_METRICS = {"loss", "accuracy", "f1", "runtime", "samples_per_second", "steps_per_second", "samples",
                     "combined_score", "epoch"}
#: suffixes run_glue.py --seeds adds to every metric
SEED_SUFFIXES = ("_std", "_per_seed")


def _last(entries: Sequence[dict], key: str):
    for entry in reversed(entries):
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def _model_label(args: dict) -> str:
    layers, hidden = args.get("num_hidden_layers"), args.get("hidden_size")
    if layers and hidden:
        return f"L{layers}-H{hidden}"
    source = args.get("model_name_or_path")
    return Path(str(source)).name if source else MISSING


def _status(record: RunRecord, has_finetune: bool) -> str:
    if "no such folder" in record.problems:
        return "missing: no such folder"
    if not (record.args or record.train or record.end or record.finetune):
        return "missing: empty run folder"
    parts = []
    if record.partial:
        parts.append("partial: no end line")
    elif record.end is not None:
        reason = record.end.get("reason")
        failed = "interrupted" if reason == "interrupted" else "failed"  # what exits non-zero did not finish its job
        parts.append(f"{failed} ({reason})" if exit_code(record.end) else f"complete ({reason})" if reason else "complete")
    elif has_finetune:
        parts.append("fine-tune only")
    if not has_finetune:
        parts.append("missing fine-tune")
    parts.extend(p for p in record.problems if p != "no such folder")
    return "; ".join(parts)


def pretraining_summary(record: RunRecord) -> dict:
    """Final pretraining figures of a run: loss, eval loss, epochs, wall time, tokens, tokens/s."""
    end = record.end or {}
    loss = end.get("final_loss")
    if not isinstance(loss, (int, float)):
        loss = _last(record.train, "loss")
    last_entries = record.train + record.evals + ([end] if end else [])
    elapsed = end.get("elapsed_s") if isinstance(end.get("elapsed_s"), (int, float)) else _last(last_entries, "elapsed_s")
    wall = _last(record.train, "wall_s")
    wall = max(wall or 0.0, elapsed or 0.0) or None
    tokens = end.get("tokens") if isinstance(end.get("tokens"), (int, float)) else _last(last_entries, "tokens")
    if tokens and elapsed:
        throughput = tokens / elapsed
    else:
        rates = [e["tokens_per_s"] for e in record.train if isinstance(e.get("tokens_per_s"), (int, float))]
        throughput = sum(rates) / len(rates) if rates else None
    return {
        "pretrain_loss": loss,
        "eval_loss": _last(record.evals, "eval_mlm_loss") or _last(record.evals, "eval_loss"),
        "eval_unigram_loss": _last(record.evals, "eval_unigram_loss"),
        "eval_mlm_accuracy": _last(record.evals, "eval_mlm_accuracy"),
        "epochs": _last(record.train + record.evals, "epoch"),
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": throughput,
    }


def _main_metric(task: Optional[str], results: dict) -> Optional[str]:
    """The task's main metric (GLUE's table; accuracy for other tasks) if its results have it."""
    from pretraining.finetune.glue import TASKS

    spec = TASKS.get(str(task))
    for name in ([spec.main_metric] if spec else []) + ["accuracy"]:
        if _number(results, f"eval_{name}") is not None:
            return name
    return None


def _number(results: dict, key: str):
    value = results.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def finetune_summary(results: dict, task: Optional[str] = None) -> dict:
    """Loss, accuracy and F1 of one all_results.json (absent metrics stay None), their spread over seeds,
    the task's main metric, and its other task metrics (Matthews correlation, Pearson, mismatched
    accuracy, ...) as one ``name value, ...`` text.

    A ``run_glue.py --seeds`` result holds means with ``<key>_std`` and ``<key>_per_seed``; a
    single run counts as one seed with no spread.
    """
    seeds = results.get("seeds")
    seeds = len(seeds) if isinstance(seeds, list) and seeds else 1

    def spread(key):
        return _number(results, f"{key}_std") if seeds > 1 else None

    others = [f"{key[len('eval_'):]} {_number(results, key):.4f}" for key in sorted(results)
              if key.startswith("eval_") and key[len("eval_"):] not in NOT_OTHER_METRICS
              and not key.endswith(SEED_SUFFIXES) and _number(results, key) is not None]
    main = _main_metric(task or results.get("task_name"), results)
    return {"finetune_loss": _number(results, "eval_loss"),
            "accuracy": _number(results, "eval_accuracy"), "accuracy_std": spread("eval_accuracy"),
            "f1": _number(results, "eval_f1"), "f1_std": spread("eval_f1"),
            "other_metrics": ", ".join(others) or None, "seeds": seeds, "main_metric": main,
            "main_mean": _number(results, f"eval_{main}") if main else None,
            "main_std": spread(f"eval_{main}") if main else None}


def add_gains(rows: list[dict]) -> None:
    """Give each fine-tuned row its gain over the control row of the same task and model shape.

    ``gain`` = main-metric mean minus the control's, in points (x100); ``gain_spread`` =
    sqrt(std^2 + std_control^2), also in points; ``significant`` = |gain| > gain_spread,
    None when either side has a single seed (no spread to judge by).
    """
    controls = {(r["task"], r["model"]): r for r in rows if r["optimizer"] == CONTROL and r["main_mean"] is not None}
    for row in rows:
        control = controls.get((row["task"], row["model"]))
        row.update(gain=None, gain_spread=None, significant=None, control=None)
        if control is None or row is control or row["main_mean"] is None or row["main_metric"] != control["main_metric"]:
            continue
        row["control"] = control["run"]
        row["gain"] = 100.0 * (row["main_mean"] - control["main_mean"])
        if row["main_std"] is not None and control["main_std"] is not None:
            row["gain_spread"] = 100.0 * math.hypot(row["main_std"], control["main_std"])
            row["significant"] = abs(row["gain"]) > row["gain_spread"]


def summarize(records: Sequence[RunRecord], task: Optional[str] = None) -> list[dict]:
    """One table row per (run, fine-tune task); a run without fine-tune results gets one row.

    ``task`` keeps only that task's results (others are ignored). Values are raw numbers
    or None for missing ones; :func:`render_markdown` formats them. Rows of the same task
    and model shape as a control run (optimizer ``none``) get their gain over it.
    """
    rows = []
    empty = {**finetune_summary({}), "finetune_loss": None, "accuracy": None, "f1": None, "other_metrics": None,
             "seeds": None}
    for record in records:
        base = {"run": record.name, "model": _model_label(record.args), "optimizer": record.optimizer,
                "precision": record.precision, "path": str(record.path)}
        base.update(pretraining_summary(record))
        tasks = {k: v for k, v in record.finetune.items() if task is None or k == task}
        status = _status(record, bool(tasks))
        if not tasks:
            rows.append({**base, "task": None, **empty, "status": status})
        for name, results in tasks.items():
            rows.append({**base, "task": name, **finetune_summary(results, name), "status": status})
    add_gains(rows)
    return rows


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _cell(row: dict, key: str, formatter) -> str:
    """The markdown cell of ``row[key]``: "mean ± std" for a metric over seeds, the gain with its spread."""
    value = row.get(key)
    if _missing(value):
        return MISSING
    if formatter is None:
        return str(value)
    if formatter == "spread":
        std = row.get(f"{key}_std")
        return f"{value:.4f}" if _missing(std) else f"{value:.4f} ± {std:.4f}"
    if formatter == "gain":
        if _missing(row.get("gain_spread")):
            return f"{value:+.1f} (1 seed)"
        return f"{value:+.1f} ± {row['gain_spread']:.1f}" + ("" if row["significant"] else " (n.s.)")
    return formatter(value)


def render_markdown(rows: Sequence[dict]) -> str:
    """A GitHub markdown table of ``rows`` (from :func:`summarize`), missing values as ``n/a``."""
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [_cell(row, key, fmt).replace("|", "\\|") for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[dict]) -> str:
    """The table as CSV with raw (unformatted) numbers and empty cells for missing values; a metric over
    seeds is its mean (``accuracy_mean``) with ``accuracy_std`` beside it."""
    keys = [key for key, _, _ in COLUMNS] + CSV_EXTRA
    names = [CSV_NAMES.get(key, key) for key in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def build_report(run_dirs: Iterable[str | Path], out: Optional[str | Path] = None,
                 plot: Optional[str | Path] = None, csv_path: Optional[str | Path] = None,
                 task: Optional[str] = None) -> tuple[list[dict], str]:
    """Read ``run_dirs``, write the markdown/CSV/PNG that are asked for; return (rows, markdown table).

    Raises UserError when no path holds any run at all (a typo, most likely).
    """
    run_dirs = list(run_dirs)
    records = [load_run(p) for p in discover_runs(run_dirs)]
    if not any(r.args or r.train or r.end or r.finetune for r in records):
        given = ", ".join(str(p) for p in run_dirs) or "(none)"
        raise UserError(f"no run found in {given}: pass folders that hold {ARGS_FILE}/{METRICS_FILE} "
                        f"(run_pretraining.py's output_dir/job_name) or {FINETUNE_DIR}/<task>/{RESULTS_FILE}")
    rows = summarize(records, task=task)
    table = render_markdown(rows)
    if out:
        body = ["# Results", "", table]
        if plot:
            body += [f"![results]({Path(plot).name if Path(plot).parent == Path(out).parent else plot})", ""]
        body += ["Pretrain loss: final training MLM loss; pretrain eval loss: last validation loss; "
                 "finetune loss/accuracy/F1: evaluation split of the fine-tune task. "
                 "Wall time and throughput are the pretraining run's.", ""]
        _write(Path(out), "\n".join(body))
    if csv_path:
        _write(Path(csv_path), render_csv(rows))
    if plot:
        from pretraining.report.plots import plot_runs

        plot_runs(records, rows, plot)
    return rows, table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pretraining.report",
        description="Results table (markdown + CSV) and plots from pretraining/fine-tuning run folders.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folders (output_dir/job_name), fine-tune output folders, or folders of runs")
    parser.add_argument("--out", help="write the markdown table here (e.g. results.md)")
    parser.add_argument("--plot", help="write the 4-panel PNG here (e.g. results.png)")
    parser.add_argument("--csv", help="write the table as CSV here (e.g. results.csv)")
    parser.add_argument("--task", help="only this fine-tune task's results (default: every task found)")
    parser.add_argument("--glue_submission", action="store_true",
                        help="instead of the table: gather one model's GLUE predictions (CoLA.tsv ... AX.tsv, written "
                             "by run_glue.py --do_predict) from the given fine-tuning folders into the zip --out names")
    parser.add_argument("--allow_partial", action="store_true",
                        help="--glue_submission: accept files of fewer rows than GLUE's test sets (a dry run)")
    return parser


@run_main
def main(argv: Optional[Sequence[str]] = None):
    """Print the results table; write the files named by --out/--csv/--plot."""
    args = _parser().parse_args(argv)
    if args.glue_submission:
        from pretraining.finetune.glue.submission import build_submission

        if not args.out or not args.out.endswith(".zip"):
            raise UserError("--glue_submission needs --out NAME.zip (the file the GLUE server takes)")
        rows = build_submission(args.run_dirs, check_output_file(args.out, flag="--out"), args.allow_partial)
        print("\n".join(f"{name}\t{count}" for name, count in rows.items()))
        print(f"GLUE submission: {args.out} ({len(rows)} files)")
        return rows
    for flag, path in (("--out", args.out), ("--csv", args.csv), ("--plot", args.plot)):
        if path:
            check_output_file(path, flag=flag)
    rows, table = build_report(args.run_dirs, out=args.out, plot=args.plot, csv_path=args.csv, task=args.task)
    print(table, end="", flush=True)
    for flag, path in (("table", args.out), ("csv", args.csv), ("plot", args.plot)):
        if path:
            print(f"{flag}: {path}")
    return rows



def results_table(results: Mapping[str, Mapping[str, float]], failed: Sequence[str] = ()) -> str:
    """A markdown table, one row per task, from each run's ``all_results.json`` dict (shell/finetune.sh's): a metric
    over several seeds as mean ± std; a task in ``failed`` as FAILED, never with numbers an earlier run left."""
    from pretraining.finetune.glue.tasks import METRICS

    rows = ["| task | metrics | eval_loss | train_runtime (s) |", "|---|---|---|---|"]
    for name, result in results.items():
        if name in failed:
            rows.append(f"| {name} | FAILED (its error is above; no result of this call) | - | - |")
            continue
        metrics = ", ".join(
            f"{k[len('eval_'):]} {v:.4f}" + (f" ± {result[k + '_std']:.4f}" if len(result.get("seeds", [])) > 1
                                             and isinstance(result.get(k + "_std"), (int, float)) else "")
            for k, v in result.items()
            if k.startswith("eval_") and isinstance(v, (int, float)) and k[len("eval_"):].split("_mm")[0] in METRICS)
        loss = result.get("eval_loss", math.nan)
        rows.append(f"| {name} | {metrics or '-'} | {loss:.4f} | {result.get('train_runtime', math.nan):.1f} |")
    return "\n".join(rows)

if __name__ == "__main__":
    main()

