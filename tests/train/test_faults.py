"""Fault injection with real processes and real files: SIGKILL, full disks, dead ranks.

Each fault is armed from outside the project (``tests/fault_injection.py`` wraps a
function of the real code path in a subprocess) or applied to a running process
(SIGKILL, SIGSTOP). The guarantees: a rerun after a kill completes with the output of
an uninterrupted run; nothing partial ever carries a final name; a failed write is one
clear error with the earlier outputs intact; a run never hangs on a dead rank.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretraining.atomic import sha256_file
from pretraining.data.shards import read_manifest
from tests.conftest import ROOT, TINY_SHARD_FLAGS

pytestmark = pytest.mark.slow  # processes launched and killed: `make test-fast` skips these

PYTHON_ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_with_fault(fault: dict | None, script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``script`` (a file in the repository root) in a subprocess, ``fault`` armed (see tests/fault_injection.py)."""
    command = [sys.executable, script, *args] if fault is None else \
        [sys.executable, "-m", "tests.fault_injection", json.dumps(fault), script, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **PYTHON_ENV})


def descendants(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_when(script: str, args: list[str], condition, timeout: float = 180) -> list[int]:
    """Start ``script``; once ``condition()`` holds wait a random 0-0.2 s, then SIGKILL it from outside.

    Returns the pids of its child processes at the moment of the kill. Fails if it ended first.
    """
    delay = random.uniform(0, 0.2)
    print(f"{script}: SIGKILL {delay:.3f} s after the condition holds")  # shown when the test fails
    process = subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env={**os.environ, **PYTHON_ENV},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not condition() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        children = descendants(process.pid)
        assert process.poll() is None, "the run ended before the kill"
        process.kill()
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return children


# --- prepare_dataset.py --------------------------------------------------------------------------------------


def _assert_nothing_partial(out: Path, reference: dict) -> None:
    """Every file under a final name is whole: shards equal the uninterrupted run's, a manifest is the finished one."""
    for path in out.glob("*.hdf5"):
        assert sha256_file(path) == reference[path.name], f"{path.name} is not the complete shard"
    if (out / "manifest.json").exists():
        assert read_manifest(out)["sha256"] == reference


@pytest.mark.timeout(300)
def test_prepare_killed_at_several_moments_resumes_to_identical_files(tiny_shards, tmp_path):
    reference = read_manifest(tiny_shards)["sha256"]
    out = tmp_path / "out"
    flags = ["--output_dir", str(out), *TINY_SHARD_FLAGS]
    moments = [  # (fault, what must be on disk right after the kill)
        ({"target": "numpy:savez", "nth": 2, "action": "kill"},  # chunk 1: tokens written, index not yet
         lambda: (out / ".work" / "chunk_000001.tokens").is_file() and not (out / ".work" / "chunk_000001.npz").exists()),
        ({"target": "os:replace", "match": "train_shard_00002.hdf5", "action": "kill"},  # shard complete, not renamed
         lambda: list(out.glob(".train_shard_00002.hdf5.*.tmp")) and not (out / "train_shard_00002.hdf5").exists()),
        ({"target": "shutil:rmtree", "match": ".work", "nth": 1, "action": "kill"},  # manifest written, .work not removed
         lambda: (out / "manifest.json").is_file() and (out / ".work").is_dir()),
    ]
    for fault, state in moments:
        done = run_with_fault(fault, "prepare_dataset.py", *flags)
        assert done.returncode == -signal.SIGKILL, (fault, done.stderr[-2000:])
        assert state(), fault
        _assert_nothing_partial(out, reference)

    # a finished run whose scratch folder survived: the rerun only cleans up
    done = run_with_fault(None, "prepare_dataset.py", *flags)
    assert done.returncode == 0 and "nothing to do" in done.stderr, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted([*reference, "manifest.json", "token_counts.json"])
    assert {p.name: sha256_file(p) for p in out.glob("*.hdf5")} == reference
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing written outside --output_dir


@pytest.mark.timeout(300)
def test_prepare_killed_at_a_random_moment_leaves_no_workers_and_resumes(tiny_shards, tmp_path):
    from prepare_dataset import main

    reference = read_manifest(tiny_shards)["sha256"]
    out = tmp_path / "out"
    flags = ["--output_dir", str(out), *TINY_SHARD_FLAGS, "--num_workers", "2"]
    # killed somewhere in tokenizing or writing shards
    workers = kill_when("prepare_dataset.py", flags, lambda: any((out / ".work").glob("chunk_*.npz")))
    assert workers
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers), "worker processes outlived their killed parent"
    _assert_nothing_partial(out, reference)

    assert main(flags)["sha256"] == reference
    assert sorted(p.name for p in out.iterdir()) == sorted([*reference, "manifest.json", "token_counts.json"])


