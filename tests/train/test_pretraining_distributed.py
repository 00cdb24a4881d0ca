"""Two real processes (torchrun, gloo on the CPU): equal steps on unequal shards, identical weights.

academic-budget-bert's loader hangs when ranks get shards of different sizes (one rank
finishes its epoch and waits in an all-reduce forever). Here two ranks train on shards of
40, 72 and 100 samples; both must run the same number of steps and end with the same
parameters. Run as a script under torchrun, this file is the worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # processes launched and killed: `make test-fast` skips these

ROOT = Path(__file__).resolve().parents[2]
SHARD_SIZES = (40, 72, 100)
TIMEOUT_S = 300


def unequal_shards(source: Path, folder: Path) -> Path:
    """Shards of SHARD_SIZES rows cut from the tiny real shards (same tokenizer manifest, one test shard)."""
    from pretraining.data.shards import list_shards, read_shard, write_shard

    folder.mkdir()
    rows = [read_shard(p) for p in list_shards(source, "train")]
    pool = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    start = 0
    for index, size in enumerate(SHARD_SIZES):
        write_shard(folder / f"train_shard_{index:05d}.hdf5", {k: v[start:start + size] for k, v in pool.items()})
        start += size
    for name in ("manifest.json", "test_shard_00000.hdf5"):
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


def run_torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """torchrun with 2 processes; killed as a whole (process group) if it outlives TIMEOUT_S."""
    from pretraining.train.engine import free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"2-process run did not finish in {TIMEOUT_S} s (a rank waiting for another?):\n{out[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out)


@pytest.mark.parametrize("engine", ["deepspeed", "torch"])
def test_two_ranks_run_equal_steps_on_unequal_shards_and_stay_identical(engine, tiny_shards, tmp_path,
                                                                         deepspeed_ready):
    from pretraining.data.loader import ShardSequence

    data = unequal_shards(tiny_shards, tmp_path / "shards")
    flags = ["--dataset_path", str(data), "--output_dir", str(tmp_path / "runs"), "--job_name", "ddp",
             "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
             "--intermediate_size", "64", "--max_position_embeddings", "64", "--train_batch_size", "16",
             "--train_micro_batch_size_per_gpu", "4", "--lr", "2e-3", "--lr_schedule", "constant_step",
             "--num_warmup_steps", "0", "--print_steps", "1", "--num_epochs", "3", "--data_loader_type",
             "per_device", "--do_validation", "--validation_epochs_begin", "1", "--no_wandb",
             *(["--deepspeed"] if engine == "deepspeed" else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = run_torchrun([str(Path(__file__)), str(tmp_path / "ranks"), *flags], env)
    assert done.returncode == 0, done.stdout[-3000:]

    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    # per_device: in epoch e rank r reads sequence position 2e + r; the steps are set by the smaller shard
    order = ShardSequence(len(SHARD_SIZES), 2, seed=42)
    expected = sum(min(SHARD_SIZES[order[2 * e + r]] for r in range(2)) // 8 for e in range(3))
    assert [r["step"] for r in ranks] == [expected, expected]
    assert ranks[0]["reason"] == ranks[1]["reason"] == "num_epochs"
    assert ranks[0]["digest"] == ranks[1]["digest"]
    metrics = [json.loads(line) for line in (tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["type"] == "train"]
    assert [m["step"] for m in train] == list(range(1, expected + 1))
    assert train[0]["samples"] == 16  # both ranks' samples are counted
    assert len([m for m in metrics if m["type"] == "eval"]) == 3


def worker(out_dir: str, flags: list[str]) -> None:
    """Under torchrun: pretrain, then record this rank's step count and a digest of its parameters."""
    import torch

    from pretraining.train.training import PretrainingConfig, pretrain

    torch.set_num_threads(1)
    result = pretrain(PretrainingConfig.parse(flags))
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    rank = int(os.environ["RANK"])
    Path(out_dir).mkdir(exist_ok=True)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({**result.end, "digest": digest.hexdigest()}))


if __name__ == "__main__":
    for key, value in {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    worker(sys.argv[1], sys.argv[2:])
