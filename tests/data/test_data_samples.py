"""Packing sentences into samples: spans stay inside one document, nothing is lost, pairs are well formed."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pretraining.data.samples import build_rows, pack_segment_pairs, pack_single_segments
from pretraining.data.tokenization import TokenizedDocuments


def _documents(seed=0, n_docs=40):
    """Documents whose token ids say where they come from: 1000 * (document + 1) + position."""
    rng = np.random.default_rng(seed)
    sentences = [rng.integers(1, 40, size=rng.integers(0, 12)) for _ in range(n_docs)]
    sentences[3] = np.array([150])  # one sentence longer than a whole sample
    sentences[5] = np.array([], dtype=np.int64)  # a document without tokens
    tokens = [1000 * (d + 1) + np.arange(s.sum()) for d, s in enumerate(sentences)]
    docs = TokenizedDocuments(np.concatenate(tokens).astype(np.int32),
                              np.concatenate(sentences).astype(np.int32),
                              np.array([len(s) for s in sentences], dtype=np.int32))
    return docs, sentences


@pytest.mark.parametrize("short_seq_prob", [0.0, 0.1, 1.0])
def test_single_segments_partition_each_document(short_seq_prob):
    docs, sentences = _documents()
    spans = pack_single_segments(docs, 64, short_seq_prob, random.Random(1))
    tokens = docs.tokens
    covered = []
    for start, length in zip(spans.a_start, spans.a_len):
        span = tokens[start : start + length]
        assert 1 <= length <= 62
        assert len(set(span // 1000)) == 1  # one document
        assert np.all(np.diff(span) == 1)  # contiguous, in order
        covered.append(span)
    np.testing.assert_array_equal(np.sort(np.concatenate(covered)), np.sort(tokens))  # each token exactly once
    # samples end at a sentence end unless the sentence had to be cut at the maximum length
    ends = set(np.cumsum(docs.sentence_lengths).tolist())
    for start, length in zip(spans.a_start, spans.a_len):
        assert start + length in ends or length == 62
    if short_seq_prob == 0:  # a full-length target: samples only stop short at a document's end
        doc_ends = set(np.cumsum([s.sum() for s in sentences]).tolist())
        assert all(start + length in doc_ends for start, length in zip(spans.a_start, spans.a_len) if length < 62)


def test_build_rows_layout():
    docs, _ = _documents()
    spans = pack_single_segments(docs, 64, 0.1, random.Random(2))
    rows = build_rows(docs.tokens, spans, 64, cls_id=101, sep_id=102)
    for i in (0, 7, len(spans) - 1):
        n = spans.a_len[i]
        expected = np.concatenate([[101], docs.tokens[spans.a_start[i] : spans.a_start[i] + n], [102],
                                   np.zeros(64 - n - 2)])
        np.testing.assert_array_equal(rows["input_ids"][i], expected)
        np.testing.assert_array_equal(rows["input_mask"][i], np.arange(64) < n + 2)
    assert rows["input_ids"].dtype == np.int32 and rows["input_mask"].dtype == rows["segment_ids"].dtype == np.int8
    assert not rows["segment_ids"].any() and "next_sentence_labels" not in rows


def test_segment_pairs():
    docs, _ = _documents(seed=3, n_docs=60)
    spans = pack_segment_pairs(docs, 48, 0.1, random.Random(4))
    rows = build_rows(docs.tokens, spans, 48, cls_id=101, sep_id=102)
    labels = spans.next_sentence_labels
    assert 0.3 < labels.mean() < 0.75
    for i in range(len(spans)):
        a = docs.tokens[spans.a_start[i] : spans.a_start[i] + spans.a_len[i]]
        b = docs.tokens[spans.b_start[i] : spans.b_start[i] + spans.b_len[i]]
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= 45
        assert len(set(a // 1000)) == 1 and len(set(b // 1000)) == 1
        if labels[i] == 0:  # the true continuation: same document, B after A
            assert a[0] // 1000 == b[0] // 1000 and b[0] > a[-1]
        else:
            assert a[0] // 1000 != b[0] // 1000
        n = len(a) + len(b) + 3
        expected = np.concatenate([[101], a, [102], b, [102], np.zeros(48 - n)])
        np.testing.assert_array_equal(rows["input_ids"][i], expected)
        np.testing.assert_array_equal(rows["segment_ids"][i], (np.arange(48) >= len(a) + 2) & (np.arange(48) < n))
    np.testing.assert_array_equal(rows["next_sentence_labels"], labels)
