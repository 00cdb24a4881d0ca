"""``prepare_dataset.py --train_tokenizer VOCAB_SIZE``: a WordPiece vocabulary trained on the corpus.

Cramming-style: a small model learns faster with a vocabulary of the words its corpus
actually has (bert-base-uncased's 30,522 entries spend most of a small model's
parameters and most of its masked-LM head's work on tokens the corpus never shows).
The tokenizer is BERT's (BertNormalizer, BertPreTokenizer, WordPiece with ``##``
continuations, [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4), its vocabulary learned by
:func:`learn_vocabulary` (the merges of ``tokenizers``' trainer, made deterministic) from the
cleaned text of the *train* documents only (the test
documents stay unseen), and saved as a ``BertTokenizerFast`` folder ``tokenizer/`` in
the dataset folder, which the manifest names: run_pretraining.py uses it and exports it
with the model, so run_glue.py fine-tunes with it too.

Training is deterministic (same corpus and flags, same vocabulary and bytes), and its
settings are kept in ``tokenizer/training.json``: a rerun reuses the folder when they
match, and refuses (unless ``--overwrite``) a folder trained with other settings.
"""

from __future__ import annotations

import heapq
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from pretraining.atomic import swap_folder, write_guard
from pretraining.errors import UserError

TOKENIZER_DIR = "tokenizer"
TRAINING_FILE = "training.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PREFIX = "##"
MIN_FREQUENCY = 2
MIN_VOCAB_SIZE = 64


def _bert_pipeline(lowercase: bool):
    """BERT's normaliser and pre-tokenizer (as bert-base-uncased, or cased)."""
    from tokenizers import normalizers, pre_tokenizers

    return (normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase),
            pre_tokenizers.BertPreTokenizer())


