"""The tokenizer as prepare_dataset.py uses it: no truncation, lower-casing, sentences per document."""

from __future__ import annotations

import numpy as np
import pytest

from pretraining.data.tokenization import load_tokenizer, rust_tokenizer, tokenize_documents


@pytest.fixture(scope="module")
def info():
    return load_tokenizer(None)


def test_packaged_tokenizer_info(info, bert_tokenizer):
    assert info.vocab_size == len(bert_tokenizer) == 30522 and info.do_lower_case
    assert (info.cls_token_id, info.sep_token_id, info.pad_token_id, info.mask_token_id) == (101, 102, 0, 103)
    assert set(info.special_token_ids) == set(bert_tokenizer.all_special_ids)
    assert info.token_dtype == np.uint16


def test_long_documents_are_not_truncated(info, bert_tokenizer):
    # the packaged tokenizer.json truncates to 128 tokens; preparation must not
    text = " ".join(f"Sentence number {i} is about the history of Paris." for i in range(100))
    docs = tokenize_documents(info.json, [(text, False), ("", False), ("Short one.", False)])
    expected = bert_tokenizer([text, "", "Short one."], add_special_tokens=False)["input_ids"]
    assert docs.num_tokens == sum(map(len, expected)) > 1000
    np.testing.assert_array_equal(docs.tokens, np.concatenate([np.asarray(e) for e in expected]))
    np.testing.assert_array_equal(docs.document_sentences, [100, 0, 1])
    assert docs.sentence_lengths.sum() == docs.num_tokens and docs.sentence_lengths.min() > 0


def test_do_lower_case_overrides_the_tokenizer(info):
    cased = load_tokenizer(None, do_lower_case=False)
    assert not cased.do_lower_case and cased.sha256 != info.sha256
    upper = rust_tokenizer(cased.json).encode("Paris", add_special_tokens=False).ids
    lower = rust_tokenizer(info.json).encode("Paris", add_special_tokens=False).ids
    assert lower == rust_tokenizer(info.json).encode("paris", add_special_tokens=False).ids
    assert upper != lower
    assert load_tokenizer(None, do_lower_case=True).sha256 == info.sha256
