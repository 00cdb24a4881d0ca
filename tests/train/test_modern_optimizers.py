"""The modern optimizers (lion, stableadamw, sfadamw, muon) in real pretraining runs on both engines.

Their update rules are checked against references in tests/train/test_optimizers.py; here: they learn on the torch engine and
on DeepSpeed (CPU accelerator), resume exactly, the schedule-free one exports its averaged weights, and the
configurations that cannot work are refused before anything starts.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from pretraining.errors import UserError
from pretraining.train.training import PretrainingConfig, pretrain

pytestmark = pytest.mark.usefixtures("single_thread")

#: an LR at which each visibly learns in 8 steps of the tiny model (Lion's sign update: ~10x below AdamW's)
LEARNING_RATES = {"lion": "3e-4", "stableadamw": "2e-3", "sfadamw": "2e-3", "muon": "2e-3"}
QUERY = "roberta.encoder.layer.0.attention.self.query.weight"


def train_losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["type"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
@pytest.mark.parametrize("optimizer", sorted(LEARNING_RATES))
def test_each_modern_optimizer_learns_and_exports(pretrain_flags, optimizer, engine, request):
    if engine == "deepspeed":
        request.getfixturevalue("deepspeed_ready")
    flags = pretrain_flags(*(["--deepspeed"] if engine == "deepspeed" else []), "--optimizer_type", optimizer,
                           "--lr", LEARNING_RATES[optimizer], "--max_steps", "8",
                           *(["--lr_schedule", "constant_step", "--curve", "constant"] if optimizer == "sfadamw" else []))
    result = pretrain(PretrainingConfig.parse(flags))
    losses = train_losses(result.run_dir)
    assert len(losses) == 8 and result.end["reason"] == "max_steps"
    assert sum(losses[-2:]) / 2 < losses[0] - 0.05, losses
    exported = load_file(result.run_dir / "pretrained" / "model.safetensors")[QUERY]
    trained = result.model.bert.encoder.layer[0].attention.self.query.weight.detach()
    if optimizer == "sfadamw":  # the export is the average x, the module trains at the interpolation y
        assert (exported - trained).abs().max() > 1e-4
    else:
        torch.testing.assert_close(exported, trained, atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sfadamw", "muon", "lion"])
def test_a_resumed_run_continues_exactly(pretrain_flags, optimizer):
    common = ("--optimizer_type", optimizer, "--lr", LEARNING_RATES[optimizer], "--do_validation")
    straight = pretrain(PretrainingConfig.parse(pretrain_flags(*common, "--max_steps", "6", job="straight")))
    first = pretrain(PretrainingConfig.parse(pretrain_flags(*common, "--max_steps", "3", job="split")))
    resumed = pretrain(PretrainingConfig.parse(pretrain_flags(
        *common, "--max_steps", "6", "--load_training_checkpoint", str(first.run_dir), job="split")))
    assert train_losses(resumed.run_dir) == train_losses(straight.run_dir)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    a = load_file(straight.run_dir / "pretrained" / "model.safetensors")
    b = load_file(resumed.run_dir / "pretrained" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    (["--optimizer_type", "muon", "--zero_stage", "1"], "Muon orthogonalises each hidden matrix"),
    (["--optimizer_type", "stableadamw", "--zero_stage", "2"], "divides each tensor's step"),
    (["--optimizer_type", "sfadamw", "--zero_stage", "1"], "schedule-free AdamW evaluates and exports"),
    (["--optimizer_type", "sfadamw", "--bf16"], "cannot run on DeepSpeed at bf16, ZeRO stage 0"),
])
def test_deepspeed_settings_that_break_an_optimizer_are_refused(pretrain_flags, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        pretrain(PretrainingConfig.parse(pretrain_flags("--deepspeed", *extra, "--max_steps", "1")))
