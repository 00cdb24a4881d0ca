#!/usr/bin/env python
"""prepare_dataset.py throughput on the offline Wikipedia corpus (10,033 documents).

Measures, on one CPU core each:
  * the raw fast tokenizer on the same documents (``encode_batch_fast``, single thread):
    the ceiling for any pipeline that tokenizes;
  * the end-to-end pipeline (read, clean, split, tokenize, pack, mask, write HDF5)
    with 1 worker, and with 2 workers for the scaling figure.
Tokenizer loading and process start-up are one-off costs and are excluded.

Goal (issue #2): end-to-end >= 50% of the raw tokenizer's speed; 2 workers >= 1.8x one.
The last line is machine-readable:
  RESULT tokens_per_s_per_core=<x> fraction_of_tokenizer=<y> speedup_2_workers=<z>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core for the raw tokenizer too
os.environ.setdefault("RAYON_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretraining.data.corpus import offline_wikipedia  # noqa: E402
from pretraining.data.prepare import PrepareArguments, prepare  # noqa: E402
from pretraining.data.tokenization import encode_batch, load_tokenizer, rust_tokenizer  # noqa: E402


def raw_tokenizer_speed(repeats: int) -> tuple[float, int]:
    """Best tokens/s of encode_batch over the raw documents, and the token count."""
    texts = [text for text, _ in offline_wikipedia()]
    tokenizer = rust_tokenizer(load_tokenizer(None).json)
    best, tokens = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        encodings = encode_batch(tokenizer, texts)
        elapsed = time.perf_counter() - start
        tokens = sum(len(e.ids) for e in encodings)
        best = max(best, tokens / elapsed)
    return best, tokens


def pipeline_speed(workers: int, repeats: int, dup_factor: int) -> tuple[float, dict]:
    """Best end-to-end tokens/s (tokenize + build stages) with ``workers`` processes."""
    best, timings = 0.0, {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            args = PrepareArguments(output_dir=folder, num_train_shards=16, dup_factor=dup_factor,
                                    num_test_shards=2, frac_test=0.01, num_workers=workers)
            result = prepare(args)
        run = result.timings
        speed = run["tokens"] / (run["tokenize"] + run["build"])
        if speed > best:
            best, timings = speed, run
    return best, timings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="Runs per measurement (the best is kept)")
    parser.add_argument("--dup_factor", type=int, default=1, help="Train shard copies (1: each token masked once)")
    parser.add_argument("--max_workers", type=int, default=2, help="Also measure 2..N workers")
    args = parser.parse_args(argv)

    raw, raw_tokens = raw_tokenizer_speed(args.repeats)
    rows = [("raw tokenizer (encode_batch, 1 thread)", 1, raw_tokens, raw, float("nan"), float("nan"))]
    speeds = {}
    for workers in range(1, args.max_workers + 1):
        speed, t = pipeline_speed(workers, args.repeats, args.dup_factor)
        speeds[workers] = speed
        rows.append((f"prepare_dataset, {workers} worker(s)", workers, t["tokens"], speed, t["tokenize"], t["build"]))

    print(f"cpu cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f} "
          f"(other processes compete for the cores when it exceeds them); dup_factor {args.dup_factor}; "
          f"max_seq_length 128; static masking")
    print(f"{'measurement':42s} {'cores':>5s} {'tokens':>9s} {'tokens/s':>10s} {'tok/s/core':>10s} "
          f"{'tokenize s':>10s} {'build s':>8s}")
    for name, cores, tokens, speed, t_tok, t_build in rows:
        print(f"{name:42s} {cores:5d} {tokens:9d} {speed:10.0f} {speed / cores:10.0f} {t_tok:10.2f} {t_build:8.2f}")
    per_core = speeds[1]
    speedup = speeds.get(2, float("nan")) / speeds[1]
    print(f"end-to-end / raw tokenizer: {per_core / raw:.2f}   2 workers / 1 worker: {speedup:.2f}x")
    print(f"RESULT tokens_per_s_per_core={per_core:.0f} fraction_of_tokenizer={per_core / raw:.3f} "
          f"speedup_2_workers={speedup:.2f}")


if __name__ == "__main__":
    main()