class FullDisk:
    """``open`` for :mod:`pretraining.atomic` whose files matching ``match`` get ``room`` bytes, then ENOSPC."""

    def __init__(self, match: str, room: int):
        self.match, self.room = match, room

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)
        return _FillingFile(handle, self.room) if self.match in str(file) else handle


class _FillingFile:
    def __init__(self, handle, room: int):
        self._handle, self._room = handle, room

    def write(self, data):
        if len(data) > self._room:
            self._handle.write(data[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def test_disk_full_while_writing_a_shard_is_one_clear_error_and_a_rerun_completes(tiny_shards, tmp_path, monkeypatch,
                                                                                    capsys):
    import pretraining.atomic
    from prepare_dataset import main

    reference = read_manifest(tiny_shards)["sha256"]
    out = tmp_path / "out"
    flags = ["--output_dir", str(out), *TINY_SHARD_FLAGS]
    monkeypatch.setattr(pretraining.atomic, "open", FullDisk("train_shard_00002", room=1000), raising=False)
    with pytest.raises(SystemExit) as info:
        main(flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    message = err[err.index("error: "):]
    assert message.count("error: ") == 1 and "Traceback" not in err
    assert message.startswith(f"error: could not write {out / 'train_shard_00002.hdf5'}: No space left on device")
    assert "run again" in message
    assert sorted(p.name for p in out.glob("*.hdf5")) == ["train_shard_00000.hdf5", "train_shard_00001.hdf5"]
    assert not list(out.glob(".*tmp")) and not (out / "manifest.json").exists()
    assert (out / ".work" / "tokenized.json").is_file()  # the tokenized corpus is kept for the rerun
    _assert_nothing_partial(out, reference)

    monkeypatch.undo()  # space freed: the rerun resumes (the tokenized chunks were kept) and completes
    assert main(flags)["sha256"] == reference
    assert sorted(p.name for p in out.iterdir()) == sorted([*reference, "manifest.json", "token_counts.json"])


# --- run_pretraining.py --------------------------------------------------------------------------------------


def _steps_logged(run_dir: Path) -> list[int]:
    """Steps of the train lines in metrics.jsonl so far (a line being written is skipped)."""
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        steps += [record["step"]] if record["type"] == "train" else []
    return steps


def _train_records(run_dir: Path) -> list[tuple]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["epoch"], r["loss"], r["tokens"]) for r in lines if r["type"] == "train"]


def _latest(run_dir: Path) -> Path:
    root = run_dir / "checkpoints"
    return root / (root / "latest").read_text().strip()


@pytest.mark.timeout(400)
def test_pretraining_killed_at_several_moments_resumes_with_identical_losses(pretrain_flags, single_thread, capsys):
    from pretraining.train.training import PretrainingConfig, pretrain

    schedule = ("--max_steps", "10", "--max_steps_per_epoch", "4", "--num_epochs_between_checkpoints", "1")
    straight = pretrain(PretrainingConfig.parse(pretrain_flags(*schedule, job="straight")))
    flags = pretrain_flags(*schedule, job="killed")
    run_dir = straight.run_dir.parent / "killed"
    resume = ["--load_training_checkpoint", str(run_dir)]

    # 1: SIGKILL inside the second checkpoint's write (engine state written, RNG state not yet)
    done = run_with_fault({"target": "torch:save", "match": "rng_rank0", "nth": 2, "action": "kill"},
                          "run_pretraining.py", *flags)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (run_dir / "checkpoints" / ".tmp-epoch2-step4" / "engine" / "engine.pt").is_file()
    assert _latest(run_dir).name == "epoch1-step2" and not (run_dir / "checkpoints" / "epoch2-step4").exists()

    # 2: resumed, then SIGKILL between a checkpoint's rename and the update of `latest`
    done = run_with_fault({"target": "os:replace", "match": "latest", "action": "kill"}, "run_pretraining.py",
                          *flags, *resume)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert "resumed from" in done.stdout and _latest(run_dir).name == "epoch1-step2"
    assert (run_dir / "checkpoints" / "epoch2-step4" / "checksums.json").is_file()

    # 3: resumed (from what `latest` names), then SIGKILL from outside at a random moment after step 5
    kill_when("run_pretraining.py", flags + resume, lambda: any(step >= 5 for step in _steps_logged(run_dir)))

    # 4: the latest checkpoint is then damaged on disk: the resume detects it and falls back to the one before
    latest = _latest(run_dir)
    engine_file = latest / "engine" / "engine.pt"
    data = bytearray(engine_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine_file.write_bytes(bytes(data))
    capsys.readouterr()
    resumed = pretrain(PretrainingConfig.parse(flags + resume))
    out = capsys.readouterr().out
    assert f"notice: checkpoint {latest} is corrupt (engine/engine.pt" in out
    assert "resuming from the checkpoint before it instead" in out

    assert _train_records(run_dir) == _train_records(straight.run_dir) and len(_train_records(run_dir)) == 10
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(pretrain_flags):
    from pretraining.checkpoints.checkpoint import verify_checkpoint

    flags = pretrain_flags("--max_steps", "4", "--max_steps_per_epoch", "4", "--num_epochs_between_checkpoints", "1")
    run_dir = Path(flags[flags.index("--output_dir") + 1]) / "tiny"
    # from the second checkpoint on, no file may grow past 1 MB (the engine state is ~12 MB): torch's writer fails
    done = run_with_fault({"target": "pretraining.train.training:save_checkpoint", "nth": 2, "action": "fsize:1000000"},
                          "run_pretraining.py", *flags)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.count("error: ") == 1
    root = run_dir / "checkpoints"
    assert done.stderr.startswith(f"error: could not write {root / 'epoch1-step4'}: the write failed")
    assert sorted(p.name for p in root.iterdir()) == ["epoch1-step2", "latest"]  # no partial folder left
    assert (root / "latest").read_text() == "epoch1-step2"
    verify_checkpoint(root / "epoch1-step2")
    assert not (run_dir / "pretrained").exists()


# --- NaN / inf --------------------------------------------------------------------------------------------------


def inject(monkeypatch, *, from_call: int, into: str, value: float) -> None:
    """From the ``from_call``-th forward on, make the loss (``into="loss"``) or its gradients (``"grad"``) ``value``."""
    from pretraining.model.modeling import BertForPreTraining

    forward, calls = BertForPreTraining.forward, []

    def faulty(self, **batch):
        out = forward(self, **batch)
        calls.append(1)
        if len(calls) >= from_call and torch.is_grad_enabled():
            if into == "loss":
                out.loss = out.loss * value
            else:  # the loss stays finite, every gradient does not
                out.loss.register_hook(lambda grad: grad * value)
        return out

    monkeypatch.setattr(BertForPreTraining, "forward", faulty)


def _weights_finite(folder: Path) -> bool:
    deepspeed_files = list((folder / "engine").rglob("*model_states.pt"))
    if deepspeed_files:
        from pretraining.train.engine import _deepspeed_safe_globals

        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            state = torch.load(deepspeed_files[0], weights_only=True)["module"]
    else:
        state = torch.load(folder / "engine" / "engine.pt", weights_only=True)["model"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("engine, precision, into, value", [
    ("torch", "bf16", "loss", float("nan")), ("torch", "bf16", "grad", float("inf")),
    ("torch", "fp32", "grad", float("nan")), ("deepspeed", "fp32", "grad", float("nan")),
])
def test_nonfinite_loss_or_gradients_stop_and_keep_the_last_good_checkpoint(engine, precision, into, value, request,
                                                                            pretrain_flags, single_thread, monkeypatch,
                                                                            capsys):
    from pretraining.train.training import PretrainingConfig, pretrain

    if engine == "deepspeed":
        request.getfixturevalue("deepspeed_ready")
    # step 6 (micro-batches 11 and 12) is the last of epoch 2: applied, it would be checkpointed; --keep_checkpoints 1
    # would then have pruned the only good checkpoint
    inject(monkeypatch, from_call=11, into=into, value=value)
    flags = pretrain_flags("--max_steps_per_epoch", "6", "--num_epochs_between_checkpoints", "1",
                           "--keep_checkpoints", "1", *(["--bf16"] if precision == "bf16" else []),
                           *(["--deepspeed"] if engine == "deepspeed" else []))
    result = pretrain(PretrainingConfig.parse(flags))
    assert result.end["reason"] == "nonfinite_loss" and result.end["step"] == 5
    out = capsys.readouterr().out
    what = "the training loss became nan" if into == "loss" else "the gradients became non-finite (NaN/inf)"
    assert f"error: {what} at step 6" in out and "stopped before applying that update and saved nothing" in out
    assert "--load_checkpoint_id epoch1-step3" in out
    checkpoints = result.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch1-step3", "latest"]
    assert _weights_finite(checkpoints / "epoch1-step3")
    if engine == "torch":  # the torch engine never applies the update (DeepSpeed has, in memory only)
        assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert not (result.run_dir / "pretrained").exists()


@pytest.mark.parametrize("engine", ["torch", "deepspeed-zero0", "deepspeed-zero1"])
def test_fp16_overflows_are_skipped_counted_and_stop_after_scale_cnt_limit(engine, fp16_on_cpu, pretrain_flags,
                                                                           single_thread, monkeypatch, capsys):
    """Gradients that overflow at every scale from step 4 on: every update is skipped and counted, the scale backs
    off to DeepSpeed's minimum of 1 (where ZeRO 1's loss scaler used to raise a bare Exception), and the run stops
    at --scale_cnt_limit with one error naming the step and the last good checkpoint."""
    from pretraining.train.training import PretrainingConfig, pretrain
    from tests.train.test_loss_scaling import ENGINES

    inject(monkeypatch, from_call=7, into="grad", value=float("inf"))  # step 4 on (2 micro-batches a step)
    result = pretrain(PretrainingConfig.parse(pretrain_flags(
        "--fp16", *ENGINES[engine], "--initial_scale_power", "2", "--scale_cnt_limit", "6", "--max_steps", "30",
        "--max_steps_per_epoch", "2", "--num_epochs_between_checkpoints", "3")))  # checkpoints at steps 3 and 6
    assert result.end["reason"] == "nonfinite_loss" and result.end["step"] == 9
    assert result.end["skipped_steps"] == 6
    out = capsys.readouterr().out
    assert "error: the fp16 loss scaler skipped 6 updates in a row (--scale_cnt_limit; 6 in total, loss scale now " \
        in out and "at step 9" in out and "skipped those updates and saved nothing" in out
    # skipped updates change no weight: the step-6 checkpoint holds step 3's weights, the newest good one
    assert "--load_checkpoint_id epoch6-step6" in out and "Traceback" not in out
    train = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["type"] == "train"]
    assert [(r["step"], r["skipped_steps"]) for r in train] == [(s, max(0, s - 3)) for s in range(1, 10)]
    scales = [r["loss_scale"] for r in train[3:]]
    assert all(b in (a, a / 2) for a, b in zip(scales, scales[1:])), scales  # backs off (DeepSpeed: hysteresis 2)
    if engine == "torch":
        assert scales == [2.0, 1.0, 0.5, 0.25, 0.125, 0.0625]  # GradScaler has no minimum
    else:
        assert scales[-1] == 1.0 and scales.count(1.0) >= 2  # overflowed again at the minimum: skipped, no raise
    assert "| 6 updates skipped (fp16 overflow)" in out
    assert _weights_finite(result.run_dir / "checkpoints" / "epoch6-step6")
    assert not (result.run_dir / "pretrained").exists()


# --- two processes, one rank lost -------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_when_one_rank_dies_or_hangs_the_other_stops_with_a_clear_error(fault, tiny_shards, tmp_path):
    """Two ranks started as a multi-node launcher would (no torchrun agent to clean up): rank 1 is killed, or
    frozen, mid-training; rank 0 must exit with one clear error, within --ddp_timeout for a frozen peer."""
    from pretraining.train.engine import free_port
    from tests.conftest import TINY_PRETRAIN_FLAGS

    timeout_s = 10
    flags = ["--dataset_path", str(tiny_shards), "--output_dir", str(tmp_path / "runs"), "--job_name", "ddp",
             *TINY_PRETRAIN_FLAGS, "--train_micro_batch_size_per_gpu", "4", "--max_steps", "1000",
             "--data_loader_type", "dist", "--ddp_timeout", str(timeout_s)]
    metrics = tmp_path / "runs" / "ddp" / "metrics.jsonl"
    port, ranks = str(free_port()), []
    logs = [open(tmp_path / f"rank{rank}.out", "w") for rank in range(2)]
    try:
        for rank in range(2):
            env = {**os.environ, **PYTHON_ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            ranks.append(subprocess.Popen([sys.executable, "run_pretraining.py", *flags], cwd=ROOT, env=env,
                                          stdout=logs[rank], stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 180
        while not (metrics.is_file() and '"step": 2,' in metrics.read_text()) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in ranks), "a rank ended before the fault"
            time.sleep(0.01)
        ranks[1].send_signal(getattr(signal, fault))
        lost = time.monotonic()
        _, err = ranks[0].communicate(timeout=timeout_s + 60)
        waited = time.monotonic() - lost
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.communicate()
        for log in logs:
            log.close()
    assert ranks[0].returncode == 2, err[-3000:]
    assert "Traceback" not in err and err.count("error: ") == 1, err[-3000:]
    cause = r"[^)]*Connection (closed|reset) by peer" if fault == "SIGKILL" else "Timed out"
    assert re.search(rf"error: rank 0 of 2 lost contact with another rank \({cause}", err), err
    assert f"--load_training_checkpoint {tmp_path / 'runs' / 'ddp'}" in err
    if fault == "SIGSTOP":
        assert timeout_s - 1 <= waited <= timeout_s + 45
