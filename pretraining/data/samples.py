"""Packing the sentences of one document into fixed-length samples.

A sample never holds text from two documents (except the second segment of a
"random next" NSP pair, which is its point). Sentences are added to a sample until
it reaches its target length: ``max_seq_length`` minus the special tokens or, with
probability ``short_seq_prob``, a random shorter one (2 .. max), redrawn for every
sample. Unlike academic-budget-bert, single-segment samples never throw text away:
what does not fit starts the next sample instead of being truncated.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pretraining.data.tokenization import TokenizedDocuments


@dataclass
class Spans:
    """Samples as token spans into ``TokenizedDocuments.tokens``: segment A, optional B."""

    a_start: np.ndarray
    a_len: np.ndarray
    b_start: Optional[np.ndarray] = None
    b_len: Optional[np.ndarray] = None
    next_sentence_labels: Optional[np.ndarray] = None  # 1 = B is a random next segment

    def __len__(self) -> int:
        return len(self.a_start)

    def take(self, order: np.ndarray) -> "Spans":
        """The samples in ``order`` (e.g. a permutation)."""
        pick = lambda a: None if a is None else a[order]  # noqa: E731
        return Spans(pick(self.a_start), pick(self.a_len), pick(self.b_start), pick(self.b_len),
                     pick(self.next_sentence_labels))


@dataclass
class Pieces:
    """Sentences cut to at most ``max_tokens``: token start/length per piece, piece range per document."""

    start: list
    length: list
    doc_first: list
    doc_count: list


def sentence_pieces(docs: TokenizedDocuments, max_tokens: int) -> Pieces:
    """Cut every sentence longer than ``max_tokens`` into consecutive pieces of at most that size."""
    lengths = docs.sentence_lengths.astype(np.int64)
    per_sentence = -(-lengths // max_tokens)
    piece_len = np.full(int(per_sentence.sum()), max_tokens, dtype=np.int64)
    last = np.cumsum(per_sentence) - 1
    piece_len[last] = lengths - (per_sentence - 1) * max_tokens
    piece_start = np.concatenate([[0], np.cumsum(piece_len)[:-1]]) if piece_len.size else piece_len
    owner = np.repeat(np.arange(len(docs.document_sentences)), docs.document_sentences)
    doc_count = np.bincount(owner, weights=per_sentence, minlength=len(docs.document_sentences)).astype(np.int64)
    doc_first = np.concatenate([[0], np.cumsum(doc_count)[:-1]]) if doc_count.size else doc_count
    return Pieces(piece_start.tolist(), piece_len.tolist(), doc_first.tolist(), doc_count.tolist())


def _target_length(rng: random.Random, max_tokens: int, short_seq_prob: float) -> int:
    if rng.random() < short_seq_prob:
        return rng.randint(min(2, max_tokens), max_tokens)
    return max_tokens


def _chunk_end(pieces: Pieces, first: int, end: int, target: int) -> int:
    """End of the chunk of pieces from ``first`` that reaches ``target`` tokens (or the document's end)."""
    total, i = 0, first
    while i < end and total < target:
        total += pieces.length[i]
        i += 1
    return i


def pack_single_segments(docs: TokenizedDocuments, max_seq_length: int, short_seq_prob: float,
                         rng: random.Random) -> Spans:
    """One segment per sample ([CLS] A [SEP]), for MLM-only pretraining.

    Whole sentences are added until the sample reaches its target length; a sentence
    that would overflow the sample is cut at the maximum and its rest starts the
    next sample (academic-budget-bert truncates it away instead).
    """
    max_tokens = max_seq_length - 2
    sentence_ends = np.cumsum(docs.sentence_lengths, dtype=np.int64)
    doc_ends = sentence_ends[np.cumsum(docs.document_sentences, dtype=np.int64) - 1] if sentence_ends.size else []
    doc_ends = [int(e) for e, n in zip(doc_ends, docs.document_sentences) if n > 0]
    sentence_ends = sentence_ends.tolist()
    starts, lengths = [], []
    pos, k = 0, 0
    for doc_end in doc_ends:
        while pos < doc_end:
            target = _target_length(rng, max_tokens, short_seq_prob)
            k = bisect.bisect_left(sentence_ends, pos + target, lo=k)
            end = min(sentence_ends[k] if k < len(sentence_ends) else doc_end, doc_end, pos + max_tokens)
            starts.append(pos)
            lengths.append(end - pos)
            pos = end
    return Spans(np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64))


