"""run_pretraining.py on the real DeepSpeed engine (CPU accelerator, gloo), in-process.

The session fixture ``deepspeed_ready`` pays DeepSpeed's one-time op build before these run.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from pretraining.train.run_args import EngineArguments
from pretraining.train.engine import DeepSpeedEngine, deepspeed_config
from pretraining.errors import UserError
from pretraining.train.training import PretrainingConfig, pretrain

pytestmark = pytest.mark.usefixtures("single_thread", "deepspeed_ready")

#: learning rates at which each optimizer visibly learns in a few steps (LAMB's trust ratio is clipped to 0.3)
LEARNING_RATES = {"adam": "2e-3", "adamw": "2e-3", "lamb": "2e-2", "adafactor": "2e-3"}


def train_losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["type"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("optimizer", sorted(LEARNING_RATES))
def test_every_optimizer_and_precision_learns_on_deepspeed(pretrain_flags, optimizer, precision):
    flags = pretrain_flags("--deepspeed", "--optimizer_type", optimizer, "--lr", LEARNING_RATES[optimizer],
                           "--max_steps", "8", *(["--bf16"] if precision == "bf16" else []))
    result = pretrain(PretrainingConfig.parse(flags))
    args = json.loads((result.run_dir / "args.json").read_text())
    assert (args["deepspeed"], args["optimizer_type"], args["precision"]) == (True, optimizer, precision)
    losses = train_losses(result.run_dir)
    assert len(losses) == 8 and result.end["reason"] == "max_steps"
    assert sum(losses[-2:]) / 2 < losses[0] - 0.05, losses
    expected_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert next(result.model.parameters()).dtype == expected_dtype
    from safetensors.torch import load_file

    exported = load_file(result.run_dir / "pretrained" / "model.safetensors")
    # the stock transformers layout of the default pre-LN model (XLMRobertaXL: no embedding LayerNorm)
    weight = exported["roberta.encoder.layer.0.attention.self.query.weight"]
    assert weight.dtype == torch.float32
    # bf16 training exports DeepSpeed's fp32 master weights, not their bf16 rounding
    assert not torch.equal(weight, weight.bfloat16().float()) or precision == "fp32"
    torch.testing.assert_close(weight.bfloat16(), result.model.bert.encoder.layer[0].attention.self.query.weight
                               .detach().to(weight.bfloat16().dtype), atol=0, rtol=0)


@pytest.mark.slow
def test_deepspeed_resume_with_zero_sharded_state_is_exact(pretrain_flags):
    zero = ("--deepspeed", "--zero_stage", "1")
    straight = pretrain(PretrainingConfig.parse(pretrain_flags(*zero, "--max_steps", "6", job="straight")))
    first = pretrain(PretrainingConfig.parse(pretrain_flags(*zero, "--max_steps", "3", job="split")))
    resumed = pretrain(PretrainingConfig.parse(pretrain_flags(
        *zero, "--max_steps", "6", "--load_training_checkpoint", str(first.run_dir / "checkpoints"), job="split")))
    assert train_losses(resumed.run_dir) == train_losses(straight.run_dir)
    engine_files = {p.name for p in (first.run_dir / "checkpoints" / "epoch0-step3" / "engine").rglob("*.pt")}
    assert any(name.startswith("zero_pp_rank_0") for name in engine_files)  # DeepSpeed's own ZeRO files


def test_deepspeed_config_comes_from_the_flags_and_a_file_overrides_it(tmp_path):
    args = EngineArguments(deepspeed=True, bf16=True, gradient_clipping=0.0, zero_stage=2)
    config = deepspeed_config(args, train_batch_size=64, micro_batch=8, grad_accum=4)
    assert config["bf16"] == {"enabled": True} and "fp16" not in config
    assert config["gradient_clipping"] == 0.0  # explicit: DeepSpeed's own default would clip at 1.0
    assert config["zero_optimization"] == {"stage": 2} and config["gradient_accumulation_steps"] == 4

    fp16 = deepspeed_config(EngineArguments(deepspeed=True, fp16=True), train_batch_size=8, micro_batch=8,
                            grad_accum=1)
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0  # dynamic loss scaling

    override = tmp_path / "ds.json"
    override.write_text(json.dumps({"zero_optimization": {"contiguous_gradients": True}, "gradient_clipping": 0.5}))
    args = EngineArguments(deepspeed=True, zero_stage=1, deepspeed_config=str(override))
    merged = deepspeed_config(args, train_batch_size=8, micro_batch=8, grad_accum=1)
    assert merged["zero_optimization"] == {"stage": 1, "contiguous_gradients": True}
    assert merged["gradient_clipping"] == 0.5

    override.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}, "optimizer": {"type": "Adam"}}))
    with pytest.raises(UserError, match=re.escape("may not set 'optimizer' (set it with --optimizer_type")):
        deepspeed_config(args, train_batch_size=8, micro_batch=8, grad_accum=1)


def test_a_deepspeed_config_file_is_used_by_the_engine(pretrain_flags, tmp_path):
    override = tmp_path / "ds.json"
    override.write_text(json.dumps({"gradient_clipping": 0.25}))
    config = PretrainingConfig.parse(pretrain_flags("--deepspeed", "--deepspeed_config", str(override),
                                                    "--max_steps", "1", "--no_finetune_checkpoint_at_end"))
    from pretraining.train.run_setup import build_run
    from pretraining.train.training import Pretraining

    run = Pretraining(build_run(config))
    assert isinstance(run.engine, DeepSpeedEngine)
    assert run.engine.ds.gradient_clipping() == 0.25 and run.engine.grad_accum == 2
    run.run()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 and FusedLamb run on a GPU")
@pytest.mark.parametrize("extra, message", [
    (["--fp16"], "--fp16 needs a CUDA GPU"),
    (["--optimizer_type", "lamb", "--fused_optimizer", "true"], "FusedLamb, which needs a CUDA GPU"),
])
def test_gpu_only_features_are_refused_on_the_cpu(pretrain_flags, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        pretrain(PretrainingConfig.parse(pretrain_flags("--deepspeed", *extra)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("optimizer, extra", [("adamw", []), ("lamb", ["--fused_optimizer", "true"])])
def test_cuda_fp16_with_dynamic_loss_scaling_learns(pretrain_flags, optimizer, extra):
    """fp16 on DeepSpeed (its dynamic loss scaler), with torch's fused AdamW and with DeepSpeed's FusedLamb."""
    flags = pretrain_flags("--deepspeed", "--fp16", "--optimizer_type", optimizer, "--lr", LEARNING_RATES[optimizer],
                           "--max_steps", "12", *extra)
    result = pretrain(PretrainingConfig.parse(flags))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert result.end["reason"] == "max_steps" and len(train) == 12
    assert train[-1]["loss_scale"] > 0 and train[-1]["skipped_steps"] < 6, train[-1]
    applied = [r["loss"] for r in train if r["loss"] == r["loss"]]  # NaN marks a skipped (overflowed) update
    assert sum(applied[-2:]) / 2 < applied[0] - 0.05, applied
    assert next(result.model.parameters()).dtype == torch.float16
