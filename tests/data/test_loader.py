"""The shard-epoch loader on real shards: order, equal steps per rank, resume position, prefetch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pretraining.data.loader import ShardLoader, ShardSequence, validation_batches
from pretraining.data.shards import list_shards, read_shard, write_shard
from pretraining.errors import UserError

SIZES = (40, 72, 100)


@pytest.fixture(scope="module")
def collate(bert_tokenizer):
    from pretraining.data.collator import PretrainingCollator

    return PretrainingCollator(len(bert_tokenizer), bert_tokenizer.mask_token_id, bert_tokenizer.all_special_ids)


@pytest.fixture(scope="module")
def unequal(tiny_shards, tmp_path_factory):
    """Three shards of 40, 72 and 100 distinct real samples."""
    folder = tmp_path_factory.mktemp("unequal")
    parts = [read_shard(p) for p in list_shards(tiny_shards, "train")]
    pool = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(pool["input_ids"], axis=0, return_index=True)
    pool = {k: v[np.sort(first)] for k, v in pool.items()}
    start = 0
    for i, size in enumerate(SIZES):
        write_shard(folder / f"train_shard_{i:05d}.hdf5", {k: v[start:start + size] for k, v in pool.items()})
        start += size
    return list_shards(folder, "train")


def make(shards, collate, **kwargs):
    options = dict(read=read_shard, collate=collate, micro_batch=4, grad_accum=2, rank=0, world_size=1,
                   loader_type="per_device", seed=42)
    return ShardLoader(shards, **{**options, **kwargs})


def rows_of(steps) -> list[bytes]:
    return [row.numpy().tobytes() for micro in steps for batch in micro for row in batch["input_ids"]]


@pytest.mark.parametrize("num_shards, group", [(1, 1), (7, 1), (3, 2), (5, 4), (8, 8), (10, 4)])
def test_every_shard_is_used_before_any_repeats_and_no_epoch_repeats_one(num_shards, group):
    sequence = ShardSequence(num_shards, group, seed=5)
    order = [sequence[k] for k in range(6 * num_shards * group)]
    for start in range(0, len(order), num_shards):
        assert sorted(order[start:start + num_shards]) == list(range(num_shards))
    for start in range(0, len(order), group):
        assert len(set(order[start:start + group])) == group
    assert order[:num_shards] == [int(i) for i in np.random.default_rng([5, 0]).permutation(num_shards)]
    other = ShardSequence(num_shards, group, seed=6)
    assert num_shards < 3 or order != [other[k] for k in range(len(order))]


def test_per_device_needs_a_shard_for_every_rank(unequal, collate):
    with pytest.raises(UserError, match="only 3 train shards: use --data_loader_type dist"):
        make(unequal, collate, world_size=4)
    assert make(unequal, collate, world_size=4, loader_type="dist").steps_in_epoch(0) >= 1


@pytest.mark.parametrize("loader_type", ["per_device", "dist"])
def test_ranks_run_equal_steps_on_unequal_shards(unequal, collate, loader_type):
    loaders = [make(unequal, collate, rank=r, world_size=2, loader_type=loader_type) for r in range(2)]
    try:
        for epoch in range(6):
            shards = loaders[0].epoch_shards(epoch)
            assert shards == loaders[1].epoch_shards(epoch)
            steps = [list(loader.epoch(epoch)) for loader in loaders]
            assert len(steps[0]) == len(steps[1]) == loaders[0].steps_in_epoch(epoch) > 0
            assert all(len(step) == 2 and len(step[0]["input_ids"]) == 4 for step in steps[0])
            sizes = [len(read_shard(p)["input_ids"]) for p in shards]
            if loader_type == "per_device":  # each rank its own shard; the smaller one sets the steps
                assert shards[0] != shards[1] and len(steps[0]) == min(sizes) // 8
            else:  # one shard, split between the ranks
                assert len(shards) == 1 and len(steps[0]) == sizes[0] // 2 // 8
            mine = [set(rows_of(s)) for s in steps]
            assert not mine[0] & mine[1]
            shard_rows = [set(r.tobytes() for r in read_shard(p)["input_ids"].astype(np.int64)) for p in shards]
            assert mine[0] <= shard_rows[0] and mine[1] <= shard_rows[-1]
    finally:
        for loader in loaders:
            loader.close()


def test_resuming_mid_epoch_gives_the_same_batches_with_dynamic_masks(tiny_shards_dynamic, collate):
    loader = make(list_shards(tiny_shards_dynamic, "train"), collate)
    full = list(loader.epoch(1))
    tail = list(loader.epoch(1, start_step=3))
    again = list(make(list_shards(tiny_shards_dynamic, "train"), collate).epoch(1, start_step=3))
    assert len(tail) == len(full) - 3
    for a, b, c in zip(full[3:], tail, again):
        for x, y, z in zip(a, b, c):
            for key in x:
                assert torch.equal(x[key], y[key]) and torch.equal(x[key], z[key])
    masked = full[0][0]["labels"] != -100
    assert masked.any() and (full[0][0]["input_ids"][masked] != full[0][0]["labels"][masked]).any()
    loader.close()


def test_each_pass_over_a_shard_is_shuffled_anew(tiny_shards, collate):
    shards = list_shards(tiny_shards, "train")
    loader = make(shards, collate, prefetch=False)
    same_shard = [e for e in range(1, 12) if loader.epoch_shards(e) == loader.epoch_shards(0)]
    assert same_shard
    first, later = rows_of(loader.epoch(0)), rows_of(loader.epoch(same_shard[0]))
    assert first != later and len(set(first) & set(later)) > len(first) // 2


def test_the_next_shard_is_read_in_the_background(tiny_shards, collate):
    threads = []

    def read(path):
        threads.append((path, threading.current_thread().name))
        return read_shard(path)

    loader = make(list_shards(tiny_shards, "train"), collate, read=read)
    steps = loader.epoch(0)
    next(steps)
    loader.close()
    assert threads[0] == (loader.epoch_shards(0)[0], threading.current_thread().name)
    assert threads[1][0] == loader.epoch_shards(1)[0] and threads[1][1].startswith("shard-prefetch")


def test_shards_smaller_than_one_step_are_refused(unequal, collate):
    loader = make(unequal, collate, micro_batch=16, grad_accum=4, prefetch=False)  # 64 samples per step
    small = next(e for e in range(3) if loader.epoch_shards(e)[0] == unequal[0])  # the 40-sample shard
    assert loader.steps_in_epoch(next(e for e in range(3) if e != small)) >= 1  # 72 or 100 samples: fine
    with pytest.raises(UserError, match="holds 40 samples, fewer than one optimizer step per rank"):
        loader.steps_in_epoch(small)


def test_validation_reads_the_whole_test_shard_once_over_the_ranks(tiny_shards, collate):
    shard = list_shards(tiny_shards, "test")[0]
    seen = []
    for rank in range(2):
        for batch in validation_batches(shard, read=read_shard, collate=collate, micro_batch=5, rank=rank,
                                        world_size=2, seed=0):
            seen += [row.numpy().tobytes() for row in batch["input_ids"]]
    expected = [row.astype(np.int64).tobytes() for row in read_shard(shard)["input_ids"]]
    assert sorted(seen) == sorted(expected)
