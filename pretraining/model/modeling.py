"""BERT for pretraining (masked LM, optional NSP) and sequence classification.

Parameter names are Hugging Face's, so with ``encoder_ln_mode="post-ln"`` this is
``transformers.BertForPreTraining`` / ``BertForSequenceClassification`` (same state
dict, same outputs), with these speed-ups (each a config field; the numbers do not change):

* attention through ``F.scaled_dot_product_attention`` (see :mod:`pretraining.model.layers`);
* ``sparse_mask_prediction``: with labels given, vocabulary logits are computed only at
  the positions where ``labels != -100`` (same loss, a fraction of the head's cost);
* ``vocab_pad_multiple``: embedding and MLM projection are padded to a multiple of it
  (fast matmul shapes); the padding rows are never predicted and exports drop them;
* ``unpad_inputs``: padding tokens are dropped before the embeddings and the encoder
  runs on the real tokens only, attention on variable-length sequences
  (``unpadded_attention``: repad, nested or varlen; see :mod:`pretraining.model.layers`),
  wherever no output has a value per padding position: the sparse MLM loss (the head
  gathers its positions from the unpadded tokens), NSP, sequence classification.
  ``BertModel``'s ``last_hidden_state`` and dense MLM logits come from the padded path,
  so they equal transformers' at every position, padding included;
* ``fused_qkv``: one matmul for the query/key/value projections;
* ``torch_compile``: each encoder layer is compiled with ``torch.compile`` (regional
  compilation: one short compile reused by every layer; token counts are dynamic).

Building blocks live in :mod:`pretraining.model.layers`. :func:`build_config` maps the
command-line :class:`~pretraining.train.args.ModelArguments` to a :class:`BertConfig`;
:func:`pretraining.checkpoints.export.export_pretrained` writes a folder that ``from_pretrained``
loads (transformers' classes too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as hf_init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.utils import ModelOutput

from pretraining.errors import UserError
from pretraining.model.layers import (
    LN_MODES,
    NORM_TYPES,
    UNPADDED_ATTENTION,
    BertEmbeddings,
    BertEncoder,
    BertLMPredictionHead,
    BertPooler,
    BertPreTrainingHeads,
    make_layout,
)

logger = logging.getLogger(__name__)

#: ``model_type`` written to config.json for models transformers' BERT cannot run (pre-ln, or
#: post-ln without the embedding LayerNorm) in this package's own names: transformers' BERT
#: classes warn about it by name and ``AutoModel`` refuses it, instead of silently loading
#: another network. (Exports of GELU/LayerNorm pre-ln models use stock layouts instead:
#: :mod:`pretraining.checkpoints.layouts`.)
PRE_LN_MODEL_TYPE = "bert_pre_ln"

#: readers of checkpoint layouts other than this package's own, registered from above (the network knows no layout)
_LAYOUT_HOOKS: dict[str, list] = {"models": [], "configs": []}


def register_layouts(load_model, read_config) -> None:
    """Let ``from_pretrained`` read other checkpoint layouts: ``load_model(cls, path, *args, **kwargs)`` returns the
    model or None (a layout transformers reads itself); ``read_config(config_dict)`` returns this package's config
    dict or None. :mod:`pretraining.checkpoints.layouts` registers its own when imported (every script imports it)."""
    if load_model not in _LAYOUT_HOOKS["models"]:
        _LAYOUT_HOOKS["models"].append(load_model)
    if read_config not in _LAYOUT_HOOKS["configs"]:
        _LAYOUT_HOOKS["configs"].append(read_config)


#: State-dict keys with one row per vocabulary entry (padded inside, unpadded in exports).
VOCAB_KEY_SUFFIXES = ("word_embeddings.weight", "cls.predictions.bias", "cls.predictions.decoder.weight",
                      "cls.predictions.decoder.bias")


def config_problems(config, flag: str = "") -> list[str]:
    """What is wrong with a model configuration: a :class:`BertConfig` or run_pretraining.py's
    :class:`~pretraining.train.args.ModelArguments` (same field names; ``flag="--"`` names them as flags).

    The one place these rules live: the config refuses itself with them, the flags are checked
    with them before anything is built, and the layers trust them.
    """
    from transformers.activations import ACT2FN

    def name(field: str) -> str:
        return f"{flag}{field}"

    problems = []
    if not (config.hidden_size > 0 and config.num_hidden_layers > 0):
        problems.append(f"{name('hidden_size')} and {name('num_hidden_layers')} must be > 0")
    elif not (config.num_attention_heads > 0 and config.hidden_size % config.num_attention_heads == 0):
        problems.append(f"{name('hidden_size')} ({config.hidden_size}) must be divisible by "
                        f"{name('num_attention_heads')} ({config.num_attention_heads})")
    if isinstance(config.hidden_act, str) and config.hidden_act not in ACT2FN:
        problems.append(f"{name('hidden_act')} {config.hidden_act!r} is not one of: {', '.join(sorted(ACT2FN))}")
    if not (0 <= config.hidden_dropout_prob < 1 and 0 <= config.attention_probs_dropout_prob < 1):
        problems.append(f"dropout probabilities ({name('hidden_dropout_prob')}, {name('attention_probs_dropout_prob')}) "
                        "must be in [0, 1)")
    if config.encoder_ln_mode not in LN_MODES:
        problems.append(f"{name('encoder_ln_mode')} {config.encoder_ln_mode!r} is not one of: {', '.join(LN_MODES)}")
    if config.layer_norm_type not in NORM_TYPES:
        problems.append(f"{name('layer_norm_type')} {config.layer_norm_type!r} is not one of: {', '.join(NORM_TYPES)}")
    if not isinstance(config.vocab_pad_multiple, int) or config.vocab_pad_multiple < 1:
        problems.append(f"{name('vocab_pad_multiple')} must be an integer >= 1 (got {config.vocab_pad_multiple!r})")
    if config.unpadded_attention not in UNPADDED_ATTENTION:
        problems.append(f"{name('unpadded_attention')} {config.unpadded_attention!r} is not one of: "
                        f"{', '.join(UNPADDED_ATTENTION)}")
    elif config.unpad_inputs and config.unpadded_attention == "varlen" and config.attention_probs_dropout_prob:
        problems.append(f"{name('unpadded_attention')} 'varlen' has no attention dropout: set "
                        f"{name('attention_probs_dropout_prob')} 0 or use {name('unpadded_attention')} 'nested'")
    return problems


class BertConfig(transformers.BertConfig):
    """``transformers.BertConfig`` plus academic-budget-bert's model options.

    The defaults reproduce transformers' BERT exactly (post-ln, dense MLM head, NSP head,
    no vocabulary padding), so a plain BERT ``config.json`` loads unchanged;
    :func:`build_config` applies the command-line defaults instead.
    """

    encoder_ln_mode: str = "post-ln"
    layer_norm_type: str = "pytorch"
    sparse_mask_prediction: bool = False
    layernorm_embedding: bool = True
    next_sentence_prediction: bool = True
    vocab_pad_multiple: int = 1
    unpad_inputs: bool = False
    unpadded_attention: str = "repad"
    fused_qkv: bool = False
    torch_compile: bool = False

    def __post_init__(self, **kwargs):
        if self.layer_norm_type == "apex":
            logger.warning("notice: layer_norm_type 'apex' is an alias of 'pytorch' (torch's fused LayerNorm); NVIDIA apex is not used")
            self.layer_norm_type = "pytorch"
        problems = config_problems(self)
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems))
        super().__post_init__(**kwargs)

    @property
    def pre_ln(self) -> bool:
        """True for pre-LayerNorm transformer blocks."""
        return self.encoder_ln_mode == "pre-ln"

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and MLM projection: vocab_size rounded up to vocab_pad_multiple."""
        multiple = self.vocab_pad_multiple
        return -(-self.vocab_size // multiple) * multiple

    def to_dict(self) -> dict:
        """As transformers', but configs that are not transformers' BERT (pre-ln, or no embedding LayerNorm) are
        saved with ``model_type`` = :data:`PRE_LN_MODEL_TYPE`."""
        output = super().to_dict()
        if self.pre_ln or not self.layernorm_embedding:
            output["model_type"] = PRE_LN_MODEL_TYPE
        return output

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """As transformers', and a config of another checkpoint layout read back as this class's by the reader the
        layouts layer registered (:func:`register_layouts`; :mod:`pretraining.checkpoints.layouts`)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        for read in _LAYOUT_HOOKS["configs"]:
            translated = read(config_dict)
            if translated is not None:
                return translated, kwargs
        model_type = config_dict.get("model_type")
        if not _LAYOUT_HOOKS["configs"] and model_type not in (cls.model_type, PRE_LN_MODEL_TYPE):
            # no reader registered: loading on would build a default BERT and leave every weight untrained
            raise UserError(f"{pretrained_model_name_or_path} is a {model_type or 'BERT-like'} checkpoint, a layout "
                            "read through pretraining.checkpoints.layouts: import pretraining.checkpoints.layouts "
                            "first (every script of this package does)")
        return config_dict, kwargs


def build_config(model_args, vocab_size: int | None = None) -> BertConfig:
    """The :class:`BertConfig` described by ``--model_type``, ``--hidden_size`` ... flags.

    ``vocab_size`` (from the tokenizer or the shards' manifest) overrides
    ``model_args.vocab_size``. ``--layer_norm_type apex`` becomes ``pytorch`` with a notice.
    """
    if model_args.fused_linear_layer:
        logger.warning("notice: --fused_linear_layer has no effect (torch fuses bias + activation itself)")
    vocab_size = vocab_size if vocab_size is not None else model_args.vocab_size
    if vocab_size is None:
        raise UserError("the model's vocabulary size is unknown: pass --vocab_size (e.g. the tokenizer's size)")
    return BertConfig(
        vocab_size=vocab_size,
        vocab_pad_multiple=model_args.vocab_pad_multiple,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        hidden_act=model_args.hidden_act,
        hidden_dropout_prob=model_args.hidden_dropout_prob,
        attention_probs_dropout_prob=model_args.attention_probs_dropout_prob,
        max_position_embeddings=model_args.max_position_embeddings,
        type_vocab_size=model_args.type_vocab_size,
        initializer_range=model_args.initializer_range,
        layer_norm_eps=model_args.layer_norm_eps,
        encoder_ln_mode=model_args.encoder_ln_mode,
        layer_norm_type=model_args.layer_norm_type,
        sparse_mask_prediction=model_args.sparse_mask_prediction,
        layernorm_embedding=(model_args.encoder_ln_mode == "post-ln") if model_args.layernorm_embedding is None
        else model_args.layernorm_embedding,
        next_sentence_prediction=model_args.model_type == "bert-mlm-nsp",
        unpad_inputs=model_args.unpad_inputs,
        unpadded_attention=model_args.unpadded_attention,
        fused_qkv=model_args.fused_qkv,
        torch_compile=model_args.torch_compile,
    )


class BertPreTrainedModel(PreTrainedModel):
    """Base class: BERT initialisation, :class:`BertConfig`, ``save_pretrained``/``from_pretrained``."""

    config_class = BertConfig
    base_model_prefix = "bert"
    _keys_to_ignore_on_load_unexpected = [r"position_ids$"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As transformers', and also from other checkpoint layouts (stock pre-LN, academic-budget-bert) through the
        loader the layouts layer registered (:func:`register_layouts`; :mod:`pretraining.checkpoints.layouts`)."""
        for load in _LAYOUT_HOOKS["models"]:
            loaded = load(cls, pretrained_model_name_or_path, *args, **kwargs)
            if loaded is not None:
                return loaded
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """Normal(0, initializer_range) for Linear/Embedding, ones/zeros for norms, zero MLM bias."""
        super()._init_weights(module)
        if isinstance(module, BertLMPredictionHead):
            hf_init.zeros_(module.bias)


class BertModel(BertPreTrainedModel):
    """The encoder: embeddings, transformer layers and (optionally) the pooler."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()
        if config.torch_compile:
            for layer in self.encoder.layer:
                layer.compile()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, unpad: bool = False):
        """Encoder states in the batch's token layout, and the layout (:func:`pretraining.model.layers.make_layout`).

        ``[B, S, d]`` with the padded layout, ``[T, d]`` (real tokens only) with the unpadded
        one, used when ``unpad`` and ``config.unpad_inputs`` and the batch has padding.
        """
        layout = make_layout(attention_mask, unpad and self.config.unpad_inputs, self.config.unpadded_attention)
        token_types = None if token_type_ids is None else layout.gather(token_type_ids)
        embedded = self.embeddings(layout.gather(input_ids), token_types, layout.positions(input_ids))
        return self.encoder(embedded, layout), layout

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> BaseModelOutputWithPooling:
        """``input_ids`` ``[B, S]``; ``attention_mask`` 1 = token, 0 = padding. Returns hidden states (+ pooled).

        Always the padded path: the states at padding positions are transformers'.
        """
        hidden, layout = self.encode(input_ids, attention_mask, token_type_ids)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=self.pool(hidden, layout))

    def pool(self, hidden: torch.Tensor, layout) -> torch.Tensor | None:
        """The pooler's output for encoder states in ``layout`` (None without a pooler)."""
        return self.pooler(layout.first_tokens(hidden)) if self.pooler is not None else None


@dataclass
class BertForPreTrainingOutput(ModelOutput):
    """Output of :class:`BertForPreTraining`.

    ``prediction_logits``: ``[B, S, vocab_size]``; with ``sparse_mask_prediction`` and
    labels given, ``[N, vocab_size]`` for the N positions where ``labels != -100``, in
    row-major (batch, position) order. ``loss`` = ``masked_lm_loss`` (+ ``next_sentence_loss``).
    With ``unpad_inputs`` and the sparse head, labels at padding positions (a data error)
    are not scored; the plain path scores them.
    """

    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    masked_lm_loss: torch.Tensor | None = None
    next_sentence_loss: torch.Tensor | None = None


class BertForPreTraining(BertPreTrainedModel):
    """BERT with the masked-LM head and, when ``config.next_sentence_prediction``, the NSP head.

    Without NSP the model has no pooler or ``cls.seq_relationship`` (no unused parameters
    under DDP); such weights in a checkpoint are ignored on load.
    """

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }
    _keys_to_ignore_on_load_unexpected = [r"position_ids$", r"^(bert\.)?pooler\.", r"^cls\.seq_relationship\.",
                                          r"^classifier\."]

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=config.next_sentence_prediction)
        self.cls = BertPreTrainingHeads(config)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None) -> BertForPreTrainingOutput:
        """``labels`` ``[B, S]``: target token ids, -100 where nothing is predicted.

        ``next_sentence_label`` ``[B]``: 0 = B follows A, 1 = random (NSP models only).
        """
        sparse = self.config.sparse_mask_prediction and labels is not None
        encoded, layout = self.bert.encode(input_ids, attention_mask, token_type_ids, unpad=sparse)
        hidden, targets = encoded, labels
        if sparse:
            targets = layout.flatten(layout.gather(labels))
            keep = targets != -100
            hidden, targets = layout.flatten(encoded)[keep], targets[keep]
        logits = self.cls.predictions(hidden)
        out = BertForPreTrainingOutput(prediction_logits=logits)
        if labels is not None:
            out.masked_lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
            out.loss = out.masked_lm_loss
        if self.config.next_sentence_prediction:
            out.seq_relationship_logits = self.cls.seq_relationship(self.bert.pool(encoded, layout))
            if next_sentence_label is not None:
                out.next_sentence_loss = F.cross_entropy(out.seq_relationship_logits.float(), next_sentence_label.reshape(-1))
                out.loss = out.next_sentence_loss if out.loss is None else out.loss + out.next_sentence_loss
        return out


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT + dropout + linear classifier on the pooled output (as transformers').

    Loss: MSE when ``num_labels == 1`` (regression), cross-entropy for integer labels,
    BCE-with-logits for multi-label; ``config.problem_type`` overrides the guess.
    """

    _keys_to_ignore_on_load_unexpected = [r"position_ids$", r"^cls\."]

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """Returns ``logits`` ``[B, num_labels]`` and, with ``labels``, ``loss``."""
        encoded, layout = self.bert.encode(input_ids, attention_mask, token_type_ids, unpad=True)
        pooled = self.bert.pool(encoded, layout)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float()) if self.num_labels == 1 \
                else F.mse_loss(logits.float(), labels.float())
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DeepSpeed engines (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
