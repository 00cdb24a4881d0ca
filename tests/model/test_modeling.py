"""pretraining.model.modeling against transformers' BERT (same weights, same numbers) and its own contracts."""

from __future__ import annotations

import logging

import json

import pytest
import torch
import torch.nn.functional as F
import transformers

from pretraining.train.args import ModelArguments
from pretraining.errors import UserError
from pretraining.checkpoints.export import export_pretrained
from pretraining.model.modeling import (
    PRE_LN_MODEL_TYPE,
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    build_config,
)

TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def tiny(**overrides) -> BertConfig:
    """This package's config for the tiny test model."""
    return BertConfig(**{**TINY, **overrides})


def hf_config(**overrides) -> transformers.BertConfig:
    """transformers' own config with its textbook (eager softmax) attention as the reference."""
    config = transformers.BertConfig(**{**TINY, **overrides})
    config._attn_implementation = "eager"
    return config


def batch(vocab=96, batch_size=4, seq=12, seed=0):
    """Random ids with padded rows, segments, MLM labels (-100 = not predicted) and NSP labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch_size, seq), generator=g)
    mask = torch.ones(batch_size, seq, dtype=torch.long)
    for row, length in enumerate([seq, seq - 3, 5, 2][:batch_size]):
        mask[row, length:] = 0
        ids[row, length:] = 0
    segments = (torch.arange(seq) >= seq // 2).long().expand(batch_size, seq) * mask
    labels = torch.full_like(ids, -100)
    chosen = (torch.rand(batch_size, seq, generator=g) < 0.3) & mask.bool()
    chosen[:, 1] = True
    labels[chosen] = torch.randint(0, vocab, (int(chosen.sum()),), generator=g)
    nsp = torch.randint(0, 2, (batch_size,), generator=g)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=segments), labels, nsp


@pytest.mark.parametrize("sparse", [False, True])
def test_post_ln_pretraining_matches_transformers(sparse):
    torch.manual_seed(0)
    reference = transformers.BertForPreTraining(hf_config()).eval()
    model = BertForPreTraining(tiny(sparse_mask_prediction=sparse)).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    inputs, labels, nsp = batch()
    with torch.no_grad():
        expected = reference(**inputs, labels=labels, next_sentence_label=nsp)
        got = model(**inputs, labels=labels, next_sentence_label=nsp)
    want_logits = expected.prediction_logits[labels != -100] if sparse else expected.prediction_logits
    assert got.prediction_logits.shape == want_logits.shape
    torch.testing.assert_close(got.prediction_logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.seq_relationship_logits, expected.seq_relationship_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)
    mlm = F.cross_entropy(expected.prediction_logits.reshape(-1, 96), labels.reshape(-1))
    torch.testing.assert_close(got.masked_lm_loss, mlm, atol=1e-5, rtol=1e-5)


def test_dense_logits_without_labels_even_when_sparse():
    model = BertForPreTraining(tiny(sparse_mask_prediction=True)).eval()
    inputs, _, _ = batch()
    assert model(**inputs).prediction_logits.shape == (4, 12, 96)


def test_sequence_classification_matches_transformers():
    torch.manual_seed(1)
    inputs, _, _ = batch()
    for num_labels, labels in [(3, torch.tensor([0, 2, 1, 2])), (1, torch.tensor([0.5, -1.0, 2.0, 0.0]))]:
        reference = transformers.BertForSequenceClassification(hf_config(num_labels=num_labels)).eval()
        model = BertForSequenceClassification(tiny(num_labels=num_labels)).eval()
        model.load_state_dict(reference.state_dict(), strict=True)
        with torch.no_grad():
            expected, got = reference(**inputs, labels=labels), model(**inputs, labels=labels)
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_real_minilm_hidden_states_match_transformers(minilm_dir, bert_tokenizer):
    texts = ["The cat sat on the mat.", "A much longer sentence about budget BERT pretraining on one GPU."]
    inputs = bert_tokenizer(texts, padding=True, return_tensors="pt")
    reference = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    model = BertModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        expected, got = reference(**inputs), model(**inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)


def test_classifier_from_bare_minilm_checkpoint(minilm_dir, bert_tokenizer):
    model, info = BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert not info["unexpected_keys"]
    reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    inputs = bert_tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model.eval().bert(**inputs).pooler_output, reference(**inputs).pooler_output,
                                   atol=1e-5, rtol=1e-5)
        out = model(**inputs, labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)


def test_pretraining_model_from_bare_minilm_checkpoint(minilm_dir, bert_tokenizer):
    """Continued pretraining from a Hub BertModel checkpoint (no MLM head): nothing left on the meta device."""
    model = BertForPreTraining.from_pretrained(str(minilm_dir))
    assert [n for n, p in model.named_parameters() if p.device.type == "meta"] == []
    head = model.cls.predictions
    assert head.decoder.bias is head.bias and head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert torch.count_nonzero(head.bias) == 0
    reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    inputs = bert_tokenizer(["the cat sat on the mat.", "budget bert"], padding=True, return_tensors="pt")
    labels = torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], -100)
    with torch.no_grad():
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(model.eval().bert(**inputs).last_hidden_state[real],
                                   reference(**inputs).last_hidden_state[real], atol=1e-5, rtol=1e-5)
    out = model.train()(**inputs, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and head.bias.grad is not None and torch.isfinite(head.bias.grad).all()


def test_sparse_and_dense_heads_give_the_same_loss_and_gradients():
    torch.manual_seed(2)
    dense = BertForPreTraining(tiny(next_sentence_prediction=False, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0))
    sparse = BertForPreTraining(tiny(next_sentence_prediction=False, sparse_mask_prediction=True,
                                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    sparse.load_state_dict(dense.state_dict())
    inputs, labels, _ = batch()
    a, b = dense(**inputs, labels=labels), sparse(**inputs, labels=labels)
    assert b.prediction_logits.shape == (int((labels != -100).sum()), 96)
    torch.testing.assert_close(b.loss, a.loss)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_padded_vocabulary_is_never_predicted():
    torch.manual_seed(3)
    plain = BertForPreTraining(tiny(vocab_size=90)).eval()
    padded = BertForPreTraining(tiny(vocab_size=90, vocab_pad_multiple=64)).eval()
    assert padded.bert.embeddings.word_embeddings.weight.shape[0] == 128
    state = {k: (v[:90] if v.shape[0] == 90 else v) for k, v in plain.state_dict().items()}
    with torch.no_grad():
        for key, tensor in padded.state_dict().items():
            tensor[: state[key].shape[0]].copy_(state[key])
        padded.cls.predictions.bias[90:] = 1e4  # padding rows that would win every argmax if they were scored
    inputs, labels, nsp = batch(vocab=90)
    with torch.no_grad():
        a = plain(**inputs, labels=labels, next_sentence_label=nsp)
        b = padded(**inputs, labels=labels, next_sentence_label=nsp)
    assert b.prediction_logits.shape[-1] == 90
    torch.testing.assert_close(b.prediction_logits, a.prediction_logits)
    torch.testing.assert_close(b.loss, a.loss)


def _pre_ln_reference(model: BertModel, ids, mask):
    """Pre-LN BERT written out with torch primitives, reading the model's weights by name."""
    p = dict(model.named_parameters())
    cfg = model.config
    ln = lambda x, name: F.layer_norm(x, (cfg.hidden_size,), p[f"{name}.weight"], p[f"{name}.bias"], cfg.layer_norm_eps)
    lin = lambda x, name: x @ p[f"{name}.weight"].T + p[f"{name}.bias"]
    x = p["embeddings.word_embeddings.weight"][ids] + p["embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = ln(x + p["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    bias = (1.0 - mask[:, None, None, :].float()) * -1e9
    for i in range(cfg.num_hidden_layers):
        pre = f"encoder.layer.{i}"
        h = ln(x, f"{pre}.PreAttentionLayerNorm")
        q, k, v = (lin(h, f"{pre}.attention.self.{n}").view(*h.shape[:2], heads, d).transpose(1, 2)
                   for n in ("query", "key", "value"))
        attn = torch.softmax(q @ k.transpose(-1, -2) / d**0.5 + bias, dim=-1) @ v
        x = x + lin(attn.transpose(1, 2).reshape(h.shape), f"{pre}.attention.output.dense")
        h = F.gelu(lin(ln(x, f"{pre}.PreFeedForwardLayerNorm"), f"{pre}.intermediate.dense"))
        x = x + lin(h, f"{pre}.output.dense")
    return ln(x, "encoder.FinalLayerNorm")


def test_pre_ln_encoder_matches_the_written_out_formula():
    torch.manual_seed(4)
    model = BertModel(tiny(encoder_ln_mode="pre-ln")).eval()
    names = {n for n, _ in model.named_parameters()}
    assert "encoder.layer.0.attention.output.LayerNorm.weight" not in names
    assert "encoder.FinalLayerNorm.weight" in names
    inputs, _, _ = batch()
    with torch.no_grad():
        got = model(inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        want = _pre_ln_reference(model, inputs["input_ids"], inputs["attention_mask"])
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    bare = BertModel(tiny(encoder_ln_mode="pre-ln", layernorm_embedding=False))
    assert not any(n.startswith("embeddings.LayerNorm") for n, _ in bare.named_parameters())


def test_rms_norm_and_apex_alias(caplog):
    model = BertForPreTraining(tiny(layer_norm_type="rms_norm", encoder_ln_mode="pre-ln"))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 * 2 + 1 + 1 + 1  # two per layer, final, embeddings, MLM transform
    inputs, labels, _ = batch()
    assert torch.isfinite(model(**inputs, labels=labels).loss)
    with caplog.at_level(logging.WARNING, logger="pretraining.model.modeling"):
        config = tiny(layer_norm_type="apex")
    assert config.layer_norm_type == "pytorch"
    assert sum("apex" in r.getMessage() for r in caplog.records) == 1


def test_invalid_config_names_the_valid_choices():
    with pytest.raises(UserError, match="encoder_ln_mode 'mid-ln' is not one of: pre-ln, post-ln"):
        tiny(encoder_ln_mode="mid-ln")
    with pytest.raises(UserError, match="hidden_act 'nope'"):
        BertModel(tiny(hidden_act="nope"))


def test_build_config_from_flags():
    args = ModelArguments(model_type="bert-mlm-nsp", hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                          intermediate_size=128, vocab_size=1000, vocab_pad_multiple=64, layer_norm_type="apex")
    config = build_config(args, vocab_size=30522)
    assert config.vocab_size == 30522 and config.padded_vocab_size == 30528
    assert config.next_sentence_prediction and config.encoder_ln_mode == "pre-ln" and config.sparse_mask_prediction
    assert (config.hidden_size, config.num_hidden_layers, config.layer_norm_type) == (64, 3, "pytorch")
    assert not build_config(ModelArguments(model_type="bert-mlm"), vocab_size=96).next_sentence_prediction
    with pytest.raises(UserError, match="vocabulary size is unknown: pass --vocab_size"):
        build_config(ModelArguments(model_type="bert-mlm"))  # no flag and no tokenizer's size
    assert isinstance(config, transformers.BertConfig)


def test_post_ln_export_loads_in_transformers(tmp_path, bert_tokenizer):
    torch.manual_seed(5)
    config = tiny(vocab_size=bert_tokenizer.vocab_size, vocab_pad_multiple=64,
                        next_sentence_prediction=False, sparse_mask_prediction=True)
    model = BertForPreTraining(config)
    out = export_pretrained(model, bert_tokenizer, tmp_path / "export")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {f.name for f in out.iterdir()}
    reference, info = transformers.BertForPreTraining.from_pretrained(str(out), output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    # a masked-LM-only model has no pooler or NSP head: transformers' says they are fresh, nothing else is
    assert set(info["missing_keys"]) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                         "cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    masked_lm, info = transformers.BertForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info
    reloaded = BertForPreTraining.from_pretrained(str(out)).eval()
    inputs = transformers.BertTokenizerFast.from_pretrained(str(out))(["hello world", "a b c d"], padding=True,
                                                                       return_tensors="pt")
    labels = torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], -100)
    with torch.no_grad():
        expected = reference.eval()(**inputs).prediction_logits[labels != -100]
        got = model.eval()(**inputs, labels=labels).prediction_logits
        again = reloaded(**inputs, labels=labels).prediction_logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)


