"""pretraining.report.table on synthetic run folders written in the run_pretraining/run_glue formats."""

from __future__ import annotations

import csv
import math
import io
import json
import struct
from pathlib import Path

import pytest

from pretraining.report import table as report
from pretraining.errors import UserError


def _write_run(root: Path, name: str, optimizer: str, precision: str, losses, *, tokens_per_step=4096,
               seconds_per_step=2.0, end=True, finetune=None, evals=(), truncated_tail=False) -> Path:
    """A run folder as run_pretraining.py writes it; returns its path."""
    run = root / name
    run.mkdir(parents=True)
    args = {"job_name": name, "optimizer_type": optimizer, "precision": precision, "lr": 1e-3,
            "hidden_size": 128, "num_hidden_layers": 2, "total_training_time": 0.01}
    (run / "args.json").write_text(json.dumps(args))
    lines = []
    for i, loss in enumerate(losses, start=1):
        lines.append({"type": "train", "step": i, "epoch": (i - 1) // 2, "elapsed_s": i * seconds_per_step,
                      "wall_s": i * seconds_per_step + 5.0, "lr": 1e-3, "loss": loss, "seq_per_s": 32.0,
                      "tokens_per_s": tokens_per_step / seconds_per_step, "tokens": i * tokens_per_step,
                      "samples": i * 32})
    for step, eval_loss in evals:
        lines.append({"type": "eval", "step": step, "epoch": (step - 1) // 2, "elapsed_s": step * seconds_per_step,
                      "tokens": step * tokens_per_step, "eval_loss": eval_loss})
    n = len(losses)
    if end:
        lines.append({"type": "end", "reason": "time_budget", "step": n, "elapsed_s": n * seconds_per_step,
                      "tokens": n * tokens_per_step, "final_loss": losses[-1]})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if truncated_tail:
        text += '{"type": "train", "step": 99, "lo'  # the writer was killed mid-line
    (run / "metrics.jsonl").write_text(text)
    if finetune is not None:
        task_dir = run / "finetune" / "rotten_tomatoes"
        task_dir.mkdir(parents=True)
        (task_dir / "all_results.json").write_text(json.dumps({"task_name": "rotten_tomatoes", **finetune}))
    return run


