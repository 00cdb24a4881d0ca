"""The offline demo: its stage runner (reuse, redo, resume, failure) and a tiny end-to-end run."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pretraining.report import demo
from pretraining.report import stages
from pretraining.errors import UserError

pytestmark = pytest.mark.slow  # processes launched and killed: `make test-fast` skips these

ROOT = Path(__file__).resolve().parents[2]

# A stand-in script: appends its argv to calls.txt, writes OUT/done unless --fail or --partial.
FAKE_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    argv = sys.argv[1:]
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "calls.txt", "a") as fh:
        fh.write(json.dumps(argv) + "\\n")
    print("working on", out.name)
    if "--fail" in argv:
        sys.exit(3)
    if "--partial" not in argv:
        (out / "done").write_text("ok")
""")


def _stages(tmp_path: Path, a_argv=(), b_argv=()):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    out = tmp_path / "work"
    a_dir, b_dir = out / "a", out / "b"
    a = stages.Stage("a", str(script), ["--out", str(a_dir), *a_argv], a_dir,
                   is_complete=lambda: (a_dir / "done").is_file())
    b = stages.Stage("b", str(script), ["--out", str(b_dir), *b_argv], b_dir, depends=[a],
                   is_complete=lambda: (b_dir / "done").is_file(),
                   resume_argv=lambda: ["--resume"] if b_dir.exists() else [])
    return out, a, b


def _calls(out: Path) -> list[list[str]]:
    path = out / "calls.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(out: Path, *steps) -> tuple[stages.StageRunner, str]:
    stream = io.StringIO()
    runner = stages.StageRunner(out, total=len(steps), stream=stream)
    for stage in steps:
        runner.run(stage)
    return runner, stream.getvalue()


def test_stage_runner_reuses_redoes_and_resumes(tmp_path):
    out, a, b = _stages(tmp_path)
    runner, text = _run(out, a, b)
    assert [t.status for t in runner.timings] == ["ran", "ran"]
    assert "    working on a" in text and "stage 2/2 b: done" in text  # script output streamed, indented
    assert "working on b" in (out / "logs" / "b.log").read_text()
    assert len(_calls(out)) == 2

    runner, text = _run(out, a, b)  # nothing changed: nothing runs
    assert [t.status for t in runner.timings] == ["reused", "reused"]
    assert len(_calls(out)) == 2 and "reused" in text

    out, a, b = _stages(tmp_path, a_argv=["--seed", "7"])  # a's settings changed: a and b are redone
    (out / "a" / "stale").write_text("from the old settings")
    runner, text = _run(out, a, b)
    assert [t.status for t in runner.timings] == ["ran", "ran"]
    assert "settings changed" in text and not (out / "a" / "stale").exists()
    assert len(_calls(out)) == 4 and all("--resume" not in c for c in _calls(out))

    # b interrupted (output present, not complete) with unchanged settings: resumed, not restarted
    out, a, b = _stages(tmp_path, a_argv=["--seed", "7"], b_argv=["--partial"])
    _run(out, a, b)  # b's settings changed: starts afresh, ends partial
    (out / "b" / "done").unlink(missing_ok=True)
    runner, text = _run(out, a, b)
    assert _calls(out)[-1][-1] == "--resume" and "resuming" in text
    assert [t.status for t in runner.timings] == ["reused", "failed"]  # --partial never completes


def test_stage_failure_skips_dependents_and_names_the_log(tmp_path):
    out, a, b = _stages(tmp_path, a_argv=["--fail"])
    runner, text = _run(out, a, b)
    assert [t.status for t in runner.timings] == ["failed", "skipped"]
    assert "FAILED (exit code 3)" in text and str(out / "logs" / "a.log") in text
    assert set(runner.failed) == {"a", "b"}
    assert len(_calls(out)) == 1  # b never ran


