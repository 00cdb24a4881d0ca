"""BERT's masked-LM corruption (80% [MASK], 10% random token, 10% unchanged), vectorised.

One function serves static masking at preparation time and dynamic masking in the
collator, so both give the same statistics. Per row, ``round(masked_lm_prob * n)``
of the n candidate tokens (at least 1, at most ``max_predictions``) are chosen
uniformly without replacement; special tokens and padding are never candidates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pretraining.errors import UserError

MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1  # the remaining 10% keep the original token


@dataclass
class MaskedBatch:
    """Result of :func:`mask_tokens`.

    ``positions`` are sorted ascending per row and 0-padded (position 0 holds [CLS],
    never a prediction); ``labels`` are the original ids at ``positions`` (0-padded);
    ``count[i]`` is how many predictions row i has.
    """

    input_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    count: np.ndarray


def replacement_ids(vocab_size: int, special_token_ids) -> np.ndarray:
    """Token ids used for the 10% random replacements: the vocabulary minus special tokens (read-only; computed
    once per vocabulary, not once per shard file).

    A UserError when nothing is left (a vocabulary of special tokens only cannot be pretrained on).
    """
    return _replacement_ids(int(vocab_size), tuple(sorted({int(i) for i in special_token_ids})))


@functools.lru_cache(maxsize=8)
def _replacement_ids(vocab_size: int, special_token_ids: tuple[int, ...]) -> np.ndarray:
    ids = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(special_token_ids, dtype=np.int64))
    ids.setflags(write=False)
    if ids.size == 0:
        raise UserError(f"the vocabulary has no ordinary tokens: all {vocab_size} ids are special tokens "
                        f"({sorted(set(int(i) for i in special_token_ids))[:10]}), so masking has nothing to predict "
                        "and no token for its 10% random replacements; use a real vocabulary (e.g. the packaged "
                        "bert-base-uncased, or prepare_dataset.py --train_tokenizer 8192)")
    return ids


def candidate_mask(input_ids: np.ndarray, attention_mask: np.ndarray, special_token_ids) -> np.ndarray:
    """Boolean [N, L]: real (non-padding) tokens that are not special tokens."""
    return (attention_mask != 0) & ~np.isin(input_ids, np.asarray(list(special_token_ids)))


def mask_tokens(
    input_ids: np.ndarray,
    candidates: np.ndarray,
    rng: np.random.Generator,
    *,
    masked_lm_prob: float,
    max_predictions: int,
    mask_token_id: int,
    random_ids: np.ndarray,
) -> MaskedBatch:
    """Choose and corrupt prediction positions for every row of ``input_ids`` [N, L].

    The number of random draws does not depend on the data, so a given ``rng`` state
    always gives the same result for the same input.
    """
    n_rows, length = input_ids.shape
    width = min(max_predictions, length)
    n_candidates = candidates.sum(axis=1)
    count = np.minimum(np.maximum(np.rint(n_candidates * masked_lm_prob), 1), max_predictions)
    count = np.minimum(count, n_candidates).astype(np.int64)

    scores = rng.random((n_rows, length))
    scores[~candidates] = 2.0  # non-candidates sort last
    # the `width` lowest scores of each row, lowest first (as a full stable argsort's first `width` columns: the
    # scores of candidates are distinct floats, and `used` below never reaches past a row's candidates)
    lowest = np.argpartition(scores, width - 1, axis=1)[:, :width] if width < length else \
        np.broadcast_to(np.arange(length), (n_rows, length))
    chosen = np.take_along_axis(lowest, np.argsort(np.take_along_axis(scores, lowest, axis=1), axis=1,
                                                   kind="stable"), axis=1)
    used = np.arange(width)[None, :] < count[:, None]
    positions = np.sort(np.where(used, chosen, length), axis=1)
    positions = np.where(used, positions, 0)

    rows = np.broadcast_to(np.arange(n_rows)[:, None], positions.shape)
    labels = np.where(used, input_ids[rows, positions], 0)

    action = rng.random((n_rows, width))
    random_tokens = random_ids[rng.integers(0, len(random_ids), size=(n_rows, width))]
    replacement = np.where(action < MASK_FRACTION, mask_token_id,
                           np.where(action < MASK_FRACTION + RANDOM_FRACTION, random_tokens, labels))
    corrupted = input_ids.copy()
    corrupted[rows[used], positions[used]] = replacement[used]

    out = MaskedBatch(input_ids=corrupted, positions=np.zeros((n_rows, max_predictions), dtype=np.int64),
                      labels=np.zeros((n_rows, max_predictions), dtype=np.int64), count=count)
    out.positions[:, :width] = positions
    out.labels[:, :width] = labels
    return out