@pytest.fixture()
def runs(tmp_path):
    """Four runs: complete+fine-tuned (2), partial (killed) with fine-tune, complete without fine-tune."""
    root = tmp_path / "out"
    _write_run(root, "adamw_run", "adamw", "fp32", [9.0, 8.0, 7.5, 7.25], evals=[(2, 8.1), (4, 7.4)],
               finetune={"eval_loss": 0.61, "eval_accuracy": 0.6875, "eval_f1": 0.7011, "train_loss": 0.66,
                         "epoch": 1.0})
    _write_run(root, "lamb_run", "lamb", "bf16", [9.5, 8.5, 8.0], tokens_per_step=2048, seconds_per_step=1.0,
               finetune={"eval_loss": 0.64, "eval_accuracy": 0.625, "train_loss": 0.68, "epoch": 1.0})
    _write_run(root, "adam_run", "adam", "fp32", [9.2, 8.9], end=False, truncated_tail=True,
               finetune={"eval_loss": 0.69, "eval_accuracy": 0.55, "eval_f1": 0.5, "epoch": 1.0})
    _write_run(root, "adafactor_run", "adafactor", "fp16", [9.9, 9.1, 8.7])
    reference = tmp_path / "minilm_reference"
    reference.mkdir()
    (reference / "all_results.json").write_text(json.dumps(
        {"task_name": "rotten_tomatoes", "eval_loss": 0.4, "eval_accuracy": 0.82, "eval_f1": 0.84, "epoch": 1.0}))
    return root, reference


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_table_values_equal_inputs(runs, tmp_path):
    root, reference = runs
    out, csv_path, png = tmp_path / "r" / "results.md", tmp_path / "r" / "results.csv", tmp_path / "r" / "results.png"
    rows, table = report.build_report([root, reference], out=out, plot=png, csv_path=csv_path)

    by_run = {r["run"]: r for r in rows}
    assert set(by_run) == {"adamw_run", "lamb_run", "adam_run", "adafactor_run", "minilm_reference"}
    adamw = by_run["adamw_run"]
    assert adamw["optimizer"] == "adamw" and adamw["precision"] == "fp32" and adamw["model"] == "L2-H128"
    assert adamw["pretrain_loss"] == 7.25 and adamw["eval_loss"] == 7.4 and adamw["epochs"] == 1
    assert adamw["finetune_loss"] == 0.61 and adamw["accuracy"] == 0.6875 and adamw["f1"] == 0.7011
    assert adamw["tokens"] == 4 * 4096 and adamw["tokens_per_s"] == pytest.approx(4096 / 2.0)
    assert adamw["wall_s"] == pytest.approx(4 * 2.0 + 5.0)
    assert adamw["status"] == "complete (time_budget)"
    lamb = by_run["lamb_run"]
    assert lamb["precision"] == "bf16" and lamb["f1"] is None and lamb["accuracy"] == 0.625
    assert lamb["tokens"] == 3 * 2048 and lamb["tokens_per_s"] == pytest.approx(2048.0)
    adam = by_run["adam_run"]
    assert adam["status"].startswith("partial: no end line") and "malformed" in adam["status"]
    assert adam["pretrain_loss"] == 8.9 and adam["tokens"] == 2 * 4096  # last good line, not the torn one
    assert "missing fine-tune" in by_run["adafactor_run"]["status"] and by_run["adafactor_run"]["accuracy"] is None
    ref = by_run["minilm_reference"]
    assert ref["status"] == "fine-tune only" and ref["optimizer"] == "pretrained" and ref["accuracy"] == 0.82

    # The CSV carries the same raw numbers; the markdown shows them formatted, n/a where missing.
    parsed = {r["run"]: r for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    assert float(parsed["adamw_run"]["accuracy_mean"]) == 0.6875 and float(parsed["lamb_run"]["pretrain_loss"]) == 8.0
    assert parsed["lamb_run"]["f1_mean"] == "" and parsed["adafactor_run"]["task"] == ""
    assert parsed["adamw_run"]["seeds"] == "1" and parsed["adamw_run"]["accuracy_std"] == ""
    markdown = out.read_text()
    assert table in markdown and "results.png" in markdown
    adamw_line = next(line for line in table.splitlines() if line.startswith("| adamw_run"))
    cells = [c.strip() for c in adamw_line.strip("|").split("|")]
    assert cells[:13] == ["adamw_run", "L2-H128", "adamw", "fp32", "1", "7.2500", "7.4000", "n/a", "n/a",
                          "rotten_tomatoes", "0.6100", "0.6875", "0.7011"]
    assert cells[13:19] == ["n/a", "1", "n/a", "13s", "16.4k", "2.05k"]  # no control among these runs: no gain
    lamb_line = next(line for line in table.splitlines() if line.startswith("| lamb_run"))
    assert "| n/a |" in lamb_line  # no F1 for this run
    assert len(table.splitlines()) == 2 + 5

    width, height = _png_size(png)
    assert width >= 1000 and height >= 700
    assert png.stat().st_size > 30_000  # four panels with lines and bars, not an empty canvas


@pytest.mark.slow
def test_png_has_drawn_content(runs, tmp_path):
    """The plot is not blank: many distinct colours appear (lines of different runs, bars)."""
    import matplotlib.image as mpimg
    import numpy as np

    root, _ = runs
    png = tmp_path / "plot.png"
    report.build_report([root], plot=png)
    pixels = mpimg.imread(png)[..., :3]
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50
    assert (pixels < 0.99).any(axis=2).mean() > 0.02  # more than 2% of pixels are not white


def test_missing_and_empty_runs_are_rows_not_crashes(runs, tmp_path, capsys):
    root, _ = runs
    empty = tmp_path / "empty_run"
    empty.mkdir()
    bad_args = _write_run(tmp_path / "other", "bad_args", "adamw", "fp32", [9.0], end=True)
    (bad_args / "args.json").write_text("{not json")
    unfinished_reference = tmp_path / "reference"  # a fine-tune that never wrote its results
    (unfinished_reference / "finetune" / "rotten_tomatoes").mkdir(parents=True)
    (unfinished_reference / "args.json").write_text(json.dumps({"job_name": "ref", "precision": "fp32"}))
    rows = report.main.__wrapped__([str(root / "adamw_run"), str(tmp_path / "does_not_exist"), str(empty),
                                    str(bad_args), str(unfinished_reference),
                                    "--out", str(tmp_path / "t.md"), "--plot", str(tmp_path / "p.png")])
    statuses = {r["run"]: r["status"] for r in rows}
    assert statuses["does_not_exist"] == "missing: no such folder"
    assert statuses["empty_run"] == "missing: empty run folder"
    assert "unreadable args.json" in statuses["bad_args"]
    assert statuses["adamw_run"] == "complete (time_budget)"
    assert statuses["ref"] == "missing fine-tune"
    printed = capsys.readouterr().out
    assert "does_not_exist" in printed and "missing: no such folder" in printed
    assert (tmp_path / "p.png").stat().st_size > 0


def test_no_run_at_all_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(UserError, match="no run found"):
        report.build_report([tmp_path / "nope"])
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path / "nope")])
    assert exc.value.code == 2
    assert "error: no run found" in capsys.readouterr().err


