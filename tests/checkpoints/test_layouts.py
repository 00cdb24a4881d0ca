"""Checkpoints that go everywhere: stock transformers classes load every export with no custom code,
academic-budget-bert's checkpoint folders load here (and ours convert to theirs), and a checkpoint
whose encoder does not fully load is one clear error."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from pretraining.finetune import glue
from pretraining.checkpoints.layouts import check_loading
from pretraining.errors import UserError
from pretraining.checkpoints.export import export_pretrained
from pretraining.model.modeling import BertConfig, BertForPreTraining

pytestmark = pytest.mark.usefixtures("single_thread")
MODES = {  # (encoder_ln_mode, layernorm_embedding) -> the stock class that must load the export
    ("pre-ln", True): "RobertaPreLayerNormForMaskedLM",
    ("pre-ln", False): "XLMRobertaXLForMaskedLM",
    ("post-ln", True): "BertForMaskedLM",
}


def _tiny(tokenizer, mode, embedding_norm, **extra) -> BertForPreTraining:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, encoder_ln_mode=mode,
                        layernorm_embedding=embedding_norm, next_sentence_prediction=False, vocab_pad_multiple=8,
                        **extra)
    model = BertForPreTraining(config).eval()
    with torch.no_grad():  # not the init's zero biases and unit norms: every tensor must be mapped to be equal
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def _batch(tokenizer):
    return tokenizer(["the movie was [MASK] .", "a [MASK] and much longer sentence here , to pad the first one"],
                     padding=True, return_tensors="pt")


@pytest.mark.parametrize("mode,embedding_norm", list(MODES))
def test_exports_load_in_stock_transformers_with_equal_logits(mode, embedding_norm, bert_tokenizer, tmp_path):
    model = _tiny(bert_tokenizer, mode, embedding_norm)
    out = export_pretrained(model, bert_tokenizer, tmp_path / "pretrained", card={"run": "tiny", "optimizer": "adamw"})
    stock, info = transformers.AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert type(stock).__name__ == MODES[(mode, embedding_norm)]
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = _batch(bert_tokenizer)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ours, theirs = model(**batch).prediction_logits, stock.eval()(**batch).logits
    assert (ours - theirs)[real].abs().max() < 1e-5  # padded batch: every real position, both rows
    fill = transformers.pipeline("fill-mask", model=str(out), top_k=1)("the movie was [MASK] .")
    position = batch["input_ids"][0].tolist().index(bert_tokenizer.mask_token_id)
    assert fill[0]["token"] == int(ours[0, position].argmax())
    classifier, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(out), num_labels=2, output_loading_info=True)
    # only the new task head (and BERT's pooler, which masked-LM pretraining never trains) start fresh
    assert all(k.startswith(("classifier", "bert.pooler")) for k in info["missing_keys"]), info
    back = BertForPreTraining.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert torch.equal(back(**batch).prediction_logits[real], ours[real])
    card = (out / "README.md").read_text()
    assert "L2-H64" in card and "adamw" in card and "AutoModelForMaskedLM" in card


def test_the_model_alone_refuses_a_layout_whose_reader_is_not_registered(bert_tokenizer, tmp_path, monkeypatch):
    """The network reads other layouts only through the readers pretraining.checkpoints.layouts registers; without
    them, an export in a stock layout is refused instead of loading as a default BERT with untrained weights."""
    from pretraining.model import modeling

    out = export_pretrained(_tiny(bert_tokenizer, "pre-ln", True), bert_tokenizer, tmp_path / "pretrained")
    monkeypatch.setitem(modeling._LAYOUT_HOOKS, "configs", [])
    monkeypatch.setitem(modeling._LAYOUT_HOOKS, "models", [])
    with pytest.raises(UserError, match=r"roberta-prelayernorm checkpoint.*import pretraining.checkpoints.layouts"):
        BertForPreTraining.from_pretrained(str(out))


@pytest.mark.slow
def test_fine_tuned_pre_ln_output_loads_in_stock_transformers(bert_tokenizer, tmp_path):
    from run_glue import main

    pretrained = export_pretrained(_tiny(bert_tokenizer, "pre-ln", False), bert_tokenizer, tmp_path / "pretrained")
    out = tmp_path / "finetuned"
    main([str(a) for a in ("--model_name_or_path", pretrained, "--task_name", "rotten_tomatoes", "--output_dir", out,
                           "--do_train", "--max_train_samples", 32, "--per_device_train_batch_size", 16,
                           "--num_train_epochs", 1, "--max_seq_length", 32, "--save_strategy", "no",
                           "--report_to", "none", "--disable_tqdm", "true", "--finetune_checkpoint_at_end", "false")])
    stock, info = transformers.AutoModelForSequenceClassification.from_pretrained(str(out), output_loading_info=True)
    assert type(stock).__name__ == "XLMRobertaXLForSequenceClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ours, missing = glue.load_model_for_task(str(out), 2, "single_label_classification")
    assert not missing
    batch = _batch(bert_tokenizer)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(**batch).logits, stock.eval()(**batch).logits, atol=1e-5)
    assert stock.config.id2label == {0: "rotten", 1: "fresh"}


# --- academic-budget-bert -----------------------------------------------------------------------------------

def _academic_checkpoint(folder, mode, fused, hidden=32, layers=2, vocab=40, ffn=64, positions=16):
    """A checkpoint folder in academic-budget-bert's layout, its key names written out here as their
    pretraining/model/modeling.py names them (not derived from this package's converter)."""
    dense = "dense_act" if fused else "dense_act.dense"  # LinearActivation vs RegularLinearActivation
    g = torch.Generator().manual_seed(1)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    state = {"bert.embeddings.word_embeddings.weight": t(vocab, hidden),
             "bert.embeddings.position_embeddings.weight": t(positions, hidden),
             "bert.embeddings.token_type_embeddings.weight": t(2, hidden),
             "bert.encoder.FinalLayerNorm.weight": 1 + t(hidden), "bert.encoder.FinalLayerNorm.bias": t(hidden),
             f"bert.pooler.{dense}.weight": t(hidden, hidden), f"bert.pooler.{dense}.bias": t(hidden),
             f"cls.predictions.transform.{dense}.weight": t(hidden, hidden),
             f"cls.predictions.transform.{dense}.bias": t(hidden),
             "cls.predictions.transform.LayerNorm.weight": 1 + t(hidden),
             "cls.predictions.transform.LayerNorm.bias": t(hidden), "cls.predictions.bias": t(vocab)}
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            state.update({f"{p}attention.self.{name}.weight": t(hidden, hidden), f"{p}attention.self.{name}.bias": t(hidden)})
        state.update({f"{p}attention.output.dense.weight": t(hidden, hidden), f"{p}attention.output.dense.bias": t(hidden),
                      f"{p}PreAttentionLayerNorm.weight": 1 + t(hidden), f"{p}PreAttentionLayerNorm.bias": t(hidden),
                      f"{p}PostAttentionLayerNorm.weight": 1 + t(hidden), f"{p}PostAttentionLayerNorm.bias": t(hidden),
                      f"{p}intermediate.{dense}.weight": t(ffn, hidden), f"{p}intermediate.{dense}.bias": t(ffn),
                      f"{p}output.dense.weight": t(hidden, ffn), f"{p}output.dense.bias": t(hidden)})
    config = {"model_type": "bert", "architectures": ["BertLMHeadModel"], "vocab_size": vocab, "hidden_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": ffn, "hidden_act": "gelu",
              "max_position_embeddings": positions, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "useLN": True,
              "encoder_ln_mode": mode, "fused_linear_layer": fused, "sparse_mask_prediction": True,
              "layer_norm_type": "apex", "layernorm_embedding": False, "pad_token_id": 0}
    folder.mkdir(parents=True)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "args.json").write_text(json.dumps({"model_type": "bert-mlm", "lr": 1e-3}))
    return folder, state


