"""The optimizer study's table and plots: ``STUDY/study.md``, ``study.csv``, ``study.png``.

Per optimizer and precision: the LR chosen on held-out MLM loss, the final eval loss and MLM accuracy (mean ± std
over the pretraining seeds, each judged at the end of its own schedule), throughput, steps and tokens, the
optimizer step's cost (ms and share of a training step) and its state memory, the time and tokens to a target
loss, and the difference from AdamW with its spread and Welch's t-test; with fine-tuning, each model's chosen
fine-tuning LR and score and the gain over the untrained control. The plot: eval loss against LR (one line per
optimizer, diverged points marked) and eval loss against training time (mean of the seeds, their range shaded).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from pretraining.report import runs
from pretraining.atomic import write_text_atomic

BASELINE = "adamw"
#: two-sided p-value below which a difference is marked significant
ALPHA = 0.05


def _mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def compare(a: Sequence[float], b: Sequence[float]) -> dict:
    """mean(a) - mean(b), its spread sqrt(sa^2/na + sb^2/nb) and Welch's two-sided p (scipy); None where a side is
    empty; p None with fewer than 2 values a side."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    if not a or not b:
        return {"diff": None, "spread": None, "p": None}
    (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
    spread = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    p = None
    if len(a) > 1 and len(b) > 1:
        from scipy.stats import ttest_ind

        p = float(ttest_ind(a, b, equal_var=False).pvalue)
        p = 1.0 if math.isnan(p) else p  # identical constant samples
    return {"diff": ma - mb, "spread": spread, "p": p}


def _mark(result: dict, spec: str = ".3f") -> str:
    if result["diff"] is None:
        return "n/a"
    p = result["p"]
    sig = "" if p is None else (" *" if p < ALPHA else " (n.s.)")
    return f"{format(result['diff'], '+' + spec)} ± {format(result['spread'], spec)}{sig}"


def _final_eval(record: runs.RunRecord) -> dict:
    evals = [e for e in record.evals if "eval_loss" in e]
    return evals[-1] if evals else {}


def time_to_target(record: runs.RunRecord, target: float) -> tuple[Optional[float], Optional[float]]:
    """(training seconds, tokens) at the first validation whose loss is <= target, or (None, None)."""
    for entry in record.evals:
        if entry.get("eval_loss", math.inf) <= target:
            return entry.get("elapsed_s"), entry.get("tokens")
    return None, None


def optimizer_costs(run_dir: Path, repeats: int = 5) -> dict:
    """The optimizer step's time (median of ``repeats`` steps with fixed random gradients, this process's threads)
    and the bytes of its state, on the run's exported model with the run's optimizer settings."""
    import dataclasses

    import torch

    import pretraining.checkpoints.layouts  # noqa: F401 - the export is in a stock layout
    from pretraining.train.args import OptimizerArguments
    from pretraining.model.modeling import BertForPreTraining
    from pretraining.train.optimizers import build_optimizer

    args = json.loads((run_dir / runs.ARGS_FILE).read_text())
    names = {f.name for f in dataclasses.fields(OptimizerArguments)}
    opt_args = OptimizerArguments(**{k: v for k, v in args.items() if k in names})
    model = BertForPreTraining.from_pretrained(str(run_dir / "pretrained"))
    optimizer = build_optimizer(model, opt_args)
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=generator) * 1e-2 for p in model.parameters()]
    times = []
    for _ in range(repeats + 1):
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        began = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - began)
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t))
    times = sorted(times[1:])  # the first step allocates the state
    return {"step_ms": 1000 * times[len(times) // 2], "state_mb": state_bytes / 2**20}


def _cached_costs(out: Path, run_dir: Path) -> dict:
    """optimizer_costs, measured once per run and kept in STUDY/optimizer_costs.json (a rerun shows the same)."""
    from pretraining.atomic import write_json_atomic

    path = out / "optimizer_costs.json"
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        cache = {}
    if run_dir.name not in cache:
        cache[run_dir.name] = optimizer_costs(run_dir)
        write_json_atomic(path, cache)
    return cache[run_dir.name]


def load_records(study, seeds: dict) -> dict:
    """The finished seed runs of each (optimizer, precision), read once for the table and the plot."""
    return {key: [runs.load_run(study.run_dir(s.spec)) for s in states if s.status == "done"]
            for key, states in seeds.items()}


def build_rows(study, chosen: dict, records: dict, controls: dict) -> list[dict]:
    a = study.args
    finals = {key: [_final_eval(r).get("eval_loss") for r in recs] for key, recs in records.items()}
    means = [m for m in (_mean_std(v)[0] for v in finals.values()) if m is not None]
    target = a.target_loss if a.target_loss is not None else (max(means) if means else None)
    rows = []
    for precision in a.precisions:
        control_records = [runs.load_run(study.run_dir(s.spec)) for s in controls.get(precision, [])
                           if s.status == "done"]
        control_scores = [_finetune_score(r, a.finetune_task) for r in control_records]
        if a.control:
            loss_mean, loss_std = _mean_std([_final_eval(r).get("eval_loss") for r in control_records])
            score_mean, score_std = _mean_std([s for s, _ in control_scores])
            rows.append({"optimizer": "untrained (control)", "precision": precision, "lr": None,
                         "seeds": len(control_records), "eval_loss": loss_mean, "eval_loss_std": loss_std,
                         "finetune_score": score_mean, "finetune_score_std": score_std,
                         "finetune_lrs": _lrs(control_scores), "unigram": _mean_std(
                             [_final_eval(r).get("eval_unigram_loss") for r in control_records])[0]})
        baseline = finals.get((BASELINE, precision), [])
        for optimizer in a.optimizers:
            key = (optimizer, precision)
            recs = records.get(key, [])
            c = chosen.get(key, {})
            grid = c.get("grid", {})
            row = {"optimizer": optimizer, "precision": precision, "lr": c.get("lr"), "seeds": len(recs),
                   "grid": {f"{lr:g}": (s.eval_loss if s.status == "done" else s.status) for lr, s in sorted(grid.items())}}
            loss_mean, loss_std = _mean_std(finals.get(key, []))
            acc_mean, acc_std = _mean_std([_final_eval(r).get("eval_mlm_accuracy") for r in recs])
            ends = [r.end or {} for r in recs]
            row.update(eval_loss=loss_mean, eval_loss_std=loss_std, mlm_accuracy=acc_mean, mlm_accuracy_std=acc_std,
                       steps=_mean_std([e.get("step") for e in ends])[0],
                       tokens=_mean_std([e.get("tokens") for e in ends])[0],
                       elapsed_s=_mean_std([e.get("elapsed_s") for e in ends])[0],
                       tokens_per_s=_mean_std([e["tokens"] / e["elapsed_s"] for e in ends
                                               if e.get("tokens") and e.get("elapsed_s")])[0],
                       diverged=sum(1 for s in grid.values() if s.status == "diverged"))
            if recs:
                try:
                    costs = _cached_costs(study.out, recs[0].path)
                except Exception as exc:  # noqa: BLE001 - a cost that cannot be measured is a blank cell
                    costs = {"step_ms": None, "state_mb": None}
                    study.say(f"{optimizer}: optimizer cost not measured ({exc})")
                step_ms = 1000 * row["elapsed_s"] / row["steps"] if row["steps"] else None
                row.update(opt_step_ms=costs["step_ms"], state_mb=costs["state_mb"],
                           opt_share=(costs["step_ms"] / step_ms if costs["step_ms"] and step_ms else None))
            if target is not None:
                reached = [time_to_target(r, target) for r in recs]
                hit = [(t, k) for t, k in reached if t is not None]
                row.update(target=target, target_reached=f"{len(hit)}/{len(recs)}",
                           time_to_target=_mean_std([t for t, _ in hit])[0],
                           tokens_to_target=_mean_std([k for _, k in hit])[0])
            row["vs_adamw"] = compare(finals.get(key, []), baseline) if optimizer != BASELINE else None
            if a.finetune_task:
                scores = [_finetune_score(r, a.finetune_task) for r in recs]
                mean, std = _mean_std([s for s, _ in scores])
                row.update(finetune_score=mean, finetune_score_std=std, finetune_lrs=_lrs(scores),
                           gain=compare([s for s, _ in scores], [s for s, _ in control_scores]) if a.control else None)
            rows.append(row)
    return rows


def _finetune_score(record: runs.RunRecord, task: Optional[str]) -> tuple[Optional[float], Optional[float]]:
    """(main metric in points, chosen fine-tuning LR) of a run's fine-tuning, or (None, None)."""
    if not task:
        return None, None
    results = record.finetune.get(task) or {}
    from pretraining.finetune.glue import get_task

    metric = f"eval_{get_task(task).main_metric}"
    value = results.get(metric)
    if not isinstance(value, (int, float)):
        return None, None
    scale = 1.0 if get_task(task).main_metric == "mse" else 100.0
    return float(value) * scale, results.get("learning_rate")


def _lrs(scores) -> str:
    values = sorted({f"{lr:g}" for _, lr in scores if lr is not None}, key=float)
    return ", ".join(values) or "n/a"


def _fmt(value, spec: str = ".3f", std=None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = format(value, spec)
    return f"{text} ± {format(std, spec)}" if std is not None else text


def render(rows: Sequence[dict], study) -> str:
    a = study.args
    budget = f"{a.max_steps} optimizer steps" if a.max_steps else f"{a.budget_minutes:g} minutes of training time"
    lines = ["# Optimizer study", "",
             f"Every run: {budget} (its own full schedule), judged by its final held-out MLM loss; seeds "
             f"{' '.join(map(str, a.seeds))} (initialisation and data order); LR chosen per optimizer on its grid with "
             f"seed {a.seeds[0]}. ± is the standard deviation over the seeds; the difference from AdamW is "
             "mean ± sqrt(s1²/n1 + s2²/n2), * where Welch's t-test gives p < 0.05, (n.s.) otherwise.", "",
             "| optimizer | precision | LR | seeds | eval loss | MLM acc | vs AdamW (loss) | tokens/s | steps | "
             "opt step ms (% of step) | opt state MB | time to target | tokens to target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["optimizer"].startswith("untrained"):
            lines.append(f"| {r['optimizer']} | {r['precision']} | | {r['seeds']} | "
                         f"{_fmt(r['eval_loss'], std=r['eval_loss_std'])} | 0 | | | 0 | | | | |")
            continue
        share = f" ({100 * r['opt_share']:.0f}%)" if r.get("opt_share") else ""
        lines.append(
            f"| {r['optimizer']} | {r['precision']} | {_fmt(r['lr'], 'g')} | {r['seeds']} | "
            f"{_fmt(r['eval_loss'], std=r['eval_loss_std'])} | "
            f"{_fmt(None if r.get('mlm_accuracy') is None else 100 * r['mlm_accuracy'], '.1f', None if r.get('mlm_accuracy_std') is None else 100 * r['mlm_accuracy_std'])} | "
            f"{'(baseline)' if r['vs_adamw'] is None else _mark(r['vs_adamw'])} | {_fmt(r.get('tokens_per_s'), ',.0f')} | "
            f"{_fmt(r.get('steps'), '.0f')} | {_fmt(r.get('opt_step_ms'), '.2f')}{share} | {_fmt(r.get('state_mb'), '.2f')} | "
            f"{_fmt(r.get('time_to_target'), '.0f')}{' s' if r.get('time_to_target') else ''} ({r.get('target_reached', 'n/a')}) | "
            f"{_fmt(r.get('tokens_to_target'), ',.0f')} |")
    target = next((r.get("target") for r in rows if r.get("target") is not None), None)
    if target is not None:
        lines += ["", f"Target loss {target:.3f} ({'--target_loss' if a.target_loss is not None else 'the worst optimizer mean, reached by all'}); "
                      "time to target is training time at the first validation at or below it (seeds that reached it)."]
    lines += ["", "## LR grids (final eval loss of the first seed; the chosen LR in bold)", "",
              "| optimizer | precision | grid |", "|---|---|---|"]
    for r in rows:
        if "grid" in r:
            cells = []
            for lr, v in r["grid"].items():
                text = f"{lr}: {v:.3f}" if isinstance(v, float) and math.isfinite(v) else f"{lr}: {v}"
                cells.append(f"**{text}**" if r["lr"] is not None and float(lr) == r["lr"] else text)
            lines.append(f"| {r['optimizer']} | {r['precision']} | {'; '.join(cells)} |")
    if a.finetune_task:
        lines += ["", f"## Fine-tuning on {a.finetune_task}", "",
                  ("Each model (every seed) chose its own" if a.finetune_lr_per_model else
                   "Each optimizer's first-seed model (and the control's) chose its arm's") +
                  f" fine-tuning LR from {', '.join(f'{v:g}' for v in a.finetune_lr_grid)} on a dev split carved out "
                  "of the training examples (run_glue.py --learning_rate_grid); every model was then fine-tuned "
                  f"(seed {a.finetune_seed}) and scored on the validation split, so the ± spans the pretraining seeds. "
                  "Gain: mean minus the untrained control's, ± the spread, * where Welch's t-test gives p < 0.05.", "",
                  "| model | precision | seeds | fine-tuning LRs chosen | score | gain vs control |", "|---|---|---|---|---|---|"]
        for r in rows:
            gain = r.get("gain")
            lines.append(f"| {r['optimizer']} | {r['precision']} | {r['seeds']} | {r.get('finetune_lrs', 'n/a')} | "
                         f"{_fmt(r.get('finetune_score'), '.1f', r.get('finetune_score_std'))} | "
                         f"{'' if gain is None else _mark(gain, '.1f')} |")
    if study.failed:
        lines += ["", "## Failed runs", ""] + [f"- {job}: {why}" for job, why in study.failed.items()]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["optimizer", "precision", "lr", "seeds", "eval_loss", "eval_loss_std", "mlm_accuracy",
               "mlm_accuracy_std", "vs_adamw_diff", "vs_adamw_spread", "vs_adamw_p", "tokens_per_s", "steps", "tokens",
               "elapsed_s", "opt_step_ms", "opt_share", "state_mb", "target", "time_to_target", "tokens_to_target",
               "diverged", "finetune_lrs", "finetune_score", "finetune_score_std", "gain_diff", "gain_spread", "gain_p"]


def render_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        flat = dict(r)
        for name in ("vs_adamw", "gain"):
            for key in ("diff", "spread", "p"):
                flat[f"{name}_{key}"] = (r.get(name) or {}).get(key)
        writer.writerow(flat)
    return buffer.getvalue()


def plot(rows: Sequence[dict], records: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for r in rows:
        if "grid" not in r or not r["grid"]:
            continue
        label = f"{r['optimizer']} {r['precision']}"
        points = [(float(lr), v) for lr, v in r["grid"].items()]
        finite = [(lr, v) for lr, v in points if isinstance(v, float) and math.isfinite(v)]
        line = left.plot([lr for lr, _ in finite], [v for _, v in finite], marker="o", label=label)[0]
        top = max([v for _, v in finite], default=10.0)
        for lr, v in points:
            if not (isinstance(v, float) and math.isfinite(v)):
                left.scatter([lr], [top * 1.05], marker="x", color=line.get_color(), s=60)
    left.set_xscale("log")
    left.set_xlabel("peak learning rate (x: diverged)")
    left.set_ylabel("final held-out MLM loss (first seed)")
    left.set_title("LR sensitivity")
    left.legend(fontsize=8)
    for (optimizer, precision), recs in records.items():
        curves = [[e for e in r.evals if "eval_loss" in e] for r in recs]
        n = min((len(c) for c in curves), default=0)
        if not n:
            continue
        xs = [sum(c[i]["elapsed_s"] for c in curves) / len(curves) for i in range(n)]
        ys = [[c[i]["eval_loss"] for c in curves] for i in range(n)]
        line = right.plot(xs, [sum(y) / len(y) for y in ys], label=f"{optimizer} {precision} ({len(curves)} seeds)")[0]
        right.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.2)
    right.set_xlabel("training time (s)")
    right.set_ylabel("held-out MLM loss")
    right.set_title("chosen LR: mean of the seeds, their range shaded")
    right.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(study, chosen: dict, seeds: dict, controls: dict) -> tuple[list[dict], str]:
    records = load_records(study, seeds)
    rows = build_rows(study, chosen, records, controls)
    table = render(rows, study)
    write_text_atomic(study.out / "study.md", table)
    write_text_atomic(study.out / "study.csv", render_csv(rows))
    plot(rows, records, study.out / "study.png")
    return rows, table
