"""Exports: :func:`export_pretrained` (a trained model -> a folder stock transformers loads), and the files of an export
in another layout (:mod:`pretraining.checkpoints.layouts` has the layouts and their renames): stock transformers' config and
tensors (:func:`stock_files`), the model card, and academic-budget-bert's checkpoint files (:func:`academic_files`,
``python -m pretraining.convert --to academic-budget-bert``)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from pretraining.errors import UserError
from pretraining.checkpoints.layouts import ACADEMIC_EXPORT_RULES, ACADEMIC_MARKER, rename, stock_config, stock_layout, to_stock
from pretraining.model.modeling import PRE_LN_MODEL_TYPE, VOCAB_KEY_SUFFIXES, BertPreTrainedModel, unwrap_model  # noqa: F401

#: our class -> the stock class suffix its export uses
STOCK_KINDS = {"BertForPreTraining": "ForMaskedLM", "BertForSequenceClassification": "ForSequenceClassification"}
STOCK_CLASS_NAMES = {"roberta-prelayernorm": "RobertaPreLayerNorm", "xlm-roberta-xl": "XLMRobertaXL"}


def stock_files(state: dict, config, layout: str, class_name: str, tokenizer=None) -> tuple[str, dict]:
    """(config.json text, tensors) of our model in ``layout``, exactly the keys the stock class saves."""
    import transformers

    kind = STOCK_KINDS.get(class_name)
    if kind is None:
        raise UserError(f"a {class_name} has no stock transformers layout; export a BertForPreTraining or a "
                        "BertForSequenceClassification")
    fields = {k: v for k, v in stock_config(config, layout).items() if k != "model_type"}
    if tokenizer is not None:
        fields.update(bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    hf_config = transformers.AutoConfig.for_model(layout, **fields)
    hf_config.architectures = [STOCK_CLASS_NAMES[layout] + kind]
    auto = transformers.AutoModelForMaskedLM if kind == "ForMaskedLM" else transformers.AutoModelForSequenceClassification
    with torch.device("meta"):
        stock = auto.from_config(hf_config)
    tied = stock.get_expanded_tied_weights_keys()
    expected = [key for key in stock.state_dict() if key not in tied]
    mapped = to_stock(state, config, layout)
    missing = [key for key in expected if key not in mapped]
    if missing:  # a rename table out of step with transformers' classes
        raise UserError(f"cannot export to the {layout} layout: no tensor for {', '.join(missing[:5])}")
    return hf_config.to_json_string(), {key: mapped[key] for key in expected}


def model_card(config, layout: Optional[str], details: dict) -> str:
    """README.md of an export: what the model is, how it was trained, how to load it."""
    classes = (f"`{STOCK_CLASS_NAMES[layout]}ForMaskedLM` / `{STOCK_CLASS_NAMES[layout]}ForSequenceClassification`"
               if layout else "`BertForMaskedLM` / `BertForSequenceClassification`" if not config.pre_ln
               else "`pretraining.model.modeling.BertForPreTraining` (this package's own layout)")
    rows = [("architecture", f"BERT L{config.num_hidden_layers}-H{config.hidden_size}, {config.num_attention_heads} "
                             f"heads, FFN {config.intermediate_size}, {config.encoder_ln_mode}, "
                             f"{config.hidden_act}, vocabulary {config.vocab_size:,}, "
                             f"{config.max_position_embeddings} positions"),
            ("loads as", f"{classes} (model type `{layout or ('bert' if not config.pre_ln else 'bert_pre_ln')}`)"),
            *((key, str(value)) for key, value in details.items() if value is not None)]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"""---
library_name: transformers
tags: [bert, fill-mask, budget-bert]
---

# {details.get('run', 'budget-bert model')}

