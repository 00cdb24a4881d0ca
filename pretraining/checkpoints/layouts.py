"""Checkpoint layouts: this package's BERT, stock transformers classes, academic-budget-bert.

A checkpoint folder is in one of these layouts (:func:`detect_layout`):

* ``bert`` (native): Hugging Face BERT names. Post-LN models are transformers' own BERT.
* ``bert_pre_ln`` (native, older exports): this package's pre-LN names under its own model type.
* ``roberta-prelayernorm``: pre-LN with an embedding LayerNorm, as transformers'
  ``RobertaPreLayerNorm*`` classes lay it out (final LayerNorm after the encoder, BERT-style
  MLM head); what :func:`pretraining.checkpoints.export.export_pretrained` writes for such models, so
  ``AutoModelForMaskedLM``, ``AutoModelForSequenceClassification`` and ``pipeline("fill-mask")``
  load the export with no custom code.
* ``xlm-roberta-xl``: pre-LN without the embedding LayerNorm (``XLMRobertaXL*``): the same,
  for ``--layernorm_embedding false``.
* ``academic-budget-bert``: IntelLabs' checkpoint folders (``epoch*_step*``: their key names
  ``dense_act``, ``PostAttentionLayerNorm``; ``args.json``), in both LN modes.

Both RoBERTa layouts count positions from ``pad_token_id + 1`` (position ids are derived from
the input: ``cumsum(input_ids != pad)``), so BERT's position table maps with a shift of
``pad_token_id + 1`` rows, exactly for right-padded input (BERT's convention). Their MLM
head applies GELU, so only GELU models with LayerNorm use them; others stay ``bert_pre_ln``.

Renames are tables of (pattern, replacement) applied in order; loading checks that every
encoder and embedding tensor found a place (:func:`check_loading`). The files an export writes in
a layout are made by :mod:`pretraining.checkpoints.export`; ``python -m pretraining.convert`` converts folders.

This module sits above the network (:mod:`pretraining.model.modeling` knows no layout): importing it registers
:func:`load_other_layout` and :func:`read_other_config` with the model classes, so their ``from_pretrained``
reads every layout above. Every script of this package imports it before loading a checkpoint.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

from pretraining.model import modeling
from pretraining.errors import UserError

NATIVE = ("bert", "bert_pre_ln")
STOCK_PREFIX = {"roberta-prelayernorm": "roberta_prelayernorm", "xlm-roberta-xl": "roberta"}
ACADEMIC = "academic-budget-bert"
LAYOUTS = (*NATIVE, *STOCK_PREFIX, ACADEMIC)
#: weights that may start fresh when a checkpoint lacks them: a task head, the pooler, the NSP or MLM head
FRESH_OK = (r"^classifier\.", r"^bert\.pooler\.", r"^cls\.seq_relationship\.", r"^cls\.predictions\.")
_LAYER = r"^bert\.encoder\.layer\.(\d+)\."
_SHARED = r"(attention\.self\.(?:query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"

# ours -> stock layout (``{p}`` is the base-model prefix); the position table and its shift are handled apart
_HEAD_RULES = [
    (r"^cls\.predictions\.transform\.dense\.", "lm_head.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "lm_head.layer_norm."),
    (r"^cls\.predictions\.decoder\.weight$", "lm_head.decoder.weight"),
    (r"^cls\.predictions\.bias$", "lm_head.bias"),
    (r"^bert\.pooler\.dense\.", "classifier.dense."),
    (r"^classifier\.", "classifier.out_proj."),
]
STOCK_RULES = {
    "roberta-prelayernorm": [
        (r"^bert\.embeddings\.(word_embeddings|token_type_embeddings|LayerNorm)\.", r"{p}.embeddings.\1."),
        (_LAYER + r"PreAttentionLayerNorm\.", r"{p}.encoder.layer.\1.attention.LayerNorm."),
        (_LAYER + r"PreFeedForwardLayerNorm\.", r"{p}.encoder.layer.\1.intermediate.LayerNorm."),
        (_LAYER + _SHARED + r"\.", r"{p}.encoder.layer.\1.\2."),
        (r"^bert\.encoder\.FinalLayerNorm\.", r"{p}.LayerNorm."),
        *_HEAD_RULES,
    ],
    "xlm-roberta-xl": [
        (r"^bert\.embeddings\.(word_embeddings|token_type_embeddings)\.", r"{p}.embeddings.\1."),
        (_LAYER + r"PreAttentionLayerNorm\.", r"{p}.encoder.layer.\1.attention.self_attn_layer_norm."),
        (_LAYER + r"PreFeedForwardLayerNorm\.", r"{p}.encoder.layer.\1.LayerNorm."),
        (_LAYER + _SHARED + r"\.", r"{p}.encoder.layer.\1.\2."),
        (r"^bert\.encoder\.FinalLayerNorm\.", r"{p}.encoder.LayerNorm."),
        *_HEAD_RULES,
    ],
}
#: academic-budget-bert -> ours, by LN mode (their PreAttention/PostAttention norms change role with it)
_ACADEMIC_COMMON = [
    (r"\.dense_act\.dense\.(weight|bias)$", r".dense.\1"),  # RegularLinearActivation (fused_linear_layer false)
    (r"\.dense_act\.(weight|bias)$", r".dense.\1"),  # LinearActivation (fused_linear_layer true)
    (r"\.(scale)$", r".weight"),  # their RMSNorm
    (r"\.(offset)$", r".bias"),
]
ACADEMIC_RULES = {
    "pre-ln": [*_ACADEMIC_COMMON, (_LAYER + r"PostAttentionLayerNorm\.", r"bert.encoder.layer.\1.PreFeedForwardLayerNorm.")],
    "post-ln": [*_ACADEMIC_COMMON,
                (_LAYER + r"PreAttentionLayerNorm\.", r"bert.encoder.layer.\1.attention.output.LayerNorm."),
                (_LAYER + r"PostAttentionLayerNorm\.", r"bert.encoder.layer.\1.output.LayerNorm."),
                (r"^bert\.encoder\.FinalLayerNorm\..*", "")],  # built but unused in their post-ln: dropped
}
#: ours -> academic-budget-bert (written with fused_linear_layer false: RegularLinearActivation names)
ACADEMIC_EXPORT_RULES = {
    "pre-ln": [(_LAYER + r"PreFeedForwardLayerNorm\.", r"bert.encoder.layer.\1.PostAttentionLayerNorm."),
               (r"(intermediate|pooler|transform)\.dense\.(weight|bias)$", r"\1.dense_act.dense.\2")],
    "post-ln": [(_LAYER + r"attention\.output\.LayerNorm\.", r"bert.encoder.layer.\1.PreAttentionLayerNorm."),
                (_LAYER + r"output\.LayerNorm\.", r"bert.encoder.layer.\1.PostAttentionLayerNorm."),
                (r"(intermediate|pooler|transform)\.dense\.(weight|bias)$", r"\1.dense_act.dense.\2")],
}
#: a config field that only academic-budget-bert's PretrainedBertConfig writes
ACADEMIC_MARKER = "useLN"


def rename(state: dict, rules: Sequence[tuple[str, str]], prefix: str = "") -> dict:
    """Apply the first matching (pattern, replacement) to each key; an empty replacement drops the key."""
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in rules:
            if re.search(pattern, key):
                key = re.sub(pattern, replacement.replace("{p}", prefix), key)
                break
        if key:
            out[key] = tensor
    return out


def _read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} could not be read ({exc}): is {folder} a complete checkpoint folder?") from None


def detect_layout(name_or_path) -> Optional[str]:
    """The layout of a local checkpoint folder (None for a Hub name or a folder without config.json)."""
    folder = Path(str(name_or_path)).expanduser()
    if not (folder / "config.json").is_file():
        return None
    return layout_of_config(_read_config(folder))


def config_from_layout(config: dict, layout: str) -> dict:
    """Our BertConfig fields from a stock or academic-budget-bert config.json."""
    config = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "transformers_version")}
    if layout in STOCK_PREFIX:
        shift = position_shift(config)
        return {**config, "model_type": "bert", "encoder_ln_mode": "pre-ln", "next_sentence_prediction": False,
                "layernorm_embedding": layout == "roberta-prelayernorm",
                "max_position_embeddings": int(config["max_position_embeddings"]) - shift}
    if layout == ACADEMIC:
        norm = config.get("layer_norm_type", "pytorch")
        return {**config, "model_type": "bert", "layer_norm_type": "pytorch" if norm == "apex" else norm,
                "layernorm_embedding": bool(config.get("layernorm_embedding", False)),
                **({"layer_norm_eps": 1e-12} if norm != "rms_norm" else {"layer_norm_eps": 1e-8})}
    return config


def stock_names(our_keys, layout: str) -> dict[str, str]:
    """Our parameter name -> its name in a stock layout, for every key that has one."""
    prefix = STOCK_PREFIX[layout]
    rules = [(r"^bert\.embeddings\.position_embeddings\.", r"{p}.embeddings.position_embeddings."),
             *STOCK_RULES[layout]]
    return {key: renamed for key in our_keys
            for renamed in rename({key: None}, rules, prefix) if renamed != key}


def position_shift(config: dict) -> int:
    """Rows by which a RoBERTa-layout position table is shifted: ``pad_token_id + 1``."""
    return int(config.get("pad_token_id") or 0) + 1


def state_from_layout(state: dict, layout: str, config: dict, our_keys) -> tuple[dict, list[str]]:
    """A checkpoint's state dict in this package's names, and the checkpoint keys that found no place.

    ``config`` is the checkpoint's own config.json; ``our_keys`` the names of the model it goes into.
    """
    if layout in STOCK_PREFIX:
        inverse = {stock: ours for ours, stock in stock_names(our_keys, layout).items()}
        converted = {inverse[key]: tensor for key, tensor in state.items() if key in inverse}
        position = "bert.embeddings.position_embeddings.weight"
        if position in converted:
            converted[position] = converted[position][position_shift(config):]
        # the tied decoder (bias) are saved or not depending on the writer; they are the same tensors
        ignored = {"lm_head.decoder.bias", "lm_head.decoder.weight"}
        return converted, sorted(k for k in state if k not in inverse and k not in ignored)
    if layout == ACADEMIC:
        return rename(state, ACADEMIC_RULES[config.get("encoder_ln_mode", "post-ln")]), []
    return dict(state), []


#: this package's speed options, kept in a stock config.json (transformers keeps unknown keys and ignores them),
#: so a model reloaded here runs as it was trained; they change no weight and no result
FAST_PATH = ("sparse_mask_prediction", "unpad_inputs", "unpadded_attention", "fused_qkv")


def stock_config(our_config, layout: str) -> dict:
    """config.json of a stock layout for our (pre-LN) ``our_config``."""
    shift = position_shift(our_config.to_dict())
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
            "initializer_range", "layer_norm_eps", "pad_token_id", "classifier_dropout", "id2label", "label2id",
            "problem_type")
    config = {key: getattr(our_config, key) for key in keep + FAST_PATH if getattr(our_config, key, None) is not None}
    return {**config, "model_type": layout, "max_position_embeddings": our_config.max_position_embeddings + shift}


def stock_layout(config) -> Optional[str]:
    """The stock layout a model of ``config`` exports to exactly, or None (it stays in a native layout).

    Post-LN BERT is transformers' own (native ``bert``); pre-LN needs GELU (the RoBERTa MLM
    head's fixed activation), LayerNorm (not RMSNorm) and absolute positions.
    """
    if not config.pre_ln or config.hidden_act != "gelu" or config.layer_norm_type != "pytorch":
        return None
    return "roberta-prelayernorm" if config.layernorm_embedding else "xlm-roberta-xl"


def to_stock(state: dict, config, layout: str) -> dict:
    """Our state dict (unpadded vocabulary) in ``layout``'s names, the position table shifted."""
    names = stock_names(state, layout)
    out = {names[key]: tensor for key, tensor in state.items() if key in names}
    position = f"{STOCK_PREFIX[layout]}.embeddings.position_embeddings.weight"
    if position in out:
        table = out[position]
        out[position] = torch.cat([table.new_zeros(position_shift(config.to_dict()), table.shape[1]), table])
    return out


