"""Masked-LM validation metrics: loss, accuracy, and the no-context (unigram) baseline.

Each validation logs, over the masked tokens of one test shard:

* ``eval_loss``: the model's loss (masked-LM, plus NSP for ``bert-mlm-nsp``), as before;
* ``eval_mlm_accuracy``: the share of masked tokens whose top prediction is right;
* ``eval_unigram_loss``: the cross-entropy of the training set's unigram model on the
  same masked tokens (:mod:`pretraining.data.unigram`): what a model that ignores the
  context would score. ``eval_loss`` (or ``eval_mlm_loss`` with NSP) below it means
  the model uses the context; at it, the model has learned token frequencies only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from pretraining.data import unigram
from pretraining.data.collator import IGNORE_INDEX

#: train shards read to estimate the unigram model when the dataset has no token_counts.json
ESTIMATE_SHARDS = 4


def masked_predictions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits ``[N, V]``, targets ``[N]``) of the N masked positions, from dense or sparse MLM logits."""
    keep = labels != IGNORE_INDEX
    targets = labels[keep]
    if logits.shape[:-1] == labels.shape:  # dense: one row per position
        logits = logits[keep]
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"{logits.shape[0]} prediction rows for {targets.shape[0]} masked positions")
    return logits, targets


@dataclass
class MaskedLMSums:
    """Running sums over validation batches; :meth:`values` are summed over ranks, then :meth:`metrics`."""

    loss: float = 0.0
    mlm_loss: float = 0.0
    correct: int = 0
    count: int = 0
    unigram_loss: float = 0.0

    def add(self, output, labels: torch.Tensor, unigram_log_probs: Optional[torch.Tensor]) -> None:
        """Add one batch: the model's ``output`` (loss, prediction_logits) for ``labels``."""
        logits, targets = masked_predictions(output.prediction_logits, labels)
        count = int(targets.numel())
        self.loss += float(output.loss) * count  # weight by predictions: the mean over all of them
        if count:  # the model's own mean over the masked tokens (NaN for a batch with none)
            self.mlm_loss += float(output.masked_lm_loss) * count
        self.correct += int((logits.argmax(dim=-1) == targets).sum())
        self.count += count
        if unigram_log_probs is not None:
            self.unigram_loss -= float(unigram_log_probs[targets].sum())

    def values(self) -> list[float]:
        return [self.loss, self.mlm_loss, float(self.correct), float(self.count), self.unigram_loss]

    @staticmethod
    def metrics(values: Sequence[float], nsp: bool = False) -> dict:
        """The logged eval metrics from (rank-summed) :meth:`values`; NaN when nothing was predicted."""
        loss, mlm_loss, correct, count, unigram_loss = values
        if not count:
            return {"eval_loss": float("nan")}
        out = {"eval_loss": loss / count, "eval_mlm_accuracy": correct / count,
               "eval_unigram_loss": unigram_loss / count}
        if nsp:
            out["eval_mlm_loss"] = mlm_loss / count
        return out


def unigram_log_probs(dataset_path: str, train_shards: Sequence[Path], read: Callable[[Path], dict], vocab_size: int,
                      tokenizer, notices: list[str]) -> np.ndarray:
    """Log-probabilities of the training set's unigram model over the model's ``vocab_size`` ids.

    From the dataset's token counts (prepare_dataset.py writes them); for shards without
    them, estimated from the first few train shards, with a notice.
    """
    counts = unigram.read_counts(Path(dataset_path))
    if counts is None:
        used = list(train_shards[:ESTIMATE_SHARDS])
        counts = unigram.counts_from_shards(used, read, vocab_size, tokenizer.all_special_ids)
        notices.append(f"{dataset_path} has no {unigram.COUNTS_FILE}: the unigram baseline of the eval loss is "
                       f"estimated from {len(used)} of {len(train_shards)} train shards")
    if len(counts) < vocab_size:  # a tokenizer smaller than the model's (padded) vocabulary
        counts = np.concatenate([counts, np.zeros(vocab_size - len(counts), dtype=counts.dtype)])
    return unigram.log_probabilities(counts[:vocab_size])
