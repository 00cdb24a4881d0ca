"""Stage 2: turn the tokenized documents of one shard into its HDF5 file(s).

One task per (split, shard) writes that shard's ``dup_factor`` files (train) or one
file (test): each file re-packs the same documents and masks them anew, with a
random stream seeded by (seed, split, shard, dup) only, so the bytes do not depend
on the number of workers or on which run (first or resumed) writes them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pretraining.atomic import sha256_file
from pretraining.data.chunkstore import SPLIT_CODES, ChunkStore, concatenate, make_key
from pretraining.data.masking import candidate_mask, mask_tokens, replacement_ids
from pretraining.data.samples import build_rows, pack_segment_pairs, pack_single_segments
from pretraining.data.shards import read_shard, write_shard
from pretraining.data.unigram import count_tokens

PACKERS = {False: pack_single_segments, True: pack_segment_pairs}


@dataclass(frozen=True)
class SampleSettings:
    """How samples are made and masked (the same for every shard)."""

    seed: int
    max_seq_length: int
    short_seq_prob: float
    nsp: bool
    static_masking: bool
    masked_lm_prob: float
    max_predictions_per_seq: int
    vocab_size: int
    cls_token_id: int
    sep_token_id: int
    mask_token_id: int
    special_token_ids: tuple


@dataclass(frozen=True)
class ShardTask:
    """The files of one (split, shard): ``files`` is a tuple of (dup, path)."""

    store_folder: str
    token_dtype: str
    num_chunks: int
    split: str
    shard: int
    files: tuple


def file_rngs(seed: int, split: str, shard: int, dup: int) -> tuple[random.Random, np.random.Generator]:
    """The random streams of one output file: (packing, shuffling + masking)."""
    sequence = np.random.SeedSequence([seed, SPLIT_CODES[split], shard, dup])
    state = sequence.generate_state(2, dtype=np.uint64)
    return random.Random((int(state[0]) << 64) | int(state[1])), np.random.default_rng(sequence)


def make_samples(docs, settings: SampleSettings, py_rng: random.Random, np_rng: np.random.Generator) -> dict:
    """Pack, shuffle and (statically) mask the samples of ``docs``: arrays of the shard schema."""
    spans = PACKERS[settings.nsp](docs, settings.max_seq_length, settings.short_seq_prob, py_rng)
    spans = spans.take(np_rng.permutation(len(spans)))
    rows = build_rows(docs.tokens, spans, settings.max_seq_length, settings.cls_token_id, settings.sep_token_id)
    if settings.static_masking:
        masked = mask_tokens(
            rows["input_ids"],
            candidate_mask(rows["input_ids"], rows["input_mask"], settings.special_token_ids),
            np_rng,
            masked_lm_prob=settings.masked_lm_prob,
            max_predictions=settings.max_predictions_per_seq,
            mask_token_id=settings.mask_token_id,
            random_ids=replacement_ids(settings.vocab_size, settings.special_token_ids),
        )
        rows["input_ids"] = masked.input_ids.astype(np.int32)
        rows["masked_lm_positions"] = masked.positions.astype(np.int32)
        rows["masked_lm_ids"] = masked.labels.astype(np.int32)
    return rows


@dataclass
class ShardResult:
    """What one shard task produced: a record per file, and the token counts of its documents (train only)."""

    records: list
    token_counts: Optional[np.ndarray]


def build_shard(task: ShardTask, settings: SampleSettings) -> ShardResult:
    """Worker task: write the missing files of one shard. Returns one record per file.

    A file already present under its final name is complete (atomic writes) and is
    kept; its record is recomputed from the file. Train shards also count their
    documents' tokens (:mod:`pretraining.data.unigram`), once per shard whatever the dup factor.
    """
    records, docs = [], None

    def documents():
        nonlocal docs
        if docs is None:
            store = ChunkStore(task.store_folder, task.token_dtype)
            key = int(make_key(task.split, task.shard))
            docs = concatenate([store.read_key(c, key) for c in range(task.num_chunks)])
        return docs

    for dup, path in task.files:
        path = Path(path)
        if path.is_file():
            samples = len(read_shard(path)["input_ids"])
            records.append({"name": path.name, "split": task.split, "samples": samples, "sha256": sha256_file(path)})
            continue
        rows = make_samples(documents(), settings, *file_rngs(settings.seed, task.split, task.shard, dup))
        digest = write_shard(path, rows)
        records.append({"name": path.name, "split": task.split, "samples": len(rows["input_ids"]), "sha256": digest})
    counts = None
    if task.split == "train":
        counts = count_tokens(documents().tokens, settings.vocab_size, settings.special_token_ids)
    return ShardResult(records, counts)
