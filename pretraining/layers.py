"""BERT building blocks with Hugging Face parameter names (used by :mod:`pretraining.modeling`).

Every module takes a :class:`pretraining.modeling.BertConfig`. Two LayerNorm placements:

* ``post-ln`` (original BERT; identical to ``transformers.BertModel``)::

      x = LN(x + Attn(x));            x = LN(x + FFN(x))          # attention.output.LayerNorm, output.LayerNorm

* ``pre-ln`` (stable at high learning rates; academic-budget-bert's default)::

      x = x + Attn(PreAttentionLayerNorm(x));  x = x + FFN(PreFeedForwardLayerNorm(x))
      ... and encoder.FinalLayerNorm after the last layer

  The pre-ln norms have their own names, so a pre-ln state dict can never be mistaken
  for a post-ln one (loading it into transformers' BERT reports them as missing).

Attention goes through :func:`attend`, a thin wrapper over
``torch.nn.functional.scaled_dot_product_attention`` with a boolean key-padding mask
built once per batch by :func:`padding_mask`. Everything outside ``attend`` works on
``[..., hidden]`` tensors token by token, so an unpadded (varlen) fast path only needs
a new mask object and a new kernel here: the layers, feed-forward and heads stay as
they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from pretraining.errors import UserError

NORMS = {"pytorch": nn.LayerNorm, "rms_norm": nn.RMSNorm}


def make_norm(config) -> nn.Module:
    """The configured normalisation over ``hidden_size`` (``--layer_norm_type``)."""
    if config.layer_norm_type not in NORMS:
        raise UserError(f"layer_norm_type {config.layer_norm_type!r} is not one of: {', '.join(NORMS)}")
    return NORMS[config.layer_norm_type](config.hidden_size, eps=config.layer_norm_eps)


def make_activation(name: str):
    """Activation function by Hugging Face name (gelu, relu, gelu_new, silu, ...)."""
    if name not in ACT2FN:
        raise UserError(f"--hidden_act {name!r} is not one of: {', '.join(sorted(ACT2FN))}")
    return ACT2FN[name]


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, S]`` 1/0 mask -> boolean ``[B, 1, 1, S]`` (True = attend), broadcast over heads and queries."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """Scaled dot-product attention over ``[B, heads, S, head_dim]`` tensors."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm (skipped in pre-ln unless --layernorm_embedding)."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        use_norm = not config.pre_ln or config.layernorm_embedding
        self.LayerNorm = make_norm(config) if use_norm else nn.Identity()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention projections (query/key/value) around :func:`attend`."""

    def __init__(self, config):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise UserError(
                f"hidden_size ({config.hidden_size}) must be divisible by num_attention_heads ({config.num_attention_heads})"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        heads = (*x.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = (proj(x).view(heads).transpose(-3, -2) for proj in (self.query, self.key, self.value))
        out = attend(q, k, v, mask, self.dropout_p if self.training else 0.0)
        return out.transpose(-3, -2).reshape(x.shape)


class BertResidual(nn.Module):
    """``dense -> dropout -> + residual`` and, in post-ln, ``LayerNorm`` (HF's BertSelfOutput/BertOutput)."""

    def __init__(self, config, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.Identity() if config.pre_ln else make_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class BertAttention(nn.Module):
    """Self-attention (``self``) and its output projection with residual (``output``)."""

    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidual(config, config.hidden_size)


class BertIntermediate(nn.Module):
    """First feed-forward projection and activation."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = make_activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """One transformer block; the LayerNorm placement follows ``config.encoder_ln_mode``."""

    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidual(config, config.intermediate_size)
        self.PreAttentionLayerNorm = make_norm(config) if config.pre_ln else nn.Identity()
        self.PreFeedForwardLayerNorm = make_norm(config) if config.pre_ln else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention.output(self.attention.self(self.PreAttentionLayerNorm(x), mask), x)
        return self.output(self.intermediate(self.PreFeedForwardLayerNorm(x)), x)


class BertEncoder(nn.Module):
    """The stack of layers (plus the final LayerNorm in pre-ln)."""

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.FinalLayerNorm = make_norm(config) if config.pre_ln else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return self.FinalLayerNorm(x)


class BertPooler(nn.Module):
    """tanh(dense(hidden state of the first token)), as in BERT."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertPredictionHeadTransform(nn.Module):
    """dense -> activation -> LayerNorm before the vocabulary projection."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = make_activation(config.hidden_act)
        self.LayerNorm = make_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """Masked-LM head. ``decoder`` is tied to the word embeddings and its bias to ``bias``.

    The projection runs over the padded vocabulary (a multiple of ``vocab_pad_multiple``,
    fast matmul shapes); the padding columns are sliced off, so they are never predicted.
    """

    def __init__(self, config):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.padded_vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.transform(x))
        return logits if logits.shape[-1] == self.vocab_size else logits[..., : self.vocab_size]


class BertPreTrainingHeads(nn.Module):
    """``predictions`` (masked LM) and, with next-sentence prediction, ``seq_relationship``."""

    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        if config.next_sentence_prediction:
            self.seq_relationship = nn.Linear(config.hidden_size, 2)
