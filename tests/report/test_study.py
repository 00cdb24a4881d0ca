"""pretraining.report.study: the optimizer study over real run_pretraining.py runs on the tiny shards.

Bad settings are refused before any run; the sweep picks the lowest held-out loss and marks a diverged LR; the
best LR reruns with every seed beside the untrained control; a rerun reuses everything; a killed study resumes to
the same table; a run that fails for another reason is reported with its log's last line while the others go on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretraining.report import study as study_module
from pretraining.errors import UserError
from tests.conftest import TINY_PRETRAIN_FLAGS

ROOT = Path(__file__).resolve().parents[2]
#: the tiny model; the study owns --lr and the schedule's budget
MODEL = [f for f in TINY_PRETRAIN_FLAGS]
for _flag in ("--lr",):
    _i = MODEL.index(_flag)
    del MODEL[_i:_i + 2]


def study_argv(out, shards, *extra, pretrain=()):
    return ["--output_dir", str(out), "--dataset_path", str(shards), *extra, "--", *MODEL, *pretrain]


def run_study(*argv):
    return study_module.main([str(a) for a in argv])


@pytest.mark.parametrize("extra, pretrain, message", [
    (["--optimizers", "adamw", "sgdx", "--max_steps", "2"], [], "--optimizers 'sgdx' is not one of"),
    (["--optimizers", "adamw", "--precisions", "fp8", "--max_steps", "2"], [], "--precisions 'fp8' is not one of"),
    (["--optimizers", "adamw", "--lr_grid", "adamw=", "--max_steps", "2"], [], "the LR grid of adamw must list"),
    (["--optimizers", "adamw", "--lr_grid", "adamw=0,1e-3", "--max_steps", "2"], [], "must list values > 0"),
    (["--optimizers", "adamw", "--lr_grid", "adamw=fast", "--max_steps", "2"], [], "write OPTIMIZER=LR,LR"),
    (["--optimizers", "adamw"], [], "give the budget of every run"),
    (["--optimizers", "adamw", "--max_steps", "2", "--budget_minutes", "1"], [], "give the budget of every run"),
    (["--optimizers", "adamw", "--max_steps", "2"], ["--seed", "3"], "the study sets --seed itself"),
    (["--optimizers", "adamw", "--max_steps", "2"], ["--lr_schedule", "wavy"], "are not valid run_pretraining.py flags"),
])
def test_bad_settings_are_one_error_before_any_run(tiny_shards, tmp_path, extra, pretrain, message):
    out = tmp_path / "study"
    with pytest.raises((UserError, SystemExit)) as info:
        study_module.main.__wrapped__(study_argv(out, tiny_shards, *extra, pretrain=pretrain))
    assert message in str(info.value)
    assert not out.exists()


def test_another_studys_folder_and_a_running_study_are_refused(tiny_shards, tmp_path):
    out, plan = tmp_path / "study", tmp_path / "plan.txt"
    base = ["--optimizers", "adamw", "lion", "--grid_points", "2", "--max_steps", "2", "--seeds", "1", "2"]
    run_study(*study_argv(out, tiny_shards, *base, "--plan", plan))
    lines = plan.read_text().splitlines()
    assert len(lines) == 4 and all("run_pretraining.py" in line and "--max_steps 2" in line for line in lines)
    assert all(f"--job_name {o}-fp32-lr" in " ".join(lines) for o in ("adamw", "lion"))
    settings = (out / "study.json").read_text()
    with pytest.raises(UserError, match=r"holds a study with other settings \(seeds: \[1, 2\] -> \[1, 2, 3\]\)"):
        study_module.main.__wrapped__(study_argv(out, tiny_shards, *base[:-2], "1", "2", "3", "--plan", str(plan)))
    assert (out / "study.json").read_text() == settings and plan.read_text().splitlines() == lines
    with study_module.StudyLock(out):
        with pytest.raises(UserError, match="another study is running on"):
            study_module.main.__wrapped__(study_argv(out, tiny_shards, *base, "--plan", str(plan)))


def table_rows(out: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out / "study.csv").read_text())))


@pytest.mark.slow
def test_a_study_sweeps_reruns_the_best_with_every_seed_and_reuses_finished_runs(tiny_shards, tmp_path):
    out = tmp_path / "study"
    argv = study_argv(out, tiny_shards, "--optimizers", "adamw", "--lr_grid", "adamw=1e-3,3e-3,1e30",
                      "--max_steps", "4", "--seeds", "1", "2", "--extend", "1")
    rows = run_study(*argv)
    control, adamw = rows
    grid = adamw["grid"]
    assert grid["1e+30"] == "diverged" and adamw["diverged"] == 1  # a row, never a crash
    finite = {lr: v for lr, v in grid.items() if isinstance(v, float)}
    assert adamw["lr"] == float(min(finite, key=finite.get)) and adamw["seeds"] == 2
    # the best inside the grid (3e-3: 1e30 is its upper neighbour) needs no extension; on the lower edge, one more
    assert (adamw["lr"] == 3e-3 and len(finite) == 2) or (len(finite) == 3 and min(map(float, finite)) < 1e-3)
    for seed in (1, 2):
        assert (out / "runs" / f"adamw-fp32-lr{adamw['lr']:g}-s{seed}" / "pretrained" / "config.json").is_file()
    assert control["optimizer"] == "untrained (control)" and control["seeds"] == 2
    assert control["eval_loss"] > adamw["eval_loss"]
    assert adamw["opt_step_ms"] > 0 and adamw["state_mb"] > 0 and adamw["tokens_per_s"] > 0
    table = (out / "study.md").read_text()
    assert "| adamw | fp32 |" in table and "diverged" in table and (out / "study.png").stat().st_size > 10_000
    logs = {p.name: p.stat().st_size for p in (out / "logs").iterdir()}
    (out / "study.md").unlink()
    run_study(*argv)  # everything reused: no run starts, the same table
    assert {p.name: p.stat().st_size for p in (out / "logs").iterdir()} == logs
    assert (out / "study.md").read_text() == table


@pytest.mark.slow
def test_a_killed_study_resumes_to_the_same_table_and_a_failed_run_is_reported(tiny_shards, tmp_path):
    base = ["--optimizers", "adamw", "--lr_grid", "adamw=1e-3,3e-3", "--max_steps", "6", "--seeds", "1", "2",
            "--extend", "0", "--control", "false"]
    straight = tmp_path / "straight"
    run_study(*study_argv(straight, tiny_shards, *base))

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "pretraining.report.study", *study_argv(killed, tiny_shards, *base)],
                               cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((killed / "runs").glob("*/metrics.jsonl")):
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)  # the study and its running pretraining process, mid-run
    process.wait()
    assert not (killed / "study.md").exists()
    run_study(*study_argv(killed, tiny_shards, *base))
    keys = ("optimizer", "lr", "seeds", "eval_loss", "eval_loss_std", "mlm_accuracy", "steps", "tokens")
    assert [{k: r[k] for k in keys} for r in table_rows(killed)] == \
        [{k: r[k] for k in keys} for r in table_rows(straight)]

    failing = tmp_path / "failing"  # a run whose folder cannot be written: reported, and the others go on
    run_study(*study_argv(failing, tiny_shards, *base, "--plan", tmp_path / "plan.txt"))
    (failing / "runs").mkdir()
    (failing / "runs" / "adamw-fp32-lr0.003-s1").write_text("in the way")
    with pytest.raises(UserError, match=r"1 run\(s\) failed \(adamw-fp32-lr0.003-s1: .*is a file"):
        study_module.main.__wrapped__(study_argv(failing, tiny_shards, *base))
    assert (failing / "runs" / "adamw-fp32-lr0.001-s2" / "pretrained").is_dir()
    assert "## Failed runs" in (failing / "study.md").read_text()