def test_task_filter_and_parent_folder_discovery(runs, tmp_path):
    root, _ = runs
    extra = root / "adamw_run" / "finetune" / "mrpc"
    extra.mkdir()
    (extra / "all_results.json").write_text(json.dumps({"task_name": "mrpc", "eval_accuracy": 0.7, "eval_f1": 0.8}))
    cola = root / "lamb_run" / "finetune" / "cola"
    cola.mkdir()
    (cola / "all_results.json").write_text(json.dumps({"task_name": "cola", "eval_matthews_correlation": 0.3125,
                                                       "eval_runtime": 3.2, "eval_loss": 0.6}))
    rows, _ = report.build_report([root])  # a folder of runs stands for its runs
    adamw_rows = [r for r in rows if r["run"] == "adamw_run"]
    assert sorted(r["task"] for r in adamw_rows) == ["mrpc", "rotten_tomatoes"]
    (cola_row,) = [r for r in rows if r["task"] == "cola"]
    assert cola_row["other_metrics"] == "matthews_correlation 0.3125" and cola_row["accuracy"] is None
    assert by_task_other(rows, "rotten_tomatoes") == {None}
    rows, _ = report.build_report([root], task="mrpc")
    assert [r["accuracy"] for r in rows if r["run"] == "adamw_run"] == [0.7]
    assert all(r["accuracy"] is None for r in rows if r["run"] != "adamw_run")


def by_task_other(rows, task):
    return {r["other_metrics"] for r in rows if r["task"] == task}


def test_formatters():
    assert report.format_duration(75.3) == "1m15s"
    assert report.format_duration(4000) == "1h06m40s"
    assert report.format_duration(9) == "9s"
    assert report.format_count(1_234_567) == "1.23M"
    assert report.format_count(512) == "512"


def _seeded(accuracies, f1s=None) -> dict:
    """all_results.json of run_glue.py --seeds: built by its own summary of per-seed results."""
    from pretraining.finetune.runner import summarize_seeds

    f1s = f1s or accuracies
    return summarize_seeds({seed: {"task_name": "rotten_tomatoes", "eval_loss": 0.6, "eval_accuracy": acc,
                                   "eval_f1": f1, "epoch": 4.0}
                            for seed, acc, f1 in zip(range(1, len(accuracies) + 1), accuracies, f1s)})


def test_summarize_seeds_means_and_sample_std():
    summary = _seeded([0.70, 0.72, 0.74])
    assert summary["seeds"] == [1, 2, 3] and summary["task_name"] == "rotten_tomatoes"
    assert summary["eval_accuracy"] == pytest.approx(0.72)
    assert summary["eval_accuracy_std"] == pytest.approx(0.02)  # sample std (ddof=1), not population std
    assert summary["eval_accuracy_per_seed"] == [0.70, 0.72, 0.74]
    assert _seeded([0.7])["eval_accuracy_std"] == 0.0