def check_loading(missing: Sequence[str], unexpected: Sequence[str], source: str,
                  fresh_ok: Sequence[str] = FRESH_OK) -> list[str]:
    """UserError when a checkpoint's encoder or embedding weights did not all load; else the fresh weights.

    Only a task head, the pooler, the NSP and the MLM head may start fresh (returned, for a plain
    notice). Weights of the checkpoint that found no place (``unexpected``) are an error too: their
    names did not match (another layout), so the model would silently train without them.
    """
    missing, unexpected = sorted(missing), sorted(unexpected)
    fresh = [key for key in missing if any(re.search(p, key) for p in fresh_ok)]
    lost = [key for key in missing if key not in fresh]
    problems = []
    if lost:
        problems.append(f"{len(lost)} weight(s) the model needs are not in it: {', '.join(lost[:8])}"
                        + (" ..." if len(lost) > 8 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) in it match no weight of the model: "
                        f"{', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    if problems:
        raise UserError(f"the checkpoint {source} does not fit this model: {'; '.join(problems)}. Its encoder "
                        f"would start (partly) untrained; check that it is a BERT checkpoint of a layout this tool "
                        f"reads ({', '.join(LAYOUTS)}) and not a truncated or foreign file")
    return fresh


#: layouts read by converting the state dict (the native ones load through transformers as they are)
CONVERTED = (*STOCK_PREFIX, ACADEMIC)
#: from_pretrained keyword arguments that are about loading, not config fields
LOADER_KWARGS = ("cache_dir", "trust_remote_code", "force_download", "local_files_only", "token", "revision",
                 "use_safetensors", "weights_only", "dtype", "torch_dtype", "device_map")


def layout_of_config(config: dict) -> Optional[str]:
    """The layout a config.json describes (None for another model type)."""
    model_type = config.get("model_type")
    if model_type in STOCK_PREFIX:
        return model_type
    if ACADEMIC_MARKER in config and "encoder_ln_mode" in config:
        return ACADEMIC
    return model_type if model_type in NATIVE else None


#: how torch's and safetensors' readers word a file that is not what its name says (besides their error types)
UNREADABLE = ("PytorchStreamReader", "zip archive", "invalid load key", "header", "deserializ", "truncated")


def unreadable_weights(exc: BaseException) -> bool:
    """True when ``exc`` is a weights file failing to parse (damaged, truncated, random bytes), not a bug."""
    if isinstance(exc, (pickle.UnpicklingError, EOFError, OSError)) or type(exc).__name__ == "SafetensorError":
        return True
    return isinstance(exc, (RuntimeError, ValueError)) and any(words in str(exc) for words in UNREADABLE)


def read_weights(folder: Path) -> dict:
    """The tensors of a checkpoint folder: model.safetensors, else pytorch_model.bin (weights_only)."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin: the checkpoint is incomplete")


def load_converted(cls, path, layout: str, *, config=None, output_loading_info: bool = False, **kwargs):
    """``cls.from_pretrained`` for a stock or academic-budget-bert layout: build the model from the translated
    config, rename the checkpoint's tensors into it, and report what did not load as transformers does."""
    folder = Path(str(path)).expanduser()
    raw = _read_config(folder)
    overrides = {k: v for k, v in kwargs.items() if k not in LOADER_KWARGS}
    if config is None:
        config = cls.config_class.from_pretrained(str(folder), **overrides)
    else:
        for key, value in overrides.items():
            setattr(config, key, value)
    model = cls(config)
    converted, unknown = state_from_layout(read_weights(folder), layout, raw, model.state_dict().keys())
    for target, source in (getattr(model, "_tied_weights_keys", None) or {}).items():
        if source in converted and target not in converted:
            converted[target] = converted[source]
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as exc:  # tensors of other shapes
        raise UserError(f"the checkpoint {folder} does not fit its own config ({str(exc).splitlines()[-1].strip()})") \
            from None
    ignore = list(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or [])
    if not any(key.startswith("cls.predictions.") for key in model.state_dict()):
        ignore.append(r"^lm_head\.")  # a classifier from a masked-LM export: the MLM head has no use here
    unexpected = [k for k in [*result.unexpected_keys, *unknown] if not any(re.search(p, k) for p in ignore)]
    model.eval()
    if not output_loading_info:
        return model
    return model, {"missing_keys": sorted(result.missing_keys), "unexpected_keys": sorted(unexpected),
                   "mismatched_keys": [], "error_msgs": []}


def load_other_layout(cls, path, *args, **kwargs):
    """The model of a stock or academic-budget-bert folder (renamed on load), or None for a native one (transformers
    loads those as they are). Registered with :class:`pretraining.model.modeling.BertPreTrainedModel`."""
    layout = detect_layout(path)
    if layout in CONVERTED:
        return load_converted(cls, path, layout, **kwargs)
    return None


def read_other_config(config_dict: dict) -> Optional[dict]:
    """A stock pre-LN or academic-budget-bert config.json read back as this package's, or None (native).
    Registered with :class:`pretraining.model.modeling.BertConfig`."""
    layout = layout_of_config(config_dict)
    if layout is None:
        return None
    return {**config_from_layout(config_dict, layout), "model_type": modeling.BertConfig.model_type}


modeling.register_layouts(load_other_layout, read_other_config)