@pytest.mark.parametrize("mode", ["pre-ln", "post-ln"])
@pytest.mark.parametrize("fused", [True, False])
def test_academic_budget_bert_checkpoints_load_every_encoder_tensor(mode, fused, tmp_path):
    folder, theirs = _academic_checkpoint(tmp_path / "epoch3_step1000", mode, fused)
    model, info = BertForPreTraining.from_pretrained(str(folder), output_loading_info=True)
    assert model.config.encoder_ln_mode == mode and not model.config.layernorm_embedding
    assert not info["unexpected_keys"]
    assert set(info["missing_keys"]) <= {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    ours = model.state_dict()
    dense = "dense_act" if fused else "dense_act.dense"
    post = {"PreAttentionLayerNorm": "attention.output.LayerNorm", "PostAttentionLayerNorm": "output.LayerNorm"}
    pre = {"PreAttentionLayerNorm": "PreAttentionLayerNorm", "PostAttentionLayerNorm": "PreFeedForwardLayerNorm"}
    for key, tensor in theirs.items():
        name = key.replace(f".{dense}.", ".dense.")
        for old, new in (pre if mode == "pre-ln" else post).items():
            name = name.replace(f".{old}.", f".{new}.")
        if mode == "post-ln" and "FinalLayerNorm" in name:
            continue  # their post-ln never applies it
        assert torch.equal(ours[name], tensor), key
    classifier, fresh = glue.load_model_for_task(str(folder), 2, "single_label_classification")
    assert fresh == ["classifier.bias", "classifier.weight"]  # every encoder tensor loaded; only the new head


def test_a_checkpoint_whose_encoder_does_not_load_is_a_clear_error(tmp_path):
    folder, theirs = _academic_checkpoint(tmp_path / "epoch1_step10", "pre-ln", True)
    del theirs["bert.encoder.layer.1.attention.self.key.weight"]
    theirs["bert.encoder.layer.1.attention.self.kee.weight"] = torch.zeros(32, 32)
    torch.save(theirs, folder / "pytorch_model.bin")
    with pytest.raises(UserError) as exc:
        glue.load_model_for_task(str(folder), 2, "single_label_classification")
    message = str(exc.value)
    assert "bert.encoder.layer.1.attention.self.key.weight" in message and "kee" in message
    with pytest.raises(UserError, match="not in it: bert.embeddings.word_embeddings.weight"):
        check_loading(["bert.embeddings.word_embeddings.weight", "classifier.weight"], [], "x")
    assert check_loading(["classifier.weight", "bert.pooler.dense.bias"], [], "x") == \
        ["bert.pooler.dense.bias", "classifier.weight"]  # sorted


@pytest.mark.parametrize("mode", ["pre-ln", "post-ln"])
def test_convert_to_academic_budget_bert_and_back(mode, bert_tokenizer, tmp_path):
    from pretraining.checkpoints.convert import main

    model = _tiny(bert_tokenizer, mode, mode == "post-ln")
    source = export_pretrained(model, bert_tokenizer, tmp_path / "run" / "pretrained")
    (tmp_path / "run" / "args.json").write_text(json.dumps({"job_name": "run", "lr": 0.001}))
    out = main.__wrapped__([str(source), str(tmp_path / "epoch0_step5"), "--to", "academic-budget-bert"])
    theirs = torch.load(out / "pytorch_model.bin", weights_only=True)
    config = json.loads((out / "config.json").read_text())
    assert config["useLN"] and config["encoder_ln_mode"] == mode and not config["fused_linear_layer"]
    assert "bert.encoder.layer.0.intermediate.dense_act.dense.weight" in theirs
    assert "bert.encoder.layer.0.PostAttentionLayerNorm.weight" in theirs
    assert json.loads((out / "args.json").read_text())["job_name"] == "run"
    back = BertForPreTraining.from_pretrained(str(out)).eval()
    batch = _batch(bert_tokenizer)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        assert torch.allclose(back(**batch).prediction_logits[real], model(**batch).prediction_logits[real], atol=1e-6)
