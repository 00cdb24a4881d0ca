"""The report's figure: pretraining loss against training time and tokens (with the unigram baseline), and
fine-tuning scores by run with their spread over seeds and the untrained control's line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from pretraining.report.runs import CONTROL, RunRecord


def _run_label(record: RunRecord) -> str:
    label = f"{record.name} ({record.optimizer}, {record.precision})"
    return label + " [partial]" if record.partial else label


def _curve(entries: Sequence[dict], x_key: str, y_key: str):
    points = [(e[x_key], e[y_key]) for e in entries
              if isinstance(e.get(x_key), (int, float)) and isinstance(e.get(y_key), (int, float))
              and math.isfinite(e[y_key])]
    return [p[0] for p in points], [p[1] for p in points]


_TIME_UNITS = ((3600.0 * 2, 3600.0, "hours"), (120.0, 60.0, "minutes"), (0.0, 1.0, "seconds"))
_COUNT_UNITS = ((2e9, 1e9, "billions"), (2e6, 1e6, "millions"), (2e3, 1e3, "thousands"), (0.0, 1.0, ""))


def _unit(largest: float, units) -> tuple[float, str]:
    """The (divisor, name) of the first unit whose threshold ``largest`` reaches."""
    for threshold, divisor, name in units:
        if largest >= threshold:
            return divisor, name
    return units[-1][1], units[-1][2]


def _plot_lines(ax, records, colors, entries_of, x_key, y_key, x_kind, ylabel, title) -> float:
    """One line per run of ``y_key`` against ``x_key`` ("time" or "tokens" axis, unit picked from the data);
    returns the divisor of the x unit it picked."""
    curves = []
    for record in records:
        xs, ys = _curve(entries_of(record), x_key, y_key)
        if x_key == "wall_s" and not xs:  # logs without wall_s: training time only
            xs, ys = _curve(entries_of(record), "elapsed_s", y_key)
        if xs:
            curves.append((record, xs, ys))
    largest = max((max(xs) for _, xs, _ in curves), default=0.0)
    if x_kind == "time":
        divisor, unit = _unit(largest, _TIME_UNITS)
        xlabel = f"wall-clock time ({unit})"
    else:
        divisor, unit = _unit(largest, _COUNT_UNITS)
        xlabel = f"tokens seen ({unit})" if unit else "tokens seen"
    for record, xs, ys in curves:
        ax.plot([x / divisor for x in xs], ys, color=colors[record.name], linestyle="--" if record.partial else "-",
                marker="o" if len(xs) < 15 else None, markersize=3, linewidth=1.5, label=_run_label(record))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    return divisor


def _mlm_evals(record: RunRecord) -> list[dict]:
    """Eval lines with the masked-LM loss as ``eval_loss`` (NSP runs log it apart as ``eval_mlm_loss``)."""
    return [{**e, "eval_loss": e.get("eval_mlm_loss", e.get("eval_loss"))} for e in record.evals]


def _plot_baselines(ax, records, colors, divisor: float) -> None:
    """Each run's no-context baseline (``eval_unigram_loss``) as a dotted line in its colour over its evals' x-range."""
    for record in records:
        xs, ys = _curve(record.evals, "tokens", "eval_unigram_loss")
        if xs:
            ax.plot([min(xs) / divisor, max(xs) / divisor], [sum(ys) / len(ys)] * 2, color=colors[record.name],
                    linestyle=":", linewidth=1.5)


def _plot_finetune_bars(ax, rows, colors):
    """Accuracy (solid) and F1 (hatched) per run, runs grouped by (optimizer, precision)."""
    import numpy as np

    ordered = sorted(rows, key=lambda r: (r["optimizer"], r["precision"], r["run"], r["task"] or ""))
    positions, labels, x, previous_group = [], [], 0.0, None
    for row in ordered:
        group = (row["optimizer"], row["precision"])
        if previous_group is not None and group != previous_group:
            x += 0.6  # gap between optimizer/precision groups
        previous_group = group
        positions.append(x)
        task = f"\n{row['task']}" if row["task"] and len({r["task"] for r in rows if r["task"]}) > 1 else ""
        labels.append(f"{row['optimizer']}\n{row['precision']}\n{row['run']}{task}")
        x += 1.0
    width = 0.38
    for pos, row in zip(positions, ordered):
        color = colors.get(row["run"], "gray")
        if row["task"] is None:
            ax.text(pos, 0.02, "no fine-tune", ha="center", va="bottom", fontsize=8, rotation=90, color="dimgray")
            continue
        for offset, key, hatch in ((-width / 2, "accuracy", None), (width / 2, "f1", "//")):
            value = row.get(key)
            if value is None:
                ax.text(pos + offset, 0.02, f"no {key}", ha="center", va="bottom", fontsize=8, rotation=90,
                        color="dimgray")
                continue
            std = row.get(f"{key}_std")
            ax.bar(pos + offset, value, width, color=color, hatch=hatch, edgecolor="black", linewidth=0.5,
                   yerr=std, capsize=3 if std else 0)
            ax.text(pos + offset, value + (std or 0) + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
        if row["optimizer"] == CONTROL and row.get("accuracy") is not None:
            ax.axhline(row["accuracy"], color="gray", linestyle="--", linewidth=1, label="control accuracy")
    ax.set_xticks(np.asarray(positions), labels, fontsize=7)
    if positions:
        ax.set_xlim(positions[0] - 0.7, positions[-1] + 0.7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (fraction)")
    tasks = sorted({r["task"] for r in rows if r["task"]})
    ax.set_title("Fine-tune accuracy / F1" + (f" ({', '.join(tasks)})" if tasks else ""))
    ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", label="accuracy"),
                       Patch(facecolor="white", edgecolor="black", hatch="//", label="F1")], fontsize=8)
    if not ordered:
        ax.text(0.5, 0.5, "no fine-tune results", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_runs(records: Sequence[RunRecord], rows: Sequence[dict], path: str | Path) -> Path:
    """Write the 4-panel PNG: train loss vs wall time and vs tokens, eval loss, fine-tune bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10").colors
    colors = {r.name: palette[i % len(palette)] for i, r in enumerate(records)}
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    try:
        _plot_lines(axes[0, 0], records, colors, lambda r: r.train, "wall_s", "loss", "time",
                    "training loss (MLM)", "Pretraining loss vs wall-clock time")
        _plot_lines(axes[0, 1], records, colors, lambda r: r.train, "tokens", "loss", "tokens",
                    "training loss (MLM)", "Pretraining loss vs tokens")
        divisor = _plot_lines(axes[1, 0], records, colors, _mlm_evals, "tokens", "eval_loss", "tokens",
                              "validation loss (MLM)", "Pretraining validation loss vs tokens (dotted: unigram baseline)")
        _plot_baselines(axes[1, 0], records, colors, divisor)
        _plot_finetune_bars(axes[1, 1], [r for r in rows if r["task"] or r["optimizer"] != "pretrained"], colors)
        fig.suptitle("Budget BERT: pretraining and fine-tuning by optimizer and precision "
                     "(dashed = partial run)", fontsize=13)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