def count_words(texts: Iterable[str], lowercase: bool = True) -> Counter:
    """Occurrences of each pre-tokenized word (BERT's normalisation and pre-tokenization) in ``texts``."""
    normalizer, pre_tokenizer = _bert_pipeline(lowercase)
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def learn_vocabulary(word_counts: dict[str, int], vocab_size: int, min_frequency: int = MIN_FREQUENCY) -> list[str]:
    """WordPiece vocabulary by byte-pair-style merges, as the ``tokenizers`` trainer builds it, but deterministic.

    Each word starts as its first character and ``##``-continuations of the others; the most
    frequent adjacent pair (occurrences weighted by word count) is merged until the vocabulary
    (special tokens, the sorted alphabet, then the merges in order) has ``vocab_size`` entries
    or no pair occurs ``min_frequency`` times. Ties go to the lexicographically smallest pair,
    and nothing depends on hash order: the same counts always give the same list.
    (``tokenizers``' own trainer assigns ids in hash-map order, so its vocabularies differ
    from run to run: huggingface/tokenizers#1794.)
    """
    words = sorted(word_counts.items())
    alphabet = sorted({word[0] for word, _ in words} | {PREFIX + c for word, _ in words for c in word[1:]})
    vocab = [*SPECIAL_TOKENS, *(t for t in alphabet if t not in SPECIAL_TOKENS)]
    known = set(vocab)
    names: list[str] = []
    ids: dict[str, int] = {}

    def symbol(name: str) -> int:
        if name not in ids:
            ids[name] = len(names)
            names.append(name)
        return ids[name]

    sequences = [[symbol(word[0])] + [symbol(PREFIX + c) for c in word[1:]] for word, _ in words]
    weights = [count for _, count in words]
    pairs: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for index, sequence in enumerate(sequences):
        for pair in zip(sequence, sequence[1:]):
            pairs[pair] += weights[index]
            where[pair].add(index)
    heap = [(-count, names[a], names[b], a, b) for (a, b), count in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        negative, _, _, a, b = heapq.heappop(heap)
        if pairs.get((a, b), 0) != -negative:
            continue  # a stale entry: this pair's count changed since it was pushed
        if -negative < min_frequency:
            break
        right = names[b][len(PREFIX):] if names[b].startswith(PREFIX) else names[b]
        merged = symbol(names[a] + right)
        if names[merged] not in known:
            known.add(names[merged])
            vocab.append(names[merged])
        changed: set[tuple[int, int]] = set()
        for index in sorted(where.pop((a, b), ())):
            sequence, weight = sequences[index], weights[index]
            for pair in zip(sequence, sequence[1:]):
                pairs[pair] -= weight
                changed.add(pair)
            out, i = [], 0
            while i < len(sequence):
                if i + 1 < len(sequence) and sequence[i] == a and sequence[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(sequence[i])
                    i += 1
            sequences[index] = out
            for pair in zip(out, out[1:]):
                pairs[pair] += weight
                where[pair].add(index)
                changed.add(pair)
        pairs.pop((a, b), None)
        for pair in sorted(changed):
            count = pairs.get(pair, 0)
            if count <= 0:
                pairs.pop(pair, None)
                where.pop(pair, None)
            else:
                heapq.heappush(heap, (-count, names[pair[0]], names[pair[1]], pair[0], pair[1]))
    return vocab[:vocab_size]


def wordpiece_tokenizer(vocab: list[str], lowercase: bool = True):
    """A ``BertTokenizerFast`` with BERT's pipeline over ``vocab`` (ids in list order; [PAD] [UNK] [CLS] [SEP] [MASK] first)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]",
                                           max_input_chars_per_word=100))
    tokenizer.normalizer, tokenizer.pre_tokenizer = _bert_pipeline(lowercase)
    tokenizer.decoder = decoders.WordPiece(prefix=PREFIX)
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=lowercase, model_max_length=512,
                             unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                             mask_token="[MASK]")


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True):
    """A BERT WordPiece tokenizer (``BertTokenizerFast``) of at most ``vocab_size`` entries learned from ``texts``."""
    return wordpiece_tokenizer(learn_vocabulary(count_words(texts, lowercase), vocab_size), lowercase)


def training_settings(vocab_size: int, lowercase: bool, corpus: dict) -> dict:
    """What a trained tokenizer depends on (kept in ``tokenizer/training.json``)."""
    return {"vocab_size": vocab_size, "lowercase": lowercase, "min_frequency": MIN_FREQUENCY,
            "special_tokens": list(SPECIAL_TOKENS), "corpus": corpus}


def trained_tokenizer(out: Path, settings: dict, texts: Iterator[str], overwrite: bool, log) -> Path:
    """The folder of the tokenizer trained on ``texts`` with ``settings``: reused when complete, else trained.

    ``texts`` is consumed only when training is needed. A folder of other settings is a
    UserError unless ``overwrite``.
    """
    folder = Path(out) / TOKENIZER_DIR
    record = folder / TRAINING_FILE
    if record.is_file():
        if json.loads(record.read_text()) == settings:
            return folder
        if not overwrite:
            raise UserError(f"{folder} holds a tokenizer trained with other settings; use another --output_dir, or "
                            "--overwrite to replace it (and the dataset made with it)")
    log(f"training a WordPiece vocabulary of {settings['vocab_size']:,} tokens on the train documents")
    tokenizer = train_wordpiece(texts, settings["vocab_size"], settings["lowercase"])
    if len(tokenizer) <= len(SPECIAL_TOKENS):
        raise UserError(f"the corpus gave no ordinary token for the vocabulary (every word is rarer than "
                        f"{MIN_FREQUENCY} occurrences?): use more text, or a ready tokenizer (--tokenizer_name)")
    tmp = folder.with_name(f".tmp-{TOKENIZER_DIR}")
    shutil.rmtree(tmp, ignore_errors=True)
    with write_guard(folder, tmp):
        tokenizer.save_pretrained(str(tmp))
        (tmp / TRAINING_FILE).write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    swap_folder(tmp, folder, folder.with_name(f".old-{TOKENIZER_DIR}"))  # the old folder goes once the new is whole
    log(f"tokenizer: {len(tokenizer):,} tokens in {folder}")
    return folder
