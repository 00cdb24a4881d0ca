"""pretraining.train.schedules: warmup, decay and the checkpointable scheduler."""

from __future__ import annotations

import io

import pytest
import torch

from pretraining.train.args import SchedulerArguments
from pretraining.cli import ArgumentChecker
from pretraining.train.schedules import (
    build_scheduler,
    constant_step_multiplier,
    lr_multiplier,
    step_multiplier,
    time_multiplier,
)

HOURS = 2.0
TOTAL_S = HOURS * 3600


def sched(**overrides) -> SchedulerArguments:
    values = dict(lr_schedule="time", curve="linear", warmup_proportion=0.1, total_training_time=HOURS)
    values.update(overrides)
    return SchedulerArguments(**values)


@pytest.mark.parametrize("curve", ["linear", "exp"])
def test_time_warmup_ends_exactly_at_the_proportion(curve):
    args = sched(curve=curve)
    end = 0.1 * TOTAL_S
    assert time_multiplier(0.0, args) == 0.0
    assert 0.99 < time_multiplier(end * 0.999, args) < 1.0
    assert time_multiplier(end, args) == 1.0
    assert time_multiplier(end / 2, args) == pytest.approx(0.5 if curve == "linear" else 0.25)


def test_step_warmup_ends_exactly_at_the_proportion_or_num_warmup_steps():
    assert step_multiplier(99, 1000, sched(lr_schedule="step")) < 1.0
    assert step_multiplier(100, 1000, sched(lr_schedule="step")) == 1.0
    no_proportion = sched(lr_schedule="step", warmup_proportion=0.0, num_warmup_steps=40)
    assert step_multiplier(20, 1000, no_proportion) == 0.5
    assert step_multiplier(40, 1000, no_proportion) == 1.0


def test_linear_reaches_zero_at_the_total_and_is_monotone():
    args = sched()
    times = torch.linspace(0, TOTAL_S * 1.2, 2401).tolist()
    values = [time_multiplier(t, args) for t in times]
    peak = values.index(1.0)
    assert all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :]))
    assert time_multiplier(TOTAL_S, args) == 0.0
    assert time_multiplier(TOTAL_S * 1.1, args) == 0.0
    assert time_multiplier(0.55 * TOTAL_S, args) == pytest.approx(0.5)
    assert step_multiplier(1000, 1000, sched(lr_schedule="step")) == 0.0


def test_short_budgets_reach_the_peak():
    """academic-budget-bert divided by max(1 hour, T - W): a 30-minute budget never reached the peak LR."""
    args = sched(total_training_time=0.5, warmup_proportion=0.1)
    assert time_multiplier(0.1 * 1800, args) == 1.0
    assert time_multiplier(0.55 * 1800, args) == pytest.approx(0.5)


def test_exp_decays_by_decay_rate_per_decay_step():
    step_args = sched(lr_schedule="step", curve="exp", decay_rate=0.9, decay_step=50)
    for k in range(5):
        assert step_multiplier(100 + 50 * k, 1000, step_args) == pytest.approx(0.9**k)
    time_args = sched(curve="exp", decay_rate=0.99, decay_step=1000, total_training_time=24.0, warmup_proportion=0.06)
    end = time_multiplier(24 * 3600, time_args)
    assert end == pytest.approx(0.99 ** ((24 * 3600 * 0.94) / 1000))
    assert 0.4 < end < 0.45  # seconds, not hours: the default decays (academic-budget-bert's stayed at 0.9998)
    assert time_multiplier(24 * 3600 * 0.5, time_args) > end


def test_constant_step_warms_up_then_stays():
    args = sched(lr_schedule="constant_step", num_warmup_steps=10)
    assert [constant_step_multiplier(s, args) for s in (0, 5, 10, 10**7)] == [0.0, 0.5, 1.0, 1.0]


def test_no_warmup_starts_at_the_peak():
    assert lr_multiplier(0, 100, 0.0, "linear") == 1.0
    assert time_multiplier(0.0, sched(warmup_proportion=0.0)) == 1.0


def _optimizer():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 2e-3}])


def test_scheduler_sets_every_group_and_survives_a_checkpoint():
    args = sched(lr_schedule="time")
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, args)
    assert scheduler.get_last_lr() == [0.0, 0.0]
    lr = scheduler.step(10, 0.05 * TOTAL_S)
    assert lr == pytest.approx(0.5e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5e-3, 1e-3])

    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    fresh_optimizer = _optimizer()
    resumed = build_scheduler(fresh_optimizer, args)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.base_lrs == [1e-3, 2e-3]
    assert resumed.step(10, 0.05 * TOTAL_S) == lr  # the position comes from the loop, as the training loop resumes
    assert [g["lr"] for g in fresh_optimizer.param_groups] == pytest.approx([0.5e-3, 1e-3])
    assert resumed.step(11, 0.5 * TOTAL_S) == scheduler.step(11, 0.5 * TOTAL_S)


def test_step_without_arguments_counts_steps():
    scheduler = build_scheduler(_optimizer(), sched(lr_schedule="step", warmup_proportion=0.5), total_steps=4)
    assert [scheduler.step() for _ in range(4)] == pytest.approx([0.5e-3, 1e-3, 0.5e-3, 0.0])


def test_bad_schedules_name_the_fix():
    """The names are the flags' rules (SchedulerArguments.validate, also for JSON argument files that argparse's
    choices never see); the step schedule's total and warmup are check_arguments' (tests/train/test_pretraining.py)."""
    check = ArgumentChecker()
    sched(lr_schedule="cosine", curve="wavy").validate(check)
    assert check.errors == ["--lr_schedule 'cosine' is not one of: time, step, constant_step",
                            "--curve 'wavy' is not one of: linear, exp, constant, customized"]
    check = ArgumentChecker()
    sched(warmup_proportion=1.5, total_training_time=0, decay_step=0).validate(check)
    assert len(check.errors) == 3
