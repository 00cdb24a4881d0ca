"""The no-context baseline of masked-LM: a unigram model of the training tokens.

A masked-LM that ignores the context can do no better than predicting every masked
token from the training set's token frequencies; its cross-entropy on the held-out
masked tokens is the line a pretrained model's eval loss must get below before it
uses context at all (a model at that line has learned only frequencies, and its
representations are of little use for fine-tuning).

``prepare_dataset.py`` counts the (non-special) tokens of the train documents once
per dataset and writes them to :data:`COUNTS_FILE` beside the shards. For shards
without that file (academic-budget-bert's) training estimates the counts from a few
train shards (:func:`counts_from_shards`). Probabilities use add-one smoothing, so a
held-out token never seen in training costs ``log(N + V)`` nats, not infinity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pretraining.atomic import write_text_atomic

COUNTS_FILE = "token_counts.json"


def count_tokens(tokens: np.ndarray, vocab_size: int, special_token_ids: Sequence[int]) -> np.ndarray:
    """Occurrences of each token id in ``tokens`` (any shape), special tokens and padding not counted."""
    tokens = np.asarray(tokens).reshape(-1)
    counts = np.bincount(tokens[(tokens >= 0) & (tokens < vocab_size)], minlength=vocab_size).astype(np.int64)
    counts[[i for i in special_token_ids if 0 <= i < vocab_size]] = 0
    return counts


def write_counts(folder: Path, counts: np.ndarray, source: str) -> Path:
    """Write ``counts`` (one integer per vocabulary entry) to ``folder/COUNTS_FILE``, atomically."""
    path = Path(folder) / COUNTS_FILE
    record = {"vocab_size": int(len(counts)), "tokens": int(counts.sum()), "source": source,
              "counts": [int(c) for c in counts]}
    write_text_atomic(path, json.dumps(record, separators=(",", ":")) + "\n")
    return path


def read_counts(folder: Path) -> Optional[np.ndarray]:
    """The counts written by :func:`write_counts`, or None when the folder has none."""
    path = Path(folder) / COUNTS_FILE
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["counts"], dtype=np.int64)


def original_tokens(rows: dict) -> np.ndarray:
    """``input_ids`` of shard rows with statically masked positions restored to their original tokens."""
    ids = np.array(rows["input_ids"], dtype=np.int64)
    if "masked_lm_positions" in rows:
        positions = np.asarray(rows["masked_lm_positions"], dtype=np.int64)
        used = positions > 0
        row_index = np.broadcast_to(np.arange(len(ids))[:, None], positions.shape)
        ids[row_index[used], positions[used]] = np.asarray(rows["masked_lm_ids"], dtype=np.int64)[used]
    return ids


def counts_from_shards(paths: Sequence[Path], read: Callable[[Path], dict], vocab_size: int,
                       special_token_ids: Sequence[int]) -> np.ndarray:
    """Token counts of the given train shards (their static masks undone)."""
    total = np.zeros(vocab_size, dtype=np.int64)
    for path in paths:
        total += count_tokens(original_tokens(read(path)), vocab_size, special_token_ids)
    return total


def log_probabilities(counts: np.ndarray) -> np.ndarray:
    """Add-one-smoothed unigram log-probabilities (float64), one per vocabulary entry."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.log(counts + 1.0) - np.log(counts.sum() + len(counts))


def entropy(counts: np.ndarray) -> float:
    """Cross-entropy (nats) of the smoothed unigram model on the counted tokens themselves."""
    counts = np.asarray(counts, dtype=np.float64)
    return float(-(counts * log_probabilities(counts)).sum() / max(counts.sum(), 1.0))