A BERT pretrained from scratch by budget-bert (masked language modelling under a wall-clock budget,
after [academic-budget-bert](https://github.com/IntelLabs/academic-budget-bert)'s recipe).

| | |
|---|---|
{table}

```python
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

model = AutoModelForMaskedLM.from_pretrained("THIS_FOLDER")
tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")
print(pipeline("fill-mask", model=model, tokenizer=tokenizer)("the movie was [MASK] ."))
```

Fine-tune it with `run_glue.py --model_name_or_path THIS_FOLDER --task_name ...` or any transformers script.
"""


def academic_files(model, args: Optional[dict] = None) -> tuple[dict, dict, dict]:
    """(config.json, tensors, args.json) of IntelLabs' layout for our BertForPreTraining ``model``.

    Their BertModel always has a pooler: an MLM-only model gets an untrained one; their post-LN
    encoder builds a FinalLayerNorm it never applies: identity weights. RegularLinearActivation
    names (``fused_linear_layer`` false) and ``layer_norm_type`` pytorch need no apex.
    """
    config = model.config
    if config.vocab_pad_multiple != 1:
        raise UserError("export an unpadded model (load it from its pretrained/ export first)")
    state = {k: v.detach().cpu().float().clone() for k, v in model.state_dict().items()
             if k != "cls.predictions.decoder.bias"}
    if "bert.pooler.dense.weight" not in state:  # deterministic BERT initialisation of the pooler they need
        generator = torch.Generator().manual_seed(0)
        state["bert.pooler.dense.weight"] = torch.randn(config.hidden_size, config.hidden_size,
                                                        generator=generator) * config.initializer_range
        state["bert.pooler.dense.bias"] = torch.zeros(config.hidden_size)
    if not config.pre_ln:
        hidden = config.hidden_size
        state.update({"bert.encoder.FinalLayerNorm.weight": torch.ones(hidden),
                      "bert.encoder.FinalLayerNorm.bias": torch.zeros(hidden)})
    theirs = rename(state, ACADEMIC_EXPORT_RULES[config.encoder_ln_mode])
    nsp = bool(config.next_sentence_prediction)
    fields = {key: getattr(config, key) for key in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
        "initializer_range", "layer_norm_eps", "pad_token_id", "encoder_ln_mode", "layer_norm_type",
        "layernorm_embedding")}
    their_config = {**fields, "model_type": "bert", ACADEMIC_MARKER: True, "fused_linear_layer": False,
                    "sparse_mask_prediction": True,
                    "architectures": ["BertForPreTraining" if nsp else "BertLMHeadModel"]}
    run_args = {**(args or {}), "model_type": "bert-mlm-nsp" if nsp else "bert-mlm",
                "deepspeed_transformer_kernel": False}
    return their_config, theirs, run_args


def export_pretrained(model: nn.Module, tokenizer, out_dir: str | os.PathLike, card: dict | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (fp32), the tokenizer files and a model card to ``out_dir``.

    The layout is the one stock transformers loads without custom code (:mod:`pretraining.checkpoints.layouts`):
    post-LN models as transformers' BERT; pre-LN GELU/LayerNorm models as ``RobertaPreLayerNorm*``
    (with the embedding LayerNorm) or ``XLMRobertaXL*`` (without), so ``AutoModelForMaskedLM``,
    ``AutoModelForSequenceClassification`` (for a fine-tuned classifier: its task head too) and
    ``pipeline("fill-mask")`` take the folder; other pre-LN models (RMSNorm, another activation) keep
    this package's own names (model type :data:`PRE_LN_MODEL_TYPE`), which only its classes load.
    This package's classes load every one of these layouts back.

    The vocabulary padding is dropped. A masked-LM-only model has no pooler or NSP head, and none is
    made up: ``AutoModelForMaskedLM`` loads it with nothing missing or unexpected, and a class with
    those heads (``transformers.BertForPreTraining``) reports them as the fresh weights they are.
    Stock pre-LN masked-LM layouts have no pooler: an NSP model's pooler and NSP head stay behind.
    ``card`` (architecture, data, budget, optimizer, losses) becomes ``README.md``. ``tokenizer`` may
    be None. Files are written to temporary names and renamed, so an interrupted export never leaves
    a complete-looking but corrupt file.
    """
    from safetensors.torch import save_file

    model = unwrap_model(model)
    if not isinstance(model, BertPreTrainedModel):
        raise UserError(f"export_pretrained needs a model from pretraining.model.modeling, got {type(model).__name__}")
    config = copy.deepcopy(model.config)
    vocab, padded = config.vocab_size, config.padded_vocab_size
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype)
        if key.endswith(VOCAB_KEY_SUFFIXES) and tensor.shape[0] == padded:
            tensor = tensor[:vocab]
        state[key] = tensor.clone().contiguous()
    config.vocab_pad_multiple = 1
    config.torch_compile = False
    layout = stock_layout(config)
    if layout is not None:
        config_text, state = stock_files(state, config, layout, type(model).__name__, tokenizer)
    else:
        config.architectures = [type(model).__name__]
        config_text = config.to_json_string()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_weights = out / "model.safetensors.tmp"
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    tmp_weights.replace(out / "model.safetensors")
    tmp_config = out / "config.json.tmp"
    tmp_config.write_text(config_text)
    tmp_config.replace(out / "config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if card is not None:
        tmp_card = out / "README.md.tmp"
        tmp_card.write_text(model_card(config, layout, card))
        tmp_card.replace(out / "README.md")
    return out
