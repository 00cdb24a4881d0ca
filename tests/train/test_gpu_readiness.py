"""What would break on the first GPU node or multi-node run (issue #21), proven on the CPU.

Each test names its row of the review: the accelerator choice (1), ZeRO with per-tensor optimizers (5), a JSON
argument file under the deepspeed launcher (6), the RNG state of one's own GPU (8), the GPU count a node has (9),
bf16 gradient accumulation on DeepSpeed (10). fp16 on both engines (7) is tests/train/test_loss_scaling.py and the fp16
test of tests/train/test_faults.py; the launch wrappers (4, 9) are tests/test_shell.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretraining.errors import UserError
from pretraining.train.training import PretrainingConfig, pretrain

ROOT = Path(__file__).resolve().parents[2]


# --- 1: DeepSpeed's accelerator follows the hardware ---------------------------------------------------------


@pytest.mark.slow
def test_the_tests_pick_deepspeeds_cuda_accelerator_on_a_gpu_machine(tmp_path):
    """conftest must not force DeepSpeed's CPU accelerator where torch sees a GPU (FusedLamb, fp16 and the model's
    placement would break): a process whose torch reports CUDA gets DS_ACCELERATOR=cuda, one without gets cpu."""
    (tmp_path / "sitecustomize.py").write_text("import torch\ntorch.cuda.is_available = lambda: True\n")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    probe = "import os, tests.conftest; print(os.environ['DS_ACCELERATOR'])"
    for path, expected in ((f"{tmp_path}{os.pathsep}{ROOT}", "cuda"), (str(ROOT), "cpu")):
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**env, "PYTHONPATH": path},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.split()[-1] == expected, done.stderr[-2000:]


# --- 5: ZeRO > 0 with an optimizer whose rule is per tensor --------------------------------------------------


@pytest.mark.parametrize("optimizer", ["lamb", "adafactor"])
def test_zero_sharding_with_a_per_tensor_optimizer_is_one_clear_error(optimizer, pretrain_flags, tmp_path):
    with pytest.raises(UserError, match=re.escape(f"--optimizer_type {optimizer} cannot run under ZeRO stage 1")) \
            as refused:
        pretrain(PretrainingConfig.parse(pretrain_flags("--deepspeed", "--zero_stage", "1", "--optimizer_type",
                                                        optimizer, "--max_steps", "1")))
    assert "slices that cut across layers" in str(refused.value) and "--zero_stage 0" in str(refused.value)
    # the stage from a --deepspeed_config file is checked too
    override = tmp_path / "ds.json"
    override.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(UserError, match=re.escape(f"cannot run under ZeRO stage 2")) as refused:
        pretrain(PretrainingConfig.parse(pretrain_flags("--deepspeed", "--deepspeed_config", str(override),
                                                        "--optimizer_type", optimizer, "--max_steps", "1")))
    assert f"--deepspeed_config {override}" in str(refused.value)


# --- 6: a JSON argument file under the deepspeed launcher -----------------------------------------------------


def test_a_json_argument_file_is_read_after_the_launchers_local_rank(tmp_path):
    from pretraining.train.run_args import PretrainingArguments  # noqa: F401  (the group that owns --local_rank)

    args = tmp_path / "args.json"
    args.write_text(json.dumps({"dataset_path": "data", "output_dir": "runs", "lr": 3e-4, "deepspeed": True}))
    config = PretrainingConfig.parse(["--local_rank=3", str(args)])
    assert (config.run.local_rank, config.optimizer.lr, config.backend.deepspeed) == (3, 3e-4, True)
    flags = PretrainingConfig.parse(["--local_rank=1", "--dataset_path", "d", "--output_dir", "o"])
    assert (flags.run.local_rank, flags.data.dataset_path) == (1, "d")


@pytest.mark.slow
def test_the_deepspeed_launcher_runs_a_json_argument_file(pretrain_flags, tmp_path, deepspeed_ready):
    """The real launcher: `deepspeed run_pretraining.py args.json` (it runs run_pretraining.py --local_rank=0 ...)."""
    from pretraining.train.engine import free_port

    flags = pretrain_flags("--deepspeed", "--max_steps", "2")
    data = {}
    for flag, value in zip(flags, flags[1:] + [""]):
        if flag.startswith("--"):
            data[flag[2:]] = True if value.startswith("--") or value == "" else value
    data = {k: (True if v is True else json.loads(v) if re.fullmatch(r"-?[\d.e-]+", v) else v) for k, v in data.items()}
    args = tmp_path / "args.json"
    args.write_text(json.dumps(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "1", "--master_port",
                           str(free_port()), str(ROOT / "run_pretraining.py"), str(args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    end = json.loads((tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["type"] == "end" and end["reason"] == "max_steps" and end["step"] == 2


# --- 8: each rank saves and restores its own GPU's random state -----------------------------------------------


class FakeCuda:
    """torch.cuda's RNG calls as a process with one visible GPU sees them (this machine has none)."""

    def __init__(self, device: int = 0):
        self.device, self.states, self.calls = device, {device: torch.arange(4, dtype=torch.uint8)}, []

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.device)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.device].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": self.calls.append(state))

        def every_gpu(*args):
            raise AssertionError("every visible GPU's RNG touched: fails when a resume sees fewer GPUs")

        monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)