def _truncate_pair(rng: random.Random, a: list, b: list, max_tokens: int) -> None:
    """Trim [start, length] spans a and b to fit, one token at a time from the longer one's front or back."""
    while a[1] + b[1] > max_tokens:
        longer = a if a[1] > b[1] else b
        if rng.random() < 0.5:
            longer[0] += 1
        longer[1] -= 1


def pack_segment_pairs(docs: TokenizedDocuments, max_seq_length: int, short_seq_prob: float,
                       rng: random.Random) -> Spans:
    """Two segments per sample ([CLS] A [SEP] B [SEP]) with next-sentence labels.

    As in academic-budget-bert, sentences are gathered until the target length, cut
    into A and B at a random sentence boundary, and the pair is truncated to fit
    (randomly from the front or the back of the longer segment). B is the actual
    continuation of A (label 0) or, half of the time and always when the chunk is a
    single sentence, a span of another document of the same shard (label 1); the
    pieces of the chunk not used by a random-next sample are put back.
    """
    max_tokens = max_seq_length - 3
    pieces = sentence_pieces(docs, max_tokens)
    others = [d for d, count in enumerate(pieces.doc_count) if count > 0]
    out: list[tuple[int, int, int, int, int]] = []
    for doc, (first, count) in enumerate(zip(pieces.doc_first, pieces.doc_count)):
        i, end = first, first + count
        while i < end:
            target = _target_length(rng, max_tokens, short_seq_prob)
            j = _chunk_end(pieces, i, end, target)
            n = j - i
            a_end = i + (rng.randint(1, n - 1) if n >= 2 else 1)
            a = [pieces.start[i], pieces.start[a_end - 1] + pieces.length[a_end - 1] - pieces.start[i]]
            other = None
            if (n == 1 or rng.random() < 0.5) and len(others) > 1:
                other = others[rng.randrange(len(others) - 1)]
                other = other if other != doc else others[-1]
            if other is not None:
                o_first, o_count = pieces.doc_first[other], pieces.doc_count[other]
                k = o_first + rng.randrange(o_count)
                b = [pieces.start[k], 0]
                while k < o_first + o_count and b[1] < max(1, target - a[1]):
                    b[1] += pieces.length[k]
                    k += 1
                label, i = 1, a_end  # put the unused pieces back
            elif n >= 2:
                b = [pieces.start[a_end], pieces.start[j - 1] + pieces.length[j - 1] - pieces.start[a_end]]
                label, i = 0, j
            elif a[1] >= 2:  # a lone sentence and no other document: cut it in two
                half = a[1] // 2
                a, b = [a[0], half], [a[0] + half, a[1] - half]
                label, i = 0, j
            else:
                i = j
                continue
            _truncate_pair(rng, a, b, max_tokens)
            out.append((a[0], a[1], b[0], b[1], label))
    cols = np.asarray(out, dtype=np.int64).reshape(-1, 5)
    return Spans(cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3], cols[:, 4].astype(np.int8))


def build_rows(tokens: np.ndarray, spans: Spans, max_seq_length: int, cls_id: int, sep_id: int) -> dict:
    """Arrays of the shard schema (without the masked-LM keys) from ``spans``."""
    n, length = len(spans), max_seq_length
    col = np.arange(length, dtype=np.int64)[None, :]
    a_len = spans.a_len[:, None]
    b_len = np.zeros_like(a_len) if spans.b_len is None else spans.b_len[:, None]
    b_start = np.zeros_like(a_len) if spans.b_start is None else spans.b_start[:, None]
    has_b = np.zeros_like(a_len, dtype=bool) if spans.b_len is None else np.ones_like(a_len, dtype=bool)
    in_a = (col >= 1) & (col <= a_len)
    in_b = (col >= a_len + 2) & (col < a_len + 2 + b_len)
    sep = (col == a_len + 1) | (has_b & (col == a_len + 2 + b_len))
    index = np.where(in_a, spans.a_start[:, None] + col - 1, np.where(in_b, b_start + col - a_len - 2, 0))
    ids = np.where(in_a | in_b, tokens[np.clip(index, 0, max(tokens.size - 1, 0))] if tokens.size else 0, 0)
    ids = np.where(col == 0, cls_id, np.where(sep, sep_id, ids))
    used = col < a_len + 2 + b_len + has_b
    rows = {
        "input_ids": np.where(used, ids, 0).astype(np.int32).reshape(n, length),
        "input_mask": np.broadcast_to(used, (n, length)).astype(np.int8),
        "segment_ids": (has_b & (col >= a_len + 2) & used).astype(np.int8).reshape(n, length),
    }
    if spans.next_sentence_labels is not None:
        rows["next_sentence_labels"] = spans.next_sentence_labels.astype(np.int8)
    return rows
