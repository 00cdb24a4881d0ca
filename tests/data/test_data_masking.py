"""80/10/10 masking (static shards and the dynamic collator) on real tokenized text."""

from __future__ import annotations

import numpy as np
import torch

from pretraining.data.collator import PretrainingCollator
from pretraining.data.masking import candidate_mask, mask_tokens, replacement_ids
from pretraining.data.shards import list_shards, read_manifest, read_shard


def _all_rows(folder, split="train"):
    shards = [read_shard(p) for p in list_shards(folder, split)]
    return {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}


def _unmasked(rows):
    """The original tokens: stored input_ids with masked_lm_ids put back at masked_lm_positions."""
    ids = rows["input_ids"].copy()
    for i, (positions, labels) in enumerate(zip(rows["masked_lm_positions"], rows["masked_lm_ids"])):
        used = positions > 0
        ids[i, positions[used]] = labels[used]
    return ids


def _check_statistics(original, corrupted, positions, counts, special, mask_id, prob, cap):
    """Counts per row exact; 80/10/10 split of the predictions within tolerance."""
    lengths = (original != 0).sum(axis=1)
    candidates = ((original != 0) & ~np.isin(original, special)).sum(axis=1)
    np.testing.assert_array_equal(counts, np.minimum(np.maximum(np.rint(candidates * prob), 1), cap))
    assert abs(counts.sum() / candidates.sum() - prob) < 0.02  # ~15% of non-special tokens
    rows = np.repeat(np.arange(len(original)), counts)
    cols = np.concatenate([p[:c] for p, c in zip(positions, counts)])
    assert np.all(cols >= 1) and np.all(cols < lengths[rows])
    assert not np.isin(original[rows, cols], special).any()  # never [CLS]/[SEP]/[PAD]
    new, old = corrupted[rows, cols], original[rows, cols]
    masked, kept = np.mean(new == mask_id), np.mean(new == old)
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.025 and abs(1 - masked - kept - 0.1) < 0.025
    unchanged = np.ones(original.shape, dtype=bool)
    unchanged[rows, cols] = False
    np.testing.assert_array_equal(corrupted[unchanged], original[unchanged])


def test_static_shards_mask_15_percent_80_10_10_with_reader_semantics(tiny_shards):
    manifest = read_manifest(tiny_shards)
    rows = _all_rows(tiny_shards)
    positions = rows["masked_lm_positions"]
    counts = (positions > 0).sum(axis=1)
    # academic-budget-bert's reader: positions sorted, the first 0 ends the list
    for p, c in zip(positions, counts):
        assert np.all(np.diff(p[:c]) > 0) and np.all(p[c:] == 0)
    assert np.all(rows["masked_lm_ids"][positions == 0] == 0)
    original = _unmasked(rows)
    _check_statistics(original, rows["input_ids"], positions, counts, manifest["special_token_ids"],
                      manifest["mask_token_id"], manifest["masked_lm_prob"], manifest["max_predictions_per_seq"])


def test_dynamic_collator_masks_like_static_preparation(tiny_shards_dynamic, bert_tokenizer):
    manifest = read_manifest(tiny_shards_dynamic)
    rows = _all_rows(tiny_shards_dynamic)
    assert "masked_lm_positions" not in rows
    collate = PretrainingCollator(len(bert_tokenizer), bert_tokenizer.mask_token_id, bert_tokenizer.all_special_ids,
                                  masked_lm_prob=0.15, max_predictions_per_seq=10)
    batch = collate(rows, np.random.default_rng(3))
    assert all(t.dtype == torch.int64 for t in batch.values())
    labels = batch["labels"].numpy()
    counts = (labels != -100).sum(axis=1)
    positions = np.stack([np.concatenate([np.flatnonzero(row != -100), np.zeros(10 - c, int)])
                          for row, c in zip(labels, counts)])
    np.testing.assert_array_equal(labels[labels != -100], rows["input_ids"][labels != -100])
    _check_statistics(rows["input_ids"], batch["input_ids"].numpy(), positions, counts,
                      manifest["special_token_ids"], bert_tokenizer.mask_token_id, 0.15, 10)
    np.testing.assert_array_equal(batch["attention_mask"].numpy(), rows["input_mask"])
    # deterministic for an rng state, different for another
    again = collate(rows, np.random.default_rng(3))
    assert torch.equal(again["input_ids"], batch["input_ids"]) and torch.equal(again["labels"], batch["labels"])
    assert not torch.equal(collate(rows, np.random.default_rng(4))["labels"], batch["labels"])


def test_static_collator_labels_follow_the_reference_reader(tiny_shards, bert_tokenizer):
    rows = {k: v[:32] for k, v in read_shard(list_shards(tiny_shards)[0]).items()}
    collate = PretrainingCollator(len(bert_tokenizer), bert_tokenizer.mask_token_id, bert_tokenizer.all_special_ids,
                                  max_predictions_per_seq=10)
    batch = collate(rows, None)
    for i in range(32):  # academic-budget-bert: labels[positions[:first zero]] = ids[:first zero], else -1
        positions, ids = rows["masked_lm_positions"][i], rows["masked_lm_ids"][i]
        zeros = np.flatnonzero(positions == 0)
        n = zeros[0] if len(zeros) else len(positions)
        expected = np.full(rows["input_ids"].shape[1], -100)
        expected[positions[:n]] = ids[:n]
        np.testing.assert_array_equal(batch["labels"][i].numpy(), expected)
    np.testing.assert_array_equal(batch["input_ids"].numpy(), rows["input_ids"])
    np.testing.assert_array_equal(batch["token_type_ids"].numpy(), rows["segment_ids"])
    assert "next_sentence_label" not in batch


def test_mask_tokens_caps_predictions_and_handles_rows_without_candidates():
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, size=(6, 200))
    ids[:, 0], ids[:, -1] = 101, 102
    ids[5, 1:-1] = 0  # a row of padding only
    attention = (ids != 0).astype(np.int8)
    attention[5, :] = 0
    special = [0, 100, 101, 102, 103]
    out = mask_tokens(ids, candidate_mask(ids, attention, special), rng, masked_lm_prob=0.15, max_predictions=20,
                      mask_token_id=103, random_ids=replacement_ids(2048, special))
    np.testing.assert_array_equal(out.count, [20, 20, 20, 20, 20, 0])  # round(198 * .15) = 30 > cap 20
    assert np.all(out.positions[5] == 0) and np.array_equal(out.input_ids[5], ids[5])
    replaced = out.input_ids[out.input_ids != ids]
    assert replaced.size and not np.isin(replaced, [0, 100, 101, 102]).any()  # random ones are never special