def test_a_rank_saves_and_restores_only_its_own_gpus_random_state(monkeypatch):
    from pretraining.checkpoints.checkpoint import rng_state, set_rng_state

    cuda = FakeCuda()
    cuda.install(monkeypatch)
    state = rng_state()
    assert torch.equal(state["cuda"], cuda.states[0])
    set_rng_state(state)
    assert len(cuda.calls) == 1 and torch.equal(cuda.calls[0], cuda.states[0])
    # a checkpoint of the old layout (every GPU of an 8-GPU process) restores this device's entry only
    old = {**state, "cuda": [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]}
    set_rng_state(old)
    assert torch.equal(cuda.calls[-1], torch.full((4,), 0, dtype=torch.uint8))


# --- 9: a node's GPU count honours CUDA_VISIBLE_DEVICES ----------------------------------------------------------


def test_more_ranks_than_visible_gpus_is_a_clear_error():
    from pretraining.train.engine import pick_device

    assert pick_device(1, True, 2, "4,5") == torch.device("cuda", 1)
    assert pick_device(3, False, 0, None) == torch.device("cpu")
    with pytest.raises(UserError, match=re.escape("local rank 2 has no GPU: CUDA_VISIBLE_DEVICES='4,5' leaves 2 "
                                                  "visible GPU(s); start at most 2 process(es) per node")):
        pick_device(2, True, 2, "4,5")


# --- 10: bf16 gradient accumulation on DeepSpeed ---------------------------------------------------------------


@pytest.mark.slow
def test_bf16_on_deepspeed_accumulates_in_fp32_at_zero1_and_says_where_it_cannot(pretrain_flags, single_thread,
                                                                                  deepspeed_ready, capsys):
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    from pretraining.train.run_setup import build_run
    from pretraining.train.training import Pretraining

    run = Pretraining(build_run(PretrainingConfig.parse(pretrain_flags(
        "--deepspeed", "--bf16", "--zero_stage", "1", "--max_steps", "6", "--lr", "5e-3"))))
    assert isinstance(run.engine.ds.optimizer, BF16_Optimizer)  # fp32 master weights and fp32 accumulation
    assert run.engine.ds.get_data_types() == (torch.bfloat16, torch.float32)
    result = run.run()
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "train"]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < losses[0] - 0.05, losses
    assert "sums the gradients" not in capsys.readouterr().out

    pretrain(PretrainingConfig.parse(pretrain_flags("--deepspeed", "--bf16", "--max_steps", "1", job="zero0")))
    out = capsys.readouterr().out
    assert "--deepspeed --bf16 at --zero_stage 0: DeepSpeed sums the gradients of the 2 micro-batches of a step " \
           "in bf16" in out and "use --zero_stage 1" in out
