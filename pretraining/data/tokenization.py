"""The fast WordPiece tokenizer, and the per-chunk work: clean, split, tokenize.

The main process loads the tokenizer once with transformers (Hub name or local
folder), applies ``--do_lower_case``, switches off the truncation/padding that some
``tokenizer.json`` files carry, and hands worker processes the Rust tokenizer's JSON.
Workers need only ``tokenizers`` and numpy.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pretraining.errors import UserError
from pretraining.data.text import clean_text, split_sentences
from pretraining.data.wikitext import strip_wikitext

#: the [UNK] share is judged once this many tokens were tokenized (and at the end, for smaller corpora)
UNK_CHECK_MIN_TOKENS = 20_000


@dataclass(frozen=True)
class TokenizerInfo:
    """What the pipeline needs to know about the tokenizer (picklable)."""

    name: str
    json: str  # the Rust tokenizer, serialised (no truncation, no padding)
    vocab_size: int
    do_lower_case: bool
    cls_token_id: int
    sep_token_id: int
    pad_token_id: int
    mask_token_id: int
    special_token_ids: tuple  # never masked, never used as a random replacement
    unk_token_id: Optional[int] = None

    @property
    def sha256(self) -> str:
        """Fingerprint of the exact tokenizer (vocab, normaliser, ...)."""
        return hashlib.sha256(self.json.encode()).hexdigest()

    @property
    def token_dtype(self):
        return np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def _set_lowercase(normalizer: Optional[dict], lowercase: bool) -> Optional[dict]:
    if normalizer is None:
        return {"type": "Lowercase"} if lowercase else None
    if normalizer.get("type") == "BertNormalizer":
        return {**normalizer, "lowercase": lowercase}
    if normalizer.get("type") == "Lowercase":
        return normalizer if lowercase else None
    if normalizer.get("type") == "Sequence":
        inner = [n for n in normalizer["normalizers"] if n.get("type") != "Lowercase"]
        return {"type": "Sequence", "normalizers": inner + ([{"type": "Lowercase"}] if lowercase else [])}
    return {"type": "Sequence", "normalizers": [normalizer, {"type": "Lowercase"}]} if lowercase else normalizer


def _lowercases(normalizer: Optional[dict]) -> bool:
    if normalizer is None:
        return False
    if normalizer.get("type") == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    if normalizer.get("type") == "Sequence":
        return any(_lowercases(n) for n in normalizer["normalizers"])
    return normalizer.get("type") == "Lowercase"


#: files of which one marks a folder that holds a saved tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def has_tokenizer_files(folder) -> bool:
    """True when ``folder`` holds a saved tokenizer (one of :data:`TOKENIZER_FILES`)."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def open_tokenizer(source: str, hint: str, cache_dir: Optional[str] = None, failed: str = "could not be loaded"):
    """transformers' fast tokenizer from a folder or Hub name, never running remote code; a UserError saying
    ``tokenizer SOURCE <failed> (<cause>); <hint>`` when it cannot be loaded. The one place tokenizers load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, cache_dir=cache_dir, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"tokenizer {source!r} {failed} ({cause}); {hint}") from None


def load_tokenizer(name: Optional[str], do_lower_case: Optional[bool] = None, cache_dir: Optional[str] = None) -> TokenizerInfo:
    """Load a fast tokenizer (Hub name or local folder; None = the packaged bert-base-uncased).

    ``do_lower_case`` None keeps the tokenizer's own setting; True/False forces it.
    Raises a UserError when the tokenizer cannot be found, is not a fast tokenizer, or
    lacks the [CLS]/[SEP]/[PAD]/[MASK] tokens BERT pretraining needs.
    """
    if name is None:
        from pretraining.resources import default_tokenizer_dir

        name = str(default_tokenizer_dir())
    local = Path(name).expanduser()
    source = str(local.resolve()) if local.exists() else name
    tokenizer = open_tokenizer(source, "pass --tokenizer_name a folder with tokenizer.json or vocab.txt, or a Hub "
                                       "name such as bert-base-uncased (needs network or a cached copy)",
                               cache_dir=cache_dir, failed="not found")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"tokenizer {name!r} has no fast (Rust) version; use a WordPiece tokenizer with a tokenizer.json")
    ids = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("cls", "sep", "pad", "mask")}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise UserError(f"tokenizer {name!r} has no {'/'.join(missing)} token; BERT pretraining needs [CLS], [SEP], [PAD] and [MASK]")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["truncation"] = None
    spec["padding"] = None
    if do_lower_case is not None:
        spec["normalizer"] = _set_lowercase(spec.get("normalizer"), do_lower_case)
    return TokenizerInfo(
        name=source,
        json=json.dumps(spec, ensure_ascii=False),
        vocab_size=len(tokenizer),
        do_lower_case=_lowercases(spec.get("normalizer")),
        cls_token_id=ids["cls"],
        sep_token_id=ids["sep"],
        pad_token_id=ids["pad"],
        mask_token_id=ids["mask"],
        special_token_ids=tuple(sorted(set(tokenizer.all_special_ids) | set(ids.values()))),
        unk_token_id=tokenizer.unk_token_id,
    )


@functools.lru_cache(maxsize=2)
def rust_tokenizer(tokenizer_json: str):
    """The ``tokenizers.Tokenizer`` for a serialised spec (cached per process)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def encode_batch(tokenizer, texts: list[str]) -> list:
    """``encode_batch`` without special tokens; the offset-free fast variant where available."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return encode(texts, add_special_tokens=False)


@dataclass
class TokenizedDocuments:
    """Documents as sentences of token ids, flattened.

    ``tokens`` holds every sentence back to back; ``sentence_lengths[j]`` is the
    length of sentence j (never 0); ``document_sentences[i]`` is how many sentences
    document i has (0 for a document with no tokens).
    """

    tokens: np.ndarray
    sentence_lengths: np.ndarray
    document_sentences: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)


def document_sentences(text: str, is_wikitext: bool) -> list[str]:
    """The sentences of one raw document (wiki markup stripped first when present)."""
    if is_wikitext:
        text = strip_wikitext(text)
    return split_sentences(clean_text(text))


def tokenize_documents(tokenizer_json: str, documents: Sequence, dtype=np.int32) -> TokenizedDocuments:
    """Clean, sentence-split and tokenize ``documents`` ((text, is_wikitext) pairs).

    Sentences are tokenized in one batch without special tokens; a sentence that
    yields no token is dropped.
    """
    tokenizer = rust_tokenizer(tokenizer_json)
    per_document = [document_sentences(text, wiki) for text, wiki in documents]
    sentences = list(itertools.chain.from_iterable(per_document))
    encodings = encode_batch(tokenizer, sentences) if sentences else []
    ids = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(per_document)), [len(s) for s in per_document])
    keep = lengths > 0
    return TokenizedDocuments(
        tokens=tokens,
        sentence_lengths=lengths[keep].astype(np.int32),
        document_sentences=np.bincount(owner[keep], minlength=len(per_document)).astype(np.int32),
    )


class UnknownTokens:
    """The [UNK] share of the tokenized corpus: a tokenizer that does not fit the text (a vocabulary
    that did not load, another language or script) is refused after the first chunks, not after hours."""

    def __init__(self, max_fraction: float, tokenizer_name: str, min_tokens: int = UNK_CHECK_MIN_TOKENS):
        self.max_fraction, self.tokenizer_name, self.min_tokens = max_fraction, tokenizer_name, min_tokens
        self.tokens = self.unknown = 0

    def add(self, tokens: int, unknown: int) -> None:
        self.tokens += tokens
        self.unknown += unknown
        self.check(final=False)

    def check(self, final: bool) -> None:
        """UserError when the share is above the limit (before ``final``: once enough tokens were seen)."""
        if not self.tokens or (not final and self.tokens < self.min_tokens):
            return
        share = self.unknown / self.tokens
        if share > self.max_fraction:
            raise UserError(
                f"the tokenizer {self.tokenizer_name} maps {share:.1%} of the corpus ({self.unknown:,} of "
                f"{self.tokens:,} tokens so far) to [UNK], above --max_unk_fraction {self.max_fraction:g}: its "
                "vocabulary does not fit this text (did the vocabulary load? is the text in another language or "
                "script, or cased for an uncased vocabulary?). Use a tokenizer made for this corpus, e.g. "
                "--train_tokenizer 8192, or raise --max_unk_fraction if this is expected")
