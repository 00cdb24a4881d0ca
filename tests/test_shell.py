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
    from pretraining.train.engine import free_port

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


# --- the launch command each setting composes (DRY_RUN=1 prints it) ---------------------------------------------


def launch_prefix(tmp_path, **env) -> list[str]:
    """The wrapper's command up to the script, as DRY_RUN=1 prints it (shell-quoted, parsed back)."""
    import shlex

    clean = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NUM_GPUS", "HOSTFILE")}
    done = subprocess.run(["bash", str(ROOT / "shell" / "adamw.sh"), "--max_steps", "3"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, env={**clean, "DRY_RUN": "1", **env})
    assert done.returncode == 0, done.stderr
    command = shlex.split(done.stdout)
    script = command.index(str(ROOT / "run_pretraining.py"))
    assert command[-2:] == ["--max_steps", "3"] and "--optimizer_type" in command  # the flags follow the script
    return command[:script]


def test_dry_run_composes_each_launch(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    assert launch_prefix(tmp_path, NUM_GPUS="4") == ["deepspeed", "--master_port", "29500", "--num_gpus", "4"]
    # multi-node DeepSpeed: the hostfile is a launcher option, never the script (it was with ${HOSTFILE:-...})
    assert launch_prefix(tmp_path, HOSTFILE=str(hosts), MASTER_PORT="29511") == \
        ["deepspeed", "--master_port", "29511", "--hostfile", str(hosts)]
    # CUDA_VISIBLE_DEVICES: deepspeed would ignore it beside --num_gpus; --include names the devices
    assert launch_prefix(tmp_path, CUDA_VISIBLE_DEVICES="2,5,7") == \
        ["deepspeed", "--master_port", "29500", "--include", "localhost:2,5,7"]
    assert launch_prefix(tmp_path, CUDA_VISIBLE_DEVICES="2,5,7", NUM_GPUS="2")[-1] == "localhost:2,5"
    assert launch_prefix(tmp_path, LAUNCHER="torchrun", CUDA_VISIBLE_DEVICES="3,4") == \
        ["torchrun", "--nproc_per_node", "2", "--nnodes", "1", "--node_rank", "0", "--master_addr", "127.0.0.1",
         "--master_port", "29500"]
    assert launch_prefix(tmp_path, LAUNCHER="torchrun", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1",
                         NUM_GPUS="8") == \
        ["torchrun", "--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
         "--master_port", "29500"]
    assert launch_prefix(tmp_path, LAUNCHER="python", PYTHON="python3.12") == ["python3.12"]


def test_launch_settings_that_cannot_work_are_refused(tmp_path):
    def refused(**env):
        done = subprocess.run(["bash", str(ROOT / "shell" / "lamb.sh")], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env={**os.environ, "DRY_RUN": "1", **env})
        assert done.returncode == 2 and done.stdout == "", done
        return done.stderr

    assert "NUM_GPUS=3 but this node has 2 GPU(s) (CUDA_VISIBLE_DEVICES=0,1)" in \
        refused(CUDA_VISIBLE_DEVICES="0,1", NUM_GPUS="3")
    assert "HOSTFILE=nowhere.txt does not exist" in refused(HOSTFILE="nowhere.txt")


def test_two_nodes_on_one_machine_through_the_wrapper_end_identical(tiny_shards, tmp_path, tiny_model_flags):
    """LAUNCHER=torchrun with NNODES=2: node 0 and node 1 started as two separate commands, as on two machines,
    rendezvous on 127.0.0.1 (gloo, one process each); both end with the same step count and parameters."""
    import shlex
    import signal

    from pretraining.train.engine import free_port

    worker = ROOT / "tests" / "train" / "test_pretraining_distributed.py"  # run_pretraining.py + each rank's digest
    tiny = [f for f in tiny_model_flags if f not in ("--lr", "2e-3", "--lr_schedule", "constant_step")]
    port, nodes = str(free_port()), []
    for rank in ("0", "1"):
        env = wrapper_env(tiny_shards, tmp_path / "runs", LAUNCHER="torchrun", ENGINE="torch", NNODES="2",
                          NODE_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NUM_GPUS="1")
        done = subprocess.run(["bash", str(ROOT / "shell" / "adamw.sh"), *tiny, "--max_steps", "3"],
                              env={**env, "DRY_RUN": "1"}, capture_output=True, text=True, timeout=60)
        command = shlex.split(done.stdout)
        script = command.index(str(ROOT / "run_pretraining.py"))
        command[script:script + 1] = [str(worker), str(tmp_path / "ranks")]
        nodes.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 3 and ranks[0]["digest"] == ranks[1]["digest"]
    run = json.loads((tmp_path / "runs" / "adamw-fp32" / "args.json").read_text())
    assert run["hidden_size"] == 32 and not run["deepspeed"]
