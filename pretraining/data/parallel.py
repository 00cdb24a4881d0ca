"""Worker processes for independent tasks (or inline work for one worker), a bounded window at a time."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Iterable, Iterator, Sequence

from pretraining.errors import raise_if_interrupted


def _exit_when(sentinel) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _init_worker(modules: Sequence[str]) -> None:
    # A worker ends with its parent: a killed run leaves no idle workers behind, nor any still writing output.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_when, args=(parent.sentinel,), name="exit-with-parent", daemon=True).start()
    # Ctrl-C reaches the whole process group: the parent alone decides to stop (then cancels and shuts the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # N single-threaded workers: no nested thread pools oversubscribing the cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in modules:
        __import__(name)


def _ready() -> int:
    return os.getpid()


class Workers:
    """A pool of ``num_workers`` spawned processes, used as a context manager.

    The processes start (and import ``preload`` modules) as soon as the pool is
    entered, so their start-up overlaps whatever the main process does next. With
    one worker, tasks run inline in this process. A worker exits as soon as its
    parent dies (even by SIGKILL).
    """

    def __init__(self, num_workers: int, preload: Sequence[str] = ()) -> None:
        self.num_workers = max(1, int(num_workers))
        self.preload = tuple(preload)
        self._pool = None

    def __enter__(self) -> "Workers":
        if self.num_workers > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=context, initializer=_init_worker,
                                             initargs=(self.preload,))
            for _ in range(self.num_workers):
                self._pool.submit(_ready)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, function: Callable, tasks: Iterable[tuple]) -> Iterator:
        """Yield ``function(*task)`` for every task, in completion order.

        At most ``2 * num_workers`` tasks are in flight, so a lazy ``tasks`` iterator
        (e.g. a corpus being read) is never drained into memory. A task's exception is
        re-raised here after the queued tasks are cancelled.
        """
        if self._pool is None:
            for task in tasks:
                yield function(*task)
                raise_if_interrupted()  # a noted Ctrl-C stops here, between tasks (never inside native code)
            return
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(self._pool.submit(function, *task))
                while len(pending) >= 2 * self.num_workers:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in [f for f in pending if f in done]:
                        pending.remove(future)
                        yield future.result()
                        raise_if_interrupted()
            while pending:
                yield pending.popleft().result()
                raise_if_interrupted()
        finally:
            for future in pending:
                future.cancel()
