"""shell/<optimizer>.sh: each wrapper really launches run_pretraining.py with its optimizer (tiny, CPU, fp32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes launched and killed: `make test-fast` skips these

ROOT = Path(__file__).resolve().parents[1]
WRAPPERS = {"adam": "adam.sh", "adamw": "adamw.sh", "lamb": "lamb.sh", "adafactor": "adafactor.sh"}


def wrapper_env(tiny_shards, out, **extra) -> dict:
    from pretraining.engine import free_port

    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NUM_GPUS": "1",
            "PRECISION": "fp32", "DATA": str(tiny_shards), "OUT": str(out), "MASTER_PORT": str(free_port()),
            **extra}


# adamw goes through the real deepspeed launcher; the others run the same command line in one process
@pytest.mark.parametrize("optimizer, launcher", [("adamw", "deepspeed"), ("adam", "python"), ("lamb", "python"),
                                                 ("adafactor", "python")])
def test_each_wrapper_trains_with_its_optimizer(optimizer, launcher, tiny_shards, tmp_path, tiny_model_flags,
                                                deepspeed_ready):
    tiny = [f for f in tiny_model_flags if f not in ("--lr", "2e-3", "--lr_schedule", "constant_step")]
    done = subprocess.run(["bash", str(ROOT / "shell" / WRAPPERS[optimizer]), *tiny, "--max_steps", "2"],
                          env=wrapper_env(tiny_shards, tmp_path, LAUNCHER=launcher), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    run_dir = tmp_path / f"{optimizer}-fp32"
    args = json.loads((run_dir / "args.json").read_text())
    assert args["optimizer_type"] == optimizer and args["precision"] == "fp32" and args["deepspeed"]
    assert args["lr_schedule"] == "time" and args["total_training_time"] == 24.0 and args["hidden_size"] == 32
    end = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["type"] == "end" and end["reason"] == "max_steps" and end["step"] == 2
    assert (run_dir / "pretrained" / "model.safetensors").is_file()


def test_wrapper_environment_is_checked(tiny_shards, tmp_path):
    done = subprocess.run(["bash", str(ROOT / "shell" / "lamb.sh")], capture_output=True, text=True, timeout=60,
                          env=wrapper_env(tiny_shards, tmp_path, PRECISION="fp8"))
    assert done.returncode == 2 and "PRECISION=fp8 is not one of: fp16, bf16, fp32" in done.stderr
    done = subprocess.run(["bash", str(ROOT / "shell" / "lamb.sh")], capture_output=True, text=True, timeout=60,
                          env=wrapper_env(tiny_shards, tmp_path, LAUNCHER="mpirun"))
    assert done.returncode == 2 and "LAUNCHER=mpirun is not one of: deepspeed, torchrun, python" in done.stderr
