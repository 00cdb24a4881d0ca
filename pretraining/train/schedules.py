"""Learning-rate schedules: pure functions of progress, and a checkpointable scheduler.

The learning rate is ``--lr`` times a multiplier in [0, 1] that depends on a *position*
measured in the schedule's own unit:

* ``--lr_schedule time``: position = elapsed training seconds, out of a total of
  ``--total_training_time`` hours. Warmup lasts ``--warmup_proportion`` of the budget.
* ``--lr_schedule step``: position = optimizer steps completed, out of ``total_steps``
  (``--max_steps``, required). Warmup lasts ``--warmup_proportion`` of the steps, or
  ``--num_warmup_steps`` when the proportion is 0.
* ``--lr_schedule constant_step``: warmup over ``--num_warmup_steps`` steps, then the
  full learning rate for good (no total needed, ``--curve`` only shapes the warmup).

Curves (``--curve``), for position ``x``, warmup length ``W`` and total ``T``:

* ``linear``: ``x / W`` during warmup, then ``(T - x) / (T - W)``: exactly 1 when warmup
  ends and exactly 0 at the end of the budget (0 afterwards).
* ``exp``: ``(x / W) ** 2`` during warmup, then ``decay_rate ** ((x - W) / decay_step)``,
  with ``--decay_step`` in the position's unit: steps for step schedules, *seconds* of
  training time for the time schedule.

* ``customized`` (the seed's, ``--curve_conf_file``): linear warmup, then one of the seed's
  curves from its INI file (:mod:`pretraining.train.custom_curves`), in the seed's units (steps;
  hours for the time schedule).

Fixes relative to academic-budget-bert: its exp curve counted ``decay_step`` in hours
(0.99 per 1000 hours: no decay at all in a 24-hour budget; here 0.99 per 1000 s gives
x0.42 after 24 h); its linear decay divided by ``max(1 hour, T - W)``, so budgets under
about an hour never reached the peak LR (here fractions of the budget are exact); its
step schedule used ``--max_steps``' huge default as the total, so warmup never ended
(here ``--lr_schedule step`` without a total is an error).

:func:`build_scheduler` returns an :class:`LRScheduler`, stepped by the training loop with
``step(global_step, elapsed_seconds)``, the loop's own position (saved in its checkpoints), so a
resumed run continues the same curve; the scheduler's ``state_dict`` holds the base learning rates only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch


def warmup_fraction(position: float, warmup: float) -> float:
    """Share of the warmup done at ``position``, in [0, 1] (1 when there is no warmup)."""
    return 1.0 if position >= warmup else max(position, 0.0) / warmup


def linear_decay(position: float, warmup: float, total: float) -> float:
    """1 when warmup ends, falling linearly to 0 at ``total`` (0 after it)."""
    return min(1.0, max(0.0, (total - position) / (total - warmup)))


def exp_decay(position: float, warmup: float, decay_rate: float, decay_step: float) -> float:
    """``decay_rate`` per ``decay_step`` units after warmup (1 when warmup ends)."""
    return decay_rate ** (max(position - warmup, 0.0) / decay_step)


@dataclass(frozen=True)
class Curve:
    """A warmup shape (of the warmup fraction) and a decay (position, warmup, total, rate, step)."""

    warmup: Callable[[float], float]
    decay: Callable[[float, float, float, float, float], float]


CURVES: dict[str, Curve] = {
    "linear": Curve(warmup=lambda f: f, decay=lambda x, w, t, rate, step: linear_decay(x, w, t)),
    "exp": Curve(warmup=lambda f: f * f, decay=lambda x, w, t, rate, step: exp_decay(x, w, rate, step)),
    # warmup, then the peak LR to the end (schedule-free optimizers: --optimizer_type sfadamw)
    "constant": Curve(warmup=lambda f: f, decay=lambda x, w, t, rate, step: 1.0),
}


CUSTOMIZED = "customized"
#: --curve values
CURVE_NAMES = (*CURVES, CUSTOMIZED)


def customized_curve(conf_file: str, base_lr: float, unit: float) -> Curve:
    """``--curve customized``: linear warmup, then the seed's conf-file curve of ``(position - warmup) * unit``
    (the seed's units: steps, or hours for the time schedule), 0 from the total on."""
    from pretraining.train.custom_curves import load_curve

    curve = load_curve(conf_file)
    return Curve(warmup=lambda f: f, decay=lambda x, w, t, rate, step:
                 0.0 if x >= t else max(0.0, curve(base_lr, (x - w) * unit) / base_lr))


def lr_multiplier(position: float, total: float | None, warmup: float, curve: str | Curve,
                  decay_rate: float = 0.99, decay_step: float = 1000.0) -> float:
    """Warmup then decay along ``curve`` (a name of :data:`CURVES`, or a :class:`Curve`), in [0, 1];
    ``total=None`` means constant after warmup."""
    curve = curve if isinstance(curve, Curve) else CURVES[curve]
    if position < warmup:
        return curve.warmup(warmup_fraction(position, warmup))
    if total is None:
        return 1.0
    return curve.decay(position, warmup, total, decay_rate, decay_step)


def time_multiplier(elapsed_seconds: float, args, curve: Curve | None = None) -> float:
    """``--lr_schedule time``: multiplier after ``elapsed_seconds`` of training."""
    total = args.total_training_s
    return lr_multiplier(elapsed_seconds, total, args.warmup_proportion * total, curve or args.curve,
                         args.decay_rate, args.decay_step)


def step_warmup(args, total_steps: int) -> float:
    """Warmup length in steps for ``--lr_schedule step``."""
    return args.warmup_proportion * total_steps if args.warmup_proportion > 0 else float(args.num_warmup_steps)


def step_multiplier(global_step: int, total_steps: int, args, curve: Curve | None = None) -> float:
    """``--lr_schedule step``: multiplier after ``global_step`` optimizer steps of ``total_steps``."""
    return lr_multiplier(global_step, total_steps, step_warmup(args, total_steps), curve or args.curve,
                         args.decay_rate, args.decay_step)


def constant_step_multiplier(global_step: int, args, curve: Curve | None = None) -> float:
    """``--lr_schedule constant_step``: warmup over ``--num_warmup_steps``, then 1."""
    return lr_multiplier(global_step, None, float(args.num_warmup_steps), curve or args.curve)


def _time_schedule(args, total_steps, curve):
    return lambda step, elapsed: time_multiplier(elapsed, args, curve)


def _step_schedule(args, total_steps, curve):
    return lambda step, elapsed: step_multiplier(step, total_steps, args, curve)


def _constant_step_schedule(args, total_steps, curve):
    return lambda step, elapsed: constant_step_multiplier(step, args, curve)


#: --lr_schedule name -> builder(SchedulerArguments, total_steps) -> f(global_step, elapsed_seconds)
SCHEDULES: dict[str, Callable] = {"time": _time_schedule, "step": _step_schedule,
                                  "constant_step": _constant_step_schedule}


class LRScheduler:
    """Sets ``lr = base_lr * multiplier(position)`` on every parameter group.

    ``step(global_step, elapsed_seconds)`` is called before each optimizer step with the
    number of optimizer steps completed so far and the training seconds elapsed so far;
    the first update (step 0, 0 s) therefore runs at the start of warmup. Omitted
    arguments keep counting: ``step()`` alone means one more step, same elapsed time.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: Callable[[int, float], float]):
        self.optimizer = optimizer
        self.multiplier = multiplier
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.global_step = 0
        self.elapsed_seconds = 0.0
        self._last_lr = list(self.base_lrs)
        self._apply()

    def step(self, global_step: int | None = None, elapsed_seconds: float | None = None) -> float:
        """Move to ``global_step`` / ``elapsed_seconds``, set the LRs, return the first group's LR."""
        self.global_step = self.global_step + 1 if global_step is None else int(global_step)
        if elapsed_seconds is not None:
            self.elapsed_seconds = float(elapsed_seconds)
        return self._apply()

    def _apply(self) -> float:
        factor = self.multiplier(self.global_step, self.elapsed_seconds)
        self._last_lr = [base * factor for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr
        return self._last_lr[0]

    def get_last_lr(self) -> list[float]:
        """The learning rate of each parameter group, as last set."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """The base learning rates (plain numbers; safe for ``torch.load(weights_only=True)``). The position is the
        training loop's (its step and training time, in the checkpoint's state): it is not kept twice."""
        return {"base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the base learning rates (older checkpoints' position keys are ignored: the loop passes its
        position to the next :meth:`step`)."""
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, args, total_steps: int | None = None) -> LRScheduler:
    """The scheduler described by ``args`` (a :class:`~pretraining.train.args.SchedulerArguments`).

    ``total_steps`` (from ``--max_steps``) is required by ``--lr_schedule step`` only; the flags' rules
    (names, the step schedule's total and warmup) are checked by the argument groups
    (:meth:`~pretraining.train.args.SchedulerArguments.validate`, :func:`pretraining.train.config.check_arguments`).
    """
    curve = None
    if args.curve == CUSTOMIZED:
        base_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
        curve = customized_curve(args.curve_conf_file, base_lr, 1 / 3600.0 if args.lr_schedule == "time" else 1.0)
    return LRScheduler(optimizer, SCHEDULES[args.lr_schedule](args, total_steps, curve))
