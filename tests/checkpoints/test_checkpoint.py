"""Atomic checkpoints: save/load round trip, crash mid-save, corruption, pruning, resolving ids."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pretraining.checkpoints.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from pretraining.train.engine import DistInfo, TorchEngine
from pretraining.errors import UserError

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 4)

    def forward(self, x, labels):
        return type("Out", (), {"loss": torch.nn.functional.mse_loss(self.layer(x), labels)})()


def engine(seed: int = 0) -> TorchEngine:
    torch.manual_seed(seed)
    net = Net()
    return TorchEngine(net, torch.optim.AdamW(net.parameters(), lr=0.1), dist_info=SINGLE, precision="fp32",
                       grad_accum=1, micro_batch=2, gradient_clipping=1.0)


def train(eng: TorchEngine, steps: int) -> None:
    for _ in range(steps):
        loss = eng.forward({"x": torch.randn(2, 8), "labels": torch.randn(2, 4)})
        eng.backward(loss)
        assert eng.step() is True


def save(root, ckpt_id, eng, step, keep=3):
    return save_checkpoint(root, ckpt_id, engine=eng, state={"step": step, "compatibility": {"hidden_size": 8}},
                           dist_info=SINGLE, keep=keep)


def test_round_trip_restores_model_optimizer_and_random_state(tmp_path):
    trained = engine()
    train(trained, 3)
    folder = save(tmp_path, "step3", trained, 3)
    assert (tmp_path / "latest").read_text() == "step3"
    sums = json.loads((folder / "checksums.json").read_text())
    assert set(sums) == {"engine/engine.pt", "rng_rank0.pt", "state.json"}
    draws = (random.random(), np.random.rand())
    train(trained, 2)  # the batches come from torch's RNG: the same after a restore

    restored = engine(seed=1)  # other weights, other RNG positions
    random.random(), np.random.rand(), torch.rand(5)
    state = load_checkpoint(folder, engine=restored, dist_info=SINGLE, expect={"hidden_size": 8})
    assert state["step"] == 3
    assert (random.random(), np.random.rand()) == draws
    train(restored, 2)
    for a, b in zip(restored.module.parameters(), trained.module.parameters()):
        assert torch.equal(a, b)
    assert restored.optimizer.state_dict()["state"][0]["step"] == 5


class CrashingEngine(TorchEngine):
    """Dies half-way through writing its state (fault injection)."""

    def save(self, folder, is_main):
        folder.mkdir(parents=True)
        (folder / "engine.pt").write_bytes(b"partial")
        raise KeyboardInterrupt("killed mid-save")


def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path):
    good = engine()
    save(tmp_path, "step1", good, 1)
    crashing = engine()
    crashing.__class__ = CrashingEngine
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, "step2", crashing, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step1"]
    assert resolve_checkpoint(tmp_path) == tmp_path / "step1"
    assert (tmp_path / ".tmp-step2").is_dir()  # the partial write never got a final name
    save(tmp_path, "step2", good, 2)  # the next save cleans it up
    assert not (tmp_path / ".tmp-step2").exists() and resolve_checkpoint(tmp_path, "latest").name == "step2"


def test_a_corrupt_checkpoint_is_refused_with_the_alternatives(tmp_path):
    eng = engine()
    save(tmp_path, "step1", eng, 1)
    folder = save(tmp_path, "step2", eng, 2)
    data = bytearray((folder / "engine" / "engine.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "engine" / "engine.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"step2 is corrupt \(engine/engine.pt .*\(available: step1\)"):
        load_checkpoint(folder, engine=engine(), dist_info=SINGLE)
    (folder / "checksums.json").unlink()
    with pytest.raises(UserError, match="incomplete"):
        load_checkpoint(folder, engine=engine(), dist_info=SINGLE)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    eng = engine()
    for step in (1, 2, 3, 10):
        save(tmp_path, f"epoch{step}-step{step}", eng, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch3-step3", "epoch10-step10"]
    save(tmp_path, "epoch10-step10", eng, 10, keep=2)  # rewriting an id replaces it in place
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch3-step3", "epoch10-step10"]


def test_resolving_checkpoint_paths_and_ids(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    eng = engine()
    save(root, "a", eng, 1)
    save(root, "b", eng, 2)
    assert resolve_checkpoint(tmp_path / "run") == root / "b"
    assert resolve_checkpoint(root, "a") == root / "a"
    assert resolve_checkpoint(root / "a") == root / "a"
    with pytest.raises(UserError, match=r"checkpoint 'c' not found .*\(available: a, b\)"):
        resolve_checkpoint(tmp_path / "run", "c")
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    folder = save(tmp_path, "a", engine(), 1)
    with pytest.raises(UserError, match="hidden_size: checkpoint 8, this run 16"):
        load_checkpoint(folder, engine=engine(), dist_info=SINGLE, expect={"hidden_size": 16})
