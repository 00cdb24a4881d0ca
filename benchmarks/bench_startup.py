#!/usr/bin/env python
"""run_pretraining.py start-up against the number of shards: launch to the first optimizer step.

Prepares the packaged Wikipedia (dynamic masking, seq 128) into ``--shards`` train shards (default
16 and 2560, the seed's 256 x 10) plus one test shard, then launches ``run_pretraining.py`` on each
(tiny model, one step, torch engine, no validation) ``--repeats`` times and reports the median time from
launch to the first progress line and to the process's end. The difference between the rows is
what the shard count costs at start-up (listing, the manifest, the per-shard metadata check);
the shards are small here, so reading them is not what is measured.

    python benchmarks/bench_startup.py                  # 16 vs 2560 shards (~3 minutes on 2 cores)

Last line: ``RESULT shards_small=... shards_large=... first_step_small_s=... first_step_large_s=... ratio=...``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def prepare(out: Path, shards: int) -> Path:
    data = out / f"data-{shards}"
    if not (data / "manifest.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "prepare_dataset.py"), "--output_dir", str(data), "--dataset",
                        "wikipedia-offline", "--masking", "dynamic", "--max_seq_length", "128", "--num_train_shards",
                        str(shards), "--dup_factor", "1", "--num_test_shards", "1", "--seed", "42"],
                       check=True, env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)}, capture_output=True)
    return data


def launch(data: Path, out: Path, job: str) -> tuple[float, float]:
    """(seconds to the first step's progress line, seconds to exit)."""
    argv = [sys.executable, str(ROOT / "run_pretraining.py"), "--dataset_path", str(data), "--output_dir",
            str(out / "runs"), "--job_name", job, "--hidden_size", "32", "--num_hidden_layers", "1",
            "--num_attention_heads", "2", "--intermediate_size", "64", "--max_position_embeddings", "128",
            "--train_batch_size", "1", "--train_micro_batch_size_per_gpu", "1", "--max_steps", "1",
            "--print_steps", "1", "--no_wandb", "--finetune_checkpoint_at_end", "false"]
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)})
    first = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if first is None and line.lstrip().startswith("step 1 "):
            first = time.monotonic() - started
    code = process.wait()
    if code or first is None:
        raise SystemExit(f"run_pretraining.py failed (exit {code}):\n{''.join(lines[-20:])}")
    return first, time.monotonic() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", nargs=2, type=int, default=[16, 2560], metavar=("SMALL", "LARGE"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output_dir", default=str(ROOT / "out" / "startup"))
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    rows = {}
    print("| train shards | prepare | launch -> first step (median) | launch -> exit (median) |")
    print("|---|---|---|---|")
    for shards in args.shards:
        began = time.monotonic()
        data = prepare(out, shards)
        prepared = time.monotonic() - began
        runs = [launch(data, out, f"s{shards}-{i}-{time.time_ns()}") for i in range(args.repeats)]
        first = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        rows[shards] = (first, total)
        print(f"| {shards} | {prepared:.0f} s | {first:.2f} s | {total:.2f} s |", flush=True)
    (small, (f_small, _)), (large, (f_large, _)) = rows.items()
    print(f"RESULT shards_small={small} shards_large={large} first_step_small_s={f_small:.2f} "
          f"first_step_large_s={f_large:.2f} ratio={f_large / f_small:.2f}")
    return rows


if __name__ == "__main__":
    main()
