"""The training loop's state: its position (saved in every checkpoint), the training-time clock, the sums
behind each progress line, and why a run stopped."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Callable


class StopReason(str, Enum):
    """Why training stopped (the ``reason`` of metrics.jsonl's end line; compares equal to its string)."""

    TIME_BUDGET = "time_budget"
    MAX_STEPS = "max_steps"
    NUM_EPOCHS = "num_epochs"
    EARLY_STOP = "early_stop"
    NONFINITE_LOSS = "nonfinite_loss"

    def __str__(self) -> str:
        return self.value


class TrainingTimer:
    """Training time: seconds since start (plus an offset from a checkpoint) minus paused spans."""

    def __init__(self, clock: Callable[[], float], offset_s: float = 0.0):
        self.clock = clock
        self.offset_s = offset_s
        self.start = clock()
        self.paused_s = 0.0

    def elapsed(self) -> float:
        return self.offset_s + self.clock() - self.start - self.paused_s

    @contextmanager
    def paused(self):
        """Time spent inside does not count as training time."""
        began = self.clock()
        try:
            yield
        finally:
            self.paused_s += self.clock() - began


@dataclass
class Progress:
    """The loop's position, saved in every checkpoint's state.json."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0
    samples: int = 0
    validations: int = 0
    markers_done: int = 0
    skipped_in_a_row: int = 0
    skipped_steps: int = 0
    last_eval_step: int = -1
    last_checkpoint_step: int = -1
    wandb_run_id: str | None = None


@dataclass
class Interval:
    """Sums since the last progress line."""

    steps: int = 0
    loss: float = 0.0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    last_mean: float = math.nan

    def mean_loss(self) -> float:
        return self.loss / self.steps if self.steps else self.last_mean
