"""A run's rules (issue #26): a run that did not finish its job exits non-zero, Ctrl-C and SIGTERM stop pretraining at
the next step with a checkpoint and a resume line, a rerun never overwrites an earlier run, a resume that changes what
the run computes is recorded with its step, and decimal labels make a regression task (said in a notice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretraining.errors import UserError
from pretraining.train.training import PretrainingConfig, pretrain

ROOT = Path(__file__).resolve().parents[2]


def test_a_nonfinite_stop_exits_1_and_reports_failed(pretrain_flags, single_thread, monkeypatch, capsys, tmp_path):
    from run_pretraining import main
    from tests.train.test_faults import inject

    inject(monkeypatch, from_call=3, into="loss", value=float("nan"))
    with pytest.raises(SystemExit) as stopped:
        main(pretrain_flags("--max_steps", "5"))
    assert stopped.value.code == 1
    assert "error: the training loss became nan at step 2" in capsys.readouterr().out
    from pretraining.report.table import _status
    from pretraining.report.runs import load_run

    assert _status(load_run(tmp_path / "runs" / "tiny"), has_finetune=True) == "failed (nonfinite_loss)"


@pytest.mark.slow
def test_a_rerun_never_overwrites_an_earlier_run_unless_asked(pretrain_flags, single_thread):
    first = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "2", "--no_finetune_checkpoint_at_end",
                                                            "--num_epochs_between_checkpoints", "0")))
    log = (first.run_dir / "metrics.jsonl").read_bytes()
    import shutil

    shutil.rmtree(first.run_dir / "checkpoints")  # an earlier run without a checkpoint: logs only
    with pytest.raises(UserError, match=r"holds an earlier run \(metrics.jsonl, args.json\).*it has no checkpoint"):
        pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "3")))
    assert (first.run_dir / "metrics.jsonl").read_bytes() == log
    again = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "3", "--overwrite_output_dir")))
    assert again.end["step"] == 3 and (again.run_dir / "metrics.jsonl").read_bytes() != log


def _start(flags: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "run_pretraining.py"), *flags], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_steps(run_dir: Path, steps: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and sum('"type": "train"' in line for line in metrics.read_text().splitlines()) >= steps:
            return
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.05)
    pytest.fail(f"no {steps} steps within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_saves_a_checkpoint_at_the_next_step_and_says_how_to_resume(signum, code, pretrain_flags,
                                                                                  tmp_path):
    flags = pretrain_flags("--max_steps", "100000", "--num_epochs_between_checkpoints", "0", "--print_steps", "1")
    run_dir = tmp_path / "runs" / "tiny"
    process = _start(flags, tmp_path)
    _wait_for_steps(run_dir, 3, process)
    process.send_signal(signum)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == code, out[-3000:]
    assert "Traceback" not in out
    name = signal.Signals(signum).name
    assert f"{name} received: stopping after the current optimizer step and saving a checkpoint" in out
    end = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["type"] == "end" and end["reason"] == "interrupted" and end["signal"] == name
    step = end["step"]
    assert f"error: interrupted ({name}) at step {step}: checkpoint {run_dir / 'checkpoints'}" in out
    assert f"resume with the same command plus --load_training_checkpoint {run_dir}" in out
    assert (run_dir / "checkpoints" / "latest").is_file() and not (run_dir / "pretrained").exists()

    resumed = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", str(step + 2), "--load_training_checkpoint",
                                                              str(run_dir))))
    assert resumed.end["reason"] == "max_steps" and resumed.end["step"] == step + 2


@pytest.mark.slow
def test_prepare_interrupted_says_its_shards_are_atomic(tmp_path):
    from tests.conftest import TINY_SHARD_FLAGS

    flags = [f if f != "300" else "3000" for f in TINY_SHARD_FLAGS]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "prepare_dataset.py"), "--output_dir", str(tmp_path / "d"),
                                *flags], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "d").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the preparation finished before the interrupt")
    assert process.returncode == 130, out[-3000:]
    assert "interrupted (SIGINT): every shard with its final name is complete" in out and "Traceback" not in out


@pytest.mark.slow
def test_a_resume_with_other_settings_records_them_with_the_step(pretrain_flags, single_thread, capsys):
    first = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "2", "--lr", "2e-3", "--seed", "42")))
    capsys.readouterr()
    resumed = pretrain(PretrainingConfig.parse(pretrain_flags(
        "--max_steps", "4", "--lr", "1e-3", "--seed", "7", "--load_training_checkpoint", str(first.run_dir))))
    out = capsys.readouterr().out
    assert "notice: resumed at step 2 with other settings than the run so far" in out and "lr 0.002 -> 0.001" in out
    args = json.loads((resumed.run_dir / "args.json").read_text())
    assert args["lr"] == 1e-3 and args["history"] == [{"step": 2, "changed": {"lr": [2e-3, 1e-3], "seed": [42, 7]}}]
    card = (resumed.run_dir / "pretrained" / "README.md").read_text()
    assert "| settings changed at resume | step 2: lr 0.002 -> 0.001, seed 42 -> 7 |" in card
    # a later resume with the same settings adds nothing, and keeps the history
    again = pretrain(PretrainingConfig.parse(pretrain_flags(
        "--max_steps", "5", "--lr", "1e-3", "--seed", "7", "--load_training_checkpoint", str(first.run_dir))))
    assert json.loads((again.run_dir / "args.json").read_text())["history"] == args["history"]


def test_decimal_labels_make_a_regression_task_with_a_notice(tmp_path, caplog):
    from pretraining.finetune.glue.readers import load_local_files

    train = tmp_path / "train.csv"
    train.write_text("sentence,label\na,1.5\nb,0\nc,2.25\n")
    with caplog.at_level("WARNING"):
        data = load_local_files({"train": str(train), "validation": None, "test": None})
    assert data.task.is_regression
    assert "the labels in column 'label' are decimal numbers (e.g. 1.5): the task is treated as regression" in caplog.text
