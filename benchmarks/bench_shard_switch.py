#!/usr/bin/env python
"""The stall at a shard switch, with and without the loader's background prefetch.

Writes ``--shards`` statically masked shards of ``--samples`` sequences each (default 137,000 of 128 tokens:
what one of the seed's 2,560 files holds for full English Wikipedia, ~4.5 G tokens x dup factor 10, as
measured by bench_prepare_scale.py's token count per GiB), with Zipf-distributed token ids (compressing
like text) through the real shard writer (gzip, as prepare_dataset.py writes them). Then it runs the real
:class:`~pretraining.data.loader.ShardLoader` (real ``read_shard``, real collator) over them, one epoch per
shard, ``--steps`` optimizer steps per epoch, and emulates the device's step with ``time.sleep(--step_ms)``
(a training step mostly waits on the GPU with the GIL released; what the loader costs the step shows as
time beyond the sleep). For each mode it reports the wait for the first batch of every epoch after the
first (the shard switch), the median wait for the other batches, and the slowest whole step (sleep
included) while a prefetch runs: a background read that held the GIL would stretch those.

    python benchmarks/bench_shard_switch.py            # 137k-sequence shards (~1.5 minutes on 2 cores)
    python benchmarks/bench_shard_switch.py --samples 20000 --shards 3 --steps 20   # quick

The page cache holds the shards just written, so the read is decompression and copying, not the disk; a
cold read adds the disk's time for the shard's compressed bytes (printed) to the no-prefetch stall.

Last line: ``RESULT samples=... shard_mb=... read_s=... switch_no_prefetch_s=... switch_prefetch_s=...
ratio=... slowest_step_prefetch_ms=...``
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pretraining.data.collator import PretrainingCollator  # noqa: E402
from pretraining.data.loader import ShardLoader  # noqa: E402
from pretraining.data.shards import read_shard, shard_name, write_shard  # noqa: E402

VOCAB, MASK_ID, SPECIAL = 30522, 103, (0, 100, 101, 102, 103)


def make_shard(path: Path, samples: int, seq: int, predictions: int, seed: int) -> None:
    """A statically masked shard of Zipf-distributed ids, full rows with a 10% share of short ones."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, size=(samples, seq)), VOCAB - 1000) + 999
    lengths = np.where(rng.random(samples) < 0.1, rng.integers(8, seq, samples), seq)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int8)
    ids = (ids * mask).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(samples), lengths - 1] = 102
    segments = (np.arange(seq)[None, :] >= (lengths // 2)[:, None]).astype(np.int8) * mask
    positions = np.sort(rng.integers(1, seq - 1, size=(samples, predictions)), axis=1).astype(np.int32)
    positions[positions >= lengths[:, None] - 1] = 0
    masked = np.where(positions > 0, ids[np.arange(samples)[:, None], positions], 0).astype(np.int32)
    write_shard(path, {"input_ids": ids, "input_mask": mask, "segment_ids": segments,
                       "masked_lm_positions": positions, "masked_lm_ids": masked})


def run(shards: list[Path], prefetch: bool, steps: int, micro_batch: int, step_s: float) -> dict:
    collate = PretrainingCollator(vocab_size=VOCAB, mask_token_id=MASK_ID, special_token_ids=SPECIAL)
    loader = ShardLoader(shards, read=functools.partial(read_shard, vocab_size=VOCAB), collate=collate,
                         micro_batch=micro_batch, grad_accum=1, rank=0, world_size=1, loader_type="per_device",
                         seed=1, max_steps_per_epoch=steps, prefetch=prefetch)
    switches, waits, whole_steps = [], [], []
    try:
        for epoch in range(len(shards)):
            batches = loader.epoch(epoch)
            for step in range(steps):
                began = time.perf_counter()
                next(batches)
                waited = time.perf_counter() - began
                time.sleep(step_s)  # the device's step, GIL released
                if step == 0:
                    if epoch > 0:
                        switches.append(waited)
                else:
                    waits.append(waited)
                    if epoch + 1 < len(shards):  # a prefetch of the next shard is running or done
                        whole_steps.append(time.perf_counter() - began)
            next(batches, None)
    finally:
        loader.close()
    return {"switch": statistics.median(switches), "switch_max": max(switches), "wait": statistics.median(waits),
            "slowest_step": max(whole_steps)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=137_000, help="sequences per shard")
    parser.add_argument("--shards", type=int, default=4, help="shards (one epoch each; switches = shards - 1)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch")
    parser.add_argument("--micro_batch", type=int, default=128)
    parser.add_argument("--step_ms", type=float, default=100.0, help="emulated device time per step")
    parser.add_argument("--output_dir", default=str(ROOT / "out" / "shard_switch"))
    args = parser.parse_args(argv)
    out = Path(args.output_dir) / f"s{args.samples}-q{args.seq}"
    out.mkdir(parents=True, exist_ok=True)
    shards = [out / shard_name("train", i) for i in range(args.shards)]
    for i, path in enumerate(shards):
        if not path.is_file():
            make_shard(path, args.samples, args.seq, args.predictions, seed=i)
    shard_mb = statistics.mean(p.stat().st_size for p in shards) / 1e6
    reads = []
    for path in shards:
        began = time.perf_counter()
        read_shard(path, vocab_size=VOCAB)
        reads.append(time.perf_counter() - began)
    read_s = statistics.median(reads)
    print(f"{args.shards} shards of {args.samples:,} x {args.seq} tokens, {shard_mb:.0f} MB each on disk; "
          f"read_shard {read_s:.2f} s (median, page cache warm); {args.steps} steps of {args.step_ms:g} ms per epoch")
    print("| prefetch | shard switch wait (median / max) | other batches (median) | slowest step while prefetching |")
    print("|---|---|---|---|")
    rows = {}
    for prefetch in (False, True):
        row = run(shards, prefetch, args.steps, args.micro_batch, args.step_ms / 1000)
        rows[prefetch] = row
        print(f"| {'on' if prefetch else 'off'} | {row['switch']:.3f} s / {row['switch_max']:.3f} s | "
              f"{row['wait'] * 1000:.1f} ms | {row['slowest_step'] * 1000:.0f} ms |", flush=True)
    off, on = rows[False], rows[True]
    print(f"RESULT samples={args.samples} shard_mb={shard_mb:.0f} read_s={read_s:.3f} "
          f"switch_no_prefetch_s={off['switch']:.3f} switch_prefetch_s={on['switch']:.3f} "
          f"ratio={on['switch'] / off['switch']:.3f} slowest_step_prefetch_ms={on['slowest_step'] * 1000:.0f}")
    return rows


if __name__ == "__main__":
    main()
