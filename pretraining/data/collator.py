"""Batches of shard rows -> model inputs (int64 tensors), with masking when the shard has none."""

from __future__ import annotations

from typing import Optional

import numpy as np

from pretraining.data.masking import candidate_mask, mask_tokens, replacement_ids

IGNORE_INDEX = -100


class PretrainingCollator:
    """Turn rows sliced from :func:`pretraining.data.shards.read_shard` arrays into tensors.

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` (-100
    except at predicted positions, where it holds the original token) and, when the
    shard has them, ``next_sentence_label``. Statically masked rows keep their
    stored masks (academic-budget-bert's reader semantics: position 0 = unused);
    rows without ``masked_lm_*`` keys are masked here with ``rng`` (80/10/10), the
    same way prepare_dataset.py masks static shards.
    """

    def __init__(self, vocab_size: int, mask_token_id: int, special_token_ids, masked_lm_prob: float = 0.15,
                 max_predictions_per_seq: int = 20) -> None:
        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.masked_lm_prob = float(masked_lm_prob)
        self.max_predictions_per_seq = int(max_predictions_per_seq)
        self._random_ids = replacement_ids(self.vocab_size, self.special_token_ids)

    def _static_labels(self, input_ids: np.ndarray, positions: np.ndarray, ids: np.ndarray) -> np.ndarray:
        labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
        used = positions > 0
        rows = np.broadcast_to(np.arange(len(input_ids))[:, None], positions.shape)
        labels[rows[used], positions[used]] = ids[used]
        return labels

    def _mask(self, input_ids: np.ndarray, attention_mask: np.ndarray, rng: np.random.Generator):
        masked = mask_tokens(
            input_ids,
            candidate_mask(input_ids, attention_mask, self.special_token_ids),
            rng,
            masked_lm_prob=self.masked_lm_prob,
            max_predictions=self.max_predictions_per_seq,
            mask_token_id=self.mask_token_id,
            random_ids=self._random_ids,
        )
        return masked.input_ids, self._static_labels(input_ids, masked.positions, masked.labels)

    def __call__(self, rows: dict, rng: Optional[np.random.Generator] = None) -> dict:
        """Collate one batch of rows (dict of arrays with a leading batch dimension)."""
        import torch

        input_ids = np.asarray(rows["input_ids"], dtype=np.int64)
        attention_mask = np.asarray(rows["input_mask"], dtype=np.int64)
        if "masked_lm_positions" in rows:
            labels = self._static_labels(input_ids, np.asarray(rows["masked_lm_positions"], dtype=np.int64),
                                         np.asarray(rows["masked_lm_ids"], dtype=np.int64))
        else:
            input_ids, labels = self._mask(input_ids, attention_mask, rng if rng is not None else np.random.default_rng())
        batch = {
            "input_ids": torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
            "attention_mask": torch.from_numpy(attention_mask),
            "token_type_ids": torch.from_numpy(np.asarray(rows["segment_ids"], dtype=np.int64)),
            "labels": torch.from_numpy(labels),
        }
        if "next_sentence_labels" in rows:
            batch["next_sentence_label"] = torch.from_numpy(np.asarray(rows["next_sentence_labels"], dtype=np.int64))
        return batch
