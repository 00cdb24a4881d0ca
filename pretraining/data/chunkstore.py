"""Tokenized documents on disk, between tokenizing and writing shards.

Stage 1 tokenizes the corpus in chunks of documents; each chunk is saved with its
documents ordered by destination (a ``key`` = split and shard), so stage 2 reads a
shard's documents as one slice per chunk. A chunk is two files: raw token ids
(``chunk_000000.tokens``) and an index (``chunk_000000.npz``) written last; the
index's presence marks the chunk complete, which makes stage 1 resumable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pretraining.atomic import atomic_file, write_bytes_atomic
from pretraining.data.tokenization import TokenizedDocuments, tokenize_documents

SPLIT_CODES = {"train": 0, "test": 1}
_KEY_STRIDE = 1 << 32


def make_key(split: str, shard) -> np.ndarray | int:
    """Destination key of documents (scalar or array of shard indices)."""
    return SPLIT_CODES[split] * _KEY_STRIDE + shard


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(total)


class ChunkStore:
    """The folder of tokenized chunks (deleted once the shards are written)."""

    def __init__(self, folder, token_dtype) -> None:
        self.folder = Path(folder)
        self.dtype = np.dtype(token_dtype)

    def _paths(self, chunk: int) -> tuple[Path, Path]:
        stem = self.folder / f"chunk_{chunk:06d}"
        return stem.with_suffix(".tokens"), stem.with_suffix(".npz")

    def is_complete(self, chunk: int) -> bool:
        """True when the chunk was fully written by an earlier (possibly killed) run."""
        return self._paths(chunk)[1].is_file()

    def write(self, chunk: int, docs: TokenizedDocuments, keys: np.ndarray) -> None:
        """Save ``docs`` (one key per document) ordered by key, atomically."""
        order = np.argsort(keys, kind="stable")
        sent_owner = np.repeat(np.arange(len(keys)), docs.document_sentences)
        doc_tokens = np.bincount(sent_owner, weights=docs.sentence_lengths, minlength=len(keys)).astype(np.int64)
        doc_tok_start = np.concatenate([[0], np.cumsum(doc_tokens)[:-1]])
        doc_sent_start = np.concatenate([[0], np.cumsum(docs.document_sentences)[:-1]]).astype(np.int64)
        tokens = docs.tokens[_segments(doc_tok_start[order], doc_tokens[order])]
        sentences = docs.sentence_lengths[_segments(doc_sent_start[order], docs.document_sentences[order].astype(np.int64))]
        tokens_path, index_path = self._paths(chunk)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(tokens_path, tokens.astype(self.dtype).tobytes())
        with atomic_file(index_path) as handle:
            np.savez(handle, keys=np.asarray(keys)[order].astype(np.int64),
                     document_sentences=docs.document_sentences[order].astype(np.int32),
                     sentence_lengths=sentences.astype(np.int32))

    def load_index(self, chunk: int) -> dict[str, np.ndarray]:
        """The chunk's index arrays: keys, document_sentences, sentence_lengths."""
        with np.load(self._paths(chunk)[1]) as data:
            return {name: data[name] for name in data.files}

    def summary(self, chunk: int) -> dict[int, tuple[int, int]]:
        """{key: (documents, tokens)} of a chunk."""
        index = self.load_index(chunk)
        owner = np.repeat(np.arange(len(index["keys"])), index["document_sentences"])
        doc_tokens = np.bincount(owner, weights=index["sentence_lengths"], minlength=len(index["keys"]))
        keys, inverse, docs = np.unique(index["keys"], return_inverse=True, return_counts=True)
        tokens = np.bincount(inverse, weights=doc_tokens, minlength=len(keys))
        return {int(k): (int(d), int(t)) for k, d, t in zip(keys, docs, tokens)}

    def read_key(self, chunk: int, key: int) -> TokenizedDocuments:
        """The documents of one destination key in a chunk, in corpus order."""
        index = self.load_index(chunk)
        lo, hi = np.searchsorted(index["keys"], [key, key + 1])
        doc_sents = index["document_sentences"]
        s_lo, s_hi = int(doc_sents[:lo].sum()), int(doc_sents[:hi].sum())
        sent_lens = index["sentence_lengths"]
        t_lo = int(sent_lens[:s_lo].sum())
        count = int(sent_lens[s_lo:s_hi].sum())
        tokens = np.fromfile(self._paths(chunk)[0], dtype=self.dtype, count=count, offset=t_lo * self.dtype.itemsize)
        return TokenizedDocuments(tokens.astype(np.int32), sent_lens[s_lo:s_hi].copy(), doc_sents[lo:hi].copy())


def concatenate(parts: Sequence[TokenizedDocuments]) -> TokenizedDocuments:
    """Documents of several parts, one after the other."""
    if not parts:
        empty = np.zeros(0, dtype=np.int32)
        return TokenizedDocuments(empty, empty.copy(), empty.copy())
    return TokenizedDocuments(
        np.concatenate([p.tokens for p in parts]).astype(np.int32),
        np.concatenate([p.sentence_lengths for p in parts]).astype(np.int32),
        np.concatenate([p.document_sentences for p in parts]).astype(np.int32),
    )


def tokenize_chunk(folder: str, token_dtype: str, tokenizer_json: str, unk_token_id: Optional[int], chunk: int,
                   documents: list, keys: np.ndarray) -> tuple[int, int, int, int]:
    """Worker task: tokenize one chunk of documents and store it.

    Returns (chunk, documents, tokens, [UNK] tokens).
    """
    docs = tokenize_documents(tokenizer_json, documents)
    ChunkStore(folder, token_dtype).write(chunk, docs, keys)
    unknown = int((docs.tokens == unk_token_id).sum()) if unk_token_id is not None else 0
    return chunk, len(documents), docs.num_tokens, unknown
