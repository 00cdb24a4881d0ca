"""Shard-epoch loader: which shard each rank reads, in which order, in equal steps.

An *epoch* is one pass over one shard per data-parallel rank (academic-budget-bert's
meaning). Shards are visited along an endless sequence made of seeded permutations
of all train shards (:class:`ShardSequence`), so every shard is used once before any
is reused:

* ``per_device``: in epoch ``e`` rank ``r`` reads sequence position ``e * world + r``
  (each rank its own shard, never the same as another rank's in that epoch);
* ``dist``: every rank reads position ``e`` and takes every ``world``-th sample of it.

Every rank runs the same number of optimizer steps in an epoch: the count comes from
the shard lengths (HDF5 metadata every rank can read), not from what each rank happens
to hold, so no rank waits in an all-reduce for a rank that has already finished (the
hang of academic-budget-bert's loader with unequal shards). Samples beyond a whole
number of steps are left out of that epoch; the shuffle differs each epoch.

The position in the data is ``(epoch, step_in_epoch)``; batches are a pure function of
it and the seed (dynamic masks included), so a resumed run reads exactly the batches
an uninterrupted one would. With ``prefetch`` the next epoch's shard is read in a
background thread while the current one trains.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np

from pretraining.errors import UserError

LOADER_TYPES = ("per_device", "dist")


def shard_length(path: Path) -> int:
    """Number of samples in a shard, from its metadata (the data is not read)."""
    try:
        with h5py.File(path, "r") as handle:
            return int(handle["input_ids"].shape[0])
    except (OSError, KeyError) as exc:
        raise UserError(f"{path} is not a readable shard ({exc}); prepare the data again with prepare_dataset.py") from None


class ShardSequence:
    """The endless order in which shards are read: seeded permutations of all of them, one after another.

    Positions are read ``group`` at a time (one per rank in an epoch). Where such a group
    spans two permutations, the later one is reordered so that the group holds no shard
    twice; this needs ``num_shards >= group``. Index it by position: ``sequence[k]``.
    """

    def __init__(self, num_shards: int, group: int, seed: int):
        if num_shards < group:
            raise UserError(f"--data_loader_type per_device gives each of the {group} ranks its own shard per epoch, "
                            f"but there are only {num_shards} train shards: use --data_loader_type dist, or "
                            "prepare more shards")
        self.num_shards, self.group, self.seed = num_shards, group, seed
        self._order: list[int] = []

    def _extend(self) -> None:
        cycle = len(self._order) // self.num_shards
        permutation = [int(i) for i in np.random.default_rng([self.seed, cycle]).permutation(self.num_shards)]
        started = len(self._order) % self.group  # positions of the open group already taken
        taken = set(self._order[len(self._order) - started:]) if started else set()
        head = [i for i in permutation if i not in taken][:self.group - started] if started else []
        self._order += head + [i for i in permutation if i not in head]

    def __getitem__(self, position: int) -> int:
        while len(self._order) <= position:
            self._extend()
        return self._order[position]


class ShardLoader:
    """Yields, for each optimizer step, the list of ``grad_accum`` collated micro-batches of this rank.

    ``read(path) -> dict[str, np.ndarray]`` loads a shard; ``collate(rows, rng)`` turns
    rows into model inputs. ``length(path)`` gives a shard's sample count.
    """

    def __init__(self, shards: list[Path], *, read: Callable, collate: Callable, micro_batch: int, grad_accum: int,
                 rank: int, world_size: int, loader_type: str, seed: int, max_steps_per_epoch: int | None = None,
                 prefetch: bool = True, length: Callable[[Path], int] = shard_length):
        assert loader_type in LOADER_TYPES, loader_type  # the flag's owner (DatasetArguments) checked it
        if not shards:
            raise UserError("no train shards to read")
        self.shards = list(shards)
        self.read, self.collate, self.length = read, collate, length
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.rank, self.world_size = rank, world_size
        self.loader_type, self.seed = loader_type, seed
        self.max_steps_per_epoch = max_steps_per_epoch
        self._sequence = ShardSequence(len(self.shards), world_size if loader_type == "per_device" else 1, seed)
        self._lengths: dict[Path, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") if prefetch else None
        self._pending: dict[Path, Future] = {}

    @property
    def samples_per_step(self) -> int:
        """Samples one rank consumes per optimizer step."""
        return self.micro_batch * self.grad_accum

    def epoch_shards(self, epoch: int) -> list[Path]:
        """The shard of every rank in ``epoch`` (one shard shared by all ranks for ``dist``)."""
        if self.loader_type == "dist":
            return [self.shards[self._sequence[epoch]]]
        return [self.shards[self._sequence[epoch * self.world_size + r]] for r in range(self.world_size)]

    def _length(self, path: Path) -> int:
        if path not in self._lengths:
            self._lengths[path] = self.length(path)
        return self._lengths[path]

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps in ``epoch``; the same number on every rank."""
        shards = self.epoch_shards(epoch)
        per_rank = self._length(shards[0]) // self.world_size if self.loader_type == "dist" \
            else min(self._length(p) for p in shards)
        steps = per_rank // self.samples_per_step
        if steps == 0:
            raise UserError(
                f"epoch {epoch}: a rank's share of shard(s) {', '.join(p.name for p in shards)} holds {per_rank} "
                f"samples, fewer than one optimizer step per rank ({self.samples_per_step} = micro batch "
                f"{self.micro_batch} x accumulation {self.grad_accum}): prepare fewer, larger shards, or lower "
                "--train_batch_size")
        if self.max_steps_per_epoch is None:
            return steps
        capped = self.max_steps_per_epoch // self.grad_accum  # the cap counts micro-batches
        if capped == 0:
            raise UserError(f"--max_steps_per_epoch {self.max_steps_per_epoch} (micro-batches) is less than one "
                            f"optimizer step of {self.grad_accum} micro-batches: raise it to at least {self.grad_accum}")
        return min(steps, capped)

    def _my_shard(self, epoch: int) -> Path:
        shards = self.epoch_shards(epoch)
        return shards[0] if self.loader_type == "dist" else shards[self.rank]

    def _load(self, path: Path) -> dict:
        pending = self._pending.pop(path, None)
        return pending.result() if pending is not None else self.read(path)

    def _prefetch(self, epoch: int) -> None:
        if self._pool is None:
            return
        path = self._my_shard(epoch)
        if path not in self._pending:
            self._pending[path] = self._pool.submit(self.read, path)

    def _indices(self, epoch: int, num_rows: int, steps: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(num_rows)
        if self.loader_type == "dist":
            order = order[self.rank::self.world_size]
        return order[: steps * self.samples_per_step]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[list[dict]]:
        """The steps of ``epoch`` from ``start_step`` on: each a list of ``grad_accum`` micro-batches."""
        steps = self.steps_in_epoch(epoch)
        rows = self._load(self._my_shard(epoch))
        self._prefetch(epoch + 1)
        num_rows = len(next(iter(rows.values())))
        indices = self._indices(epoch, num_rows, steps)
        for step in range(start_step, steps):
            micro = []
            for j in range(self.grad_accum):
                number = step * self.grad_accum + j
                take = indices[number * self.micro_batch:(number + 1) * self.micro_batch]
                rng = np.random.default_rng([self.seed, epoch, self.rank, number, 2])
                micro.append(self.collate({key: value[take] for key, value in rows.items()}, rng))
            yield micro

    def close(self) -> None:
        """Stop the prefetch thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()


def validation_batches(path: Path, *, read: Callable, collate: Callable, micro_batch: int, rank: int,
                       world_size: int, seed: int) -> Iterator[dict]:
    """All of one test shard, every ``world_size``-th sample for this rank, in fixed order and masks."""
    rows = read(path)
    num_rows = len(next(iter(rows.values())))
    mine = np.arange(rank, num_rows, world_size)
    for number, start in enumerate(range(0, len(mine), micro_batch)):
        take = mine[start:start + micro_batch]
        yield collate({key: value[take] for key, value in rows.items()}, np.random.default_rng([seed, number, 3]))
