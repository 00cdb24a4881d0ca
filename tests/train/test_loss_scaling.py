"""fp16 dynamic loss scaling on the CPU, both engines: torch's autocast + GradScaler and DeepSpeed's loss scaler
at ZeRO 0 (FP16_Optimizer) and ZeRO 1 (DeepSpeedZeroOptimizer's DynamicLossScaler).

Only the capability checks are switched on (the run's "fp16 needs a GPU" rule and DeepSpeed's CPU accelerator's
oneDNN probe): the kernels are torch's CPU fp16 kernels, the scalers and the loop are the real ones. Overflows are
real too: a loss scale of 2**40 makes the fp16 gradients overflow until the scaler has backed off.
"""

from __future__ import annotations

import json

import pytest
import torch

from pretraining.train.training import PretrainingConfig, pretrain
from tests.train.test_faults import inject

ENGINES = {"torch": [], "deepspeed-zero0": ["--deepspeed"], "deepspeed-zero1": ["--deepspeed", "--zero_stage", "1"]}


def records(run_dir, kind="train"):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["type"] == kind]


def scale_trace(run_dir) -> list[tuple[float, int, float]]:
    """(loss, skipped updates so far, loss scale after the step) per step (--print_steps 1)."""
    return [(r["loss"], r["skipped_steps"], r["loss_scale"]) for r in records(run_dir)]


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_scale_halves_on_overflow_grows_after_the_window_and_resumes_exactly(engine, fp16_on_cpu, pretrain_flags,
                                                                             single_thread):
    """Start at 2**21 (the fp16 gradients overflow), window 3: backs off to a scale that fits, learns, grows again
    after 3 clean updates; a run resumed from its step-12 checkpoint continues with the same scale and losses."""
    window = 3
    flags = ["--fp16", *ENGINES[engine], "--initial_scale_power", "21", "--loss_scale_window", str(window),
             "--max_steps_per_epoch", "6", "--num_epochs_between_checkpoints", "1"]
    straight = pretrain(PretrainingConfig.parse(pretrain_flags(*flags, "--max_steps", "18", job="straight")))
    trace = scale_trace(straight.run_dir)
    assert straight.end["reason"] == "max_steps" and len(trace) == 18
    scales = [2.0 ** 21] + [scale for _, _, scale in trace]
    halvings = growths = clean_run = 0
    for step, (loss, skipped, scale) in enumerate(trace):
        before, was_skipped = scales[step], skipped > (trace[step - 1][1] if step else 0)
        if was_skipped:  # an overflow: the update is not applied, the scale halves (DeepSpeed: or spends hysteresis)
            assert scale in (before / 2, before) and (engine != "torch" or scale == before / 2)
            halvings += scale == before / 2
            clean_run = 0
        else:
            clean_run += 1
            assert scale in (before, before * 2), trace
            if scale == before * 2:  # growth only after a window of clean updates
                assert clean_run >= window, trace
                growths += 1
    assert halvings >= 1 and growths >= 1 and trace[0][1] >= 1, trace
    applied = [loss for step, (loss, skipped, _) in enumerate(trace) if skipped == (trace[step - 1][1] if step else 0)]
    assert sum(applied[-3:]) / 3 < applied[0] - 0.05, applied  # it learns: the scale is really applied
    assert straight.end["skipped_steps"] == trace[-1][1] and straight.end["loss_scale"] == trace[-1][2]

    pretrain(PretrainingConfig.parse(pretrain_flags(*flags, "--max_steps", "12", job="split")))
    resumed = pretrain(PretrainingConfig.parse(pretrain_flags(
        *flags, "--max_steps", "18", "--load_training_checkpoint", str(straight.run_dir.parent / "split"),
        job="split")))
    again = scale_trace(resumed.run_dir)[12:]
    assert [(skipped, scale) for _, skipped, scale in again] == [(skipped, scale) for _, skipped, scale in trace[12:]]
    # the losses of the applied updates (a step the scaler skipped logs the interval before it, if any)
    assert [loss for step, (loss, skipped, _) in enumerate(again, 12) if skipped == trace[step - 1][1]] == \
        [loss for step, (loss, skipped, _) in enumerate(trace[12:], 12) if skipped == trace[step - 1][1]]