def test_pre_ln_save_pretrained_reloads_here_and_is_refused_by_transformers_bert(tmp_path):
    """Checkpoints keep this package's names (model type bert_pre_ln): only its classes load them, and
    transformers' refuse them by name instead of running a post-ln network with pre-ln weights
    (the exports for transformers are tests/checkpoints/test_layouts.py's)."""
    torch.manual_seed(6)
    model = BertForPreTraining(tiny(encoder_ln_mode="pre-ln", vocab_pad_multiple=8)).eval()
    out = tmp_path / "pre"
    model.save_pretrained(str(out))
    assert f'"model_type": "{PRE_LN_MODEL_TYPE}"' in (out / "config.json").read_text()
    reloaded = BertForPreTraining.from_pretrained(str(out)).eval()
    assert reloaded.config.encoder_ln_mode == "pre-ln"
    inputs, labels, nsp = batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs, labels=labels, next_sentence_label=nsp).loss,
                                   model(**inputs, labels=labels, next_sentence_label=nsp).loss)
    classifier = BertForSequenceClassification.from_pretrained(str(out), num_labels=2)
    assert classifier.config.encoder_ln_mode == "pre-ln"
    with pytest.raises(ValueError, match=PRE_LN_MODEL_TYPE):
        transformers.AutoModel.from_pretrained(str(out))


def test_pre_ln_export_reloads_here_with_the_same_logits(tmp_path):
    torch.manual_seed(6)
    model = BertForPreTraining(tiny(encoder_ln_mode="pre-ln", vocab_pad_multiple=8)).eval()
    out = export_pretrained(model, None, tmp_path / "pre")
    assert json.loads((out / "config.json").read_text())["model_type"] == "roberta-prelayernorm"
    reloaded = BertForPreTraining.from_pretrained(str(out)).eval()
    assert reloaded.config.encoder_ln_mode == "pre-ln" and reloaded.config.vocab_pad_multiple == 1
    inputs, labels, nsp = batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).prediction_logits, model(**inputs).prediction_logits[..., :96])


def test_save_pretrained_round_trip_keeps_padding_and_ties(tmp_path):
    model = BertForPreTraining(tiny(vocab_size=90, vocab_pad_multiple=64))
    model.save_pretrained(str(tmp_path))
    again = BertForPreTraining.from_pretrained(str(tmp_path))
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