def test_control_row_seed_statistics_and_gains(tmp_path):
    root = tmp_path / "runs"
    untrained = _write_run(root, "untrained", "adamw", "fp32", [], evals=[(0, 10.4)], end=False,
                           finetune=_seeded([0.69, 0.70, 0.71]))
    metrics = untrained / "metrics.jsonl"  # a --max_steps 0 run: its end line says step 0
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    lines[0].update(eval_unigram_loss=7.05, eval_mlm_accuracy=0.0)
    lines.append({"type": "end", "reason": "max_steps", "step": 0, "elapsed_s": 0.0, "tokens": 0, "final_loss": None})
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    adamw = _write_run(root, "adamw", "adamw", "fp32", [9.0, 6.0], evals=[(2, 5.5)],
                       finetune=_seeded([0.74, 0.75, 0.76], f1s=[0.78, 0.80, 0.82]))
    lines = [json.loads(line) for line in (adamw / "metrics.jsonl").read_text().splitlines()]
    next(line for line in lines if line["type"] == "eval").update(eval_unigram_loss=7.0, eval_mlm_accuracy=0.21)
    (adamw / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    _write_run(root, "adam", "adam", "fp32", [9.0, 7.0], finetune=_seeded([0.68, 0.71, 0.72]))
    _write_run(root, "one_seed", "lamb", "fp32", [9.0, 7.0],
               finetune={"eval_accuracy": 0.73, "eval_loss": 0.6, "epoch": 4.0})
    reference = tmp_path / "minilm"
    reference.mkdir()
    (reference / "all_results.json").write_text(json.dumps({**_seeded([0.80, 0.82, 0.84])}))
    csv_path = tmp_path / "results.csv"
    rows, table = report.build_report([root, reference], csv_path=csv_path)
    by_run = {r["run"]: r for r in rows}

    control = by_run["untrained"]
    assert control["optimizer"] == "none" and control["gain"] is None and control["seeds"] == 3
    assert control["accuracy"] == pytest.approx(0.70) and control["accuracy_std"] == pytest.approx(0.01)
    good = by_run["adamw"]
    assert good["gain"] == pytest.approx(5.0) and good["gain_spread"] == pytest.approx(100 * math.hypot(0.01, 0.01))
    assert good["significant"] is True and good["control"] == "untrained" and good["main_metric"] == "accuracy"
    assert good["eval_unigram_loss"] == 7.0 and good["eval_mlm_accuracy"] == 0.21
    noise = by_run["adam"]
    assert noise["gain"] == pytest.approx(0.333, abs=1e-3) and noise["significant"] is False
    assert by_run["one_seed"]["gain"] == pytest.approx(3.0) and by_run["one_seed"]["significant"] is None
    assert by_run["minilm"]["gain"] is None  # another architecture: the control does not apply

    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in table.splitlines()[2:]}
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    column = {name: header.index(name) for name in ("accuracy", "gain vs control (points)", "seeds",
                                                    "unigram baseline", "MLM accuracy", "optimizer")}
    assert cells["adamw"][column["accuracy"]] == "0.7500 ± 0.0100"
    assert cells["adamw"][column["gain vs control (points)"]] == "+5.0 ± 1.4"
    assert cells["adam"][column["gain vs control (points)"]] == "+0.3 ± 2.3 (n.s.)"
    assert cells["one_seed"][column["gain vs control (points)"]] == "+3.0 (1 seed)"
    assert cells["untrained"][column["optimizer"]] == "none" and cells["untrained"][column["seeds"]] == "3"
    assert cells["adamw"][column["unigram baseline"]] == "7.0000" and cells["adamw"][column["MLM accuracy"]] == "0.2100"

    parsed = {r["run"]: r for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    for name in ("accuracy_mean", "accuracy_std", "seeds", "f1_mean", "f1_std", "main_metric", "main_mean",
                 "main_std", "gain", "gain_spread", "significant"):
        assert name in parsed["adamw"], name
    assert float(parsed["adamw"]["f1_mean"]) == pytest.approx(0.80) and float(parsed["adamw"]["f1_std"]) == pytest.approx(0.02)
    assert parsed["adamw"]["seeds"] == "3" and parsed["adam"]["significant"] == "False"


def test_results_table():
    table = report.results_table({"mnli": {"eval_accuracy": 0.8, "eval_accuracy_mm": 0.81, "eval_loss": 0.5,
                                         "eval_runtime": 3.0, "train_runtime": 12.0}})
    assert table.splitlines()[2] == "| mnli | accuracy 0.8000, accuracy_mm 0.8100 | 0.5000 | 12.0 |"
