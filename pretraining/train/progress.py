"""The training loop's state: its position (saved in every checkpoint), the training-time clock, the sums
behind each progress line, and why a run stopped."""

from __future__ import annotations

import math
import signal
import sys
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
    INTERRUPTED = "interrupted"

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


#: exit codes of a run that did not finish its job (metrics.jsonl's end reason -> code); the rest exit 0
FAILED_REASONS = {StopReason.NONFINITE_LOSS.value: 1}
SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def exit_code(end: dict) -> int:
    """The process exit code for a run's end record: 0 when it did its job, 1 for a non-finite stop, 128 + the
    signal number when SIGINT (130) or SIGTERM (143) interrupted it."""
    if end.get("reason") == StopReason.INTERRUPTED.value:
        return 128 + int(getattr(signal, end.get("signal", "SIGINT")))
    return FAILED_REASONS.get(end.get("reason"), 0)


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM during training are noted and acted on at the next optimizer-step boundary (the
    loop then saves a checkpoint and stops); a second one stops at once, without a checkpoint. Installed only in
    the main thread; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    @property
    def name(self) -> str | None:
        return SIGNAL_NAMES.get(self.received) if self.received is not None else None

    def __enter__(self) -> "StopSignals":
        try:
            for signum in SIGNAL_NAMES:
                self._previous[signum] = signal.signal(signum, self._note)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _note(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{SIGNAL_NAMES[signum]} received: stopping after the current optimizer step and saving a checkpoint "
              "(send it again to stop at once, without one)", file=sys.stderr, flush=True)
