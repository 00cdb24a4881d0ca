#!/usr/bin/env python
"""Corpus -> tokenized, masked HDF5 shards (academic-budget-bert's format) + manifest.json.

Examples:
    # offline: the packaged Wikipedia lead sections, a few shards
    python prepare_dataset.py --output_dir data/wiki_offline --num_train_shards 16 --dup_factor 2 \\
        --num_test_shards 2 --frac_test 0.02

    # full English Wikipedia on a node (as academic-budget-bert: 256 x 10 train files)
    python prepare_dataset.py --dataset wikipedia --dataset_config 20231101.en \\
        --tokenizer_name bert-large-uncased --do_lower_case --output_dir data/wikipedia \\
        --max_seq_length 128 --num_train_shards 256 --dup_factor 10 --num_test_shards 128 --num_workers 32

    # the same over 4 machines: one part each (same flags plus --part K/4), then join the folders
    python prepare_dataset.py ... --output_dir data/wiki-part0 --part 0/4     # machine 0; 1/4, 2/4, 3/4 likewise
    python prepare_dataset.py --merge data/wiki-part0 data/wiki-part1 data/wiki-part2 data/wiki-part3 \
        --output_dir data/wikipedia

Rerunning a killed command resumes it. See ``--help`` for every flag.
"""

from __future__ import annotations

import sys

from pretraining.cli import parse_args
from pretraining.data.prepare import prepare
from pretraining.data.prepare_args import PrepareArguments, apply_defaults
from pretraining.errors import run_main


@run_main(defer_interrupts=True, interrupted=(
    "every shard with its final name is complete (shards are written under a temporary name and renamed "
    "when done): rerun the same command to resume; finished shards and tokenized chunks are kept"))
def main(argv=None):
    """Parse the flags and run the pipeline; returns the manifest (dict). With no arguments at all (the seed's
    README command) the corpus is the seed's Simple English Wikipedia when the Hub can be reached."""
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = parse_args([PrepareArguments], argv)
    return prepare(args if args.merge else apply_defaults(args, seed_default=not argv)).manifest


if __name__ == "__main__":
    main()