def test_bad_arguments_are_reported_together(tmp_path, monkeypatch):
    with pytest.raises(UserError) as exc:
        demo.main.__wrapped__(["--output_dir", str(tmp_path), "--optimizers", "sgd", "adamw",
                               "--max_train_samples", "0", "--max_steps", "-1"])
    message = str(exc.value)
    assert "invalid arguments (3)" in message and "sgd" in message and "adafactor" in message
    assert "--max_train_samples must be > 0" in message and "--max_steps must be > 0" in message


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pretraining.report.demo", "--output_dir", str(out), "--optimizers", "adamw",
               "adafactor", "--max_steps", "4", "--grid_points", "2", "--max_documents", "200", "--num_train_shards", "2",
               "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
               "--intermediate_size", "64", "--train_batch_size", "8", "--print_steps", "2",
               "--max_train_samples", "32", "--max_eval_samples", "48", "--finetune_max_seq_length", "32",
               "--vocab_size", "300", "--seeds", "1", "2", "--finetune_lr_grid", "1e-3", "3e-3", *extra]
    env = {**os.environ, "PRECISION": "fp32", "WANDB_MODE": "disabled"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(600)
def test_demo_end_to_end_then_reuse(tmp_path):
    """`python -m pretraining.demo` (what `make demo` runs) with a tiny budget and corpus, then rerun."""
    out = tmp_path / "demo_output"
    result = _demo(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stdout = result.stdout
    for stage in ("prepare", "study", "finetune-minilm-reference"):
        assert f"{stage}: done in" in stdout
        assert (out / "logs" / f"{stage}.log").stat().st_size > 0
    assert "training ended (max_steps)" not in stdout  # the study's runs log to their own files
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"] == "tokenizer" and manifest["vocab_size"] <= 300  # the corpus's own vocabulary

    study = out / "study"
    settings = json.loads((study / "study.json").read_text())
    assert settings["optimizers"] == ["adamw", "adafactor"] and settings["max_steps"] == 4
    assert settings["seeds"] == [1, 2] and settings["finetune_task"] == "rotten_tomatoes"
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [r["optimizer"] for r in rows] == ["untrained (control)", "adamw", "adafactor"]
    for row in rows:
        assert row["precision"] == "fp32" and row["seeds"] == "2" and 0 <= float(row["finetune_score"]) <= 100
    for row in rows[1:]:  # each optimizer: its chosen LR's two seeds, fine-tuned at its arm's chosen LR
        job = f"{row['optimizer']}-fp32-lr{float(row['lr']):g}"
        scores = []
        for seed in (1, 2):
            results = json.loads((study / "runs" / f"{job}-s{seed}" / "finetune" / "rotten_tomatoes" /
                                  "all_results.json").read_text())
            assert f"{results['learning_rate']:g}" == row["finetune_lrs"]
            scores.append(100 * results["eval_accuracy"])
        assert float(row["finetune_score"]) == pytest.approx(sum(scores) / 2)
        assert float(row["gain_diff"]) == pytest.approx(float(row["finetune_score"]) - float(rows[0]["finetune_score"]))
        assert float(row["eval_loss"]) < float(rows[0]["eval_loss"])
    markdown = (out / "results.md").read_text()
    assert "| adamw | fp32 |" in markdown and "## Stage timings" in markdown and "MiniLM-L6-H384" in markdown
    assert "| adafactor | fp32 |" in stdout  # the table is printed
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000
    assert {p.name for p in out.iterdir()} <= {"data", "study", "reference", "logs", "stages", "results.md",
                                               "results.csv", "results.png"}

    metrics = study / "runs" / "adamw-fp32-lr0.00173-s1" / "metrics.jsonl"
    before = metrics.read_bytes()
    again = _demo(out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count(": reused (") == 3 and "running" not in again.stdout
    assert metrics.read_bytes() == before


SLEEPER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    Path(sys.argv[1]).write_text(str(os.getpid()))
    print("sleeping", flush=True)
    time.sleep(120)
""")

DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pretraining.report import stages
    script, pid_file, out = sys.argv[1:4]
    stage = stages.Stage("sleep", script, [pid_file], Path(out) / "sleep", is_complete=lambda: False)
    try:
        with stages.terminate_as_interrupt():
            stages.StageRunner(Path(out), total=1).run(stage)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
""")


def test_terminating_the_demo_stops_the_running_stage(tmp_path):
    """SIGTERM (or Ctrl-C) on the demo must not leave the stage's script running on its own."""
    import signal
    import time

    script, pid_file = tmp_path / "sleeper.py", tmp_path / "child.pid"
    script.write_text(SLEEPER)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(script), str(pid_file), str(tmp_path / "out")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_file.exists(), driver.communicate(timeout=5)[0]
    child = int(pid_file.read_text())
    driver.send_signal(signal.SIGTERM)
    output, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130 and "interrupted" in output
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the stage's process is gone (and was reaped by the runner)
