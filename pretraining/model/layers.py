"""BERT building blocks with Hugging Face parameter names (used by :mod:`pretraining.model.modeling`).

Every module takes a :class:`pretraining.model.modeling.BertConfig`. Two LayerNorm placements:

* ``post-ln`` (original BERT; identical to ``transformers.BertModel``)::

      x = LN(x + Attn(x));            x = LN(x + FFN(x))          # attention.output.LayerNorm, output.LayerNorm

* ``pre-ln`` (stable at high learning rates; academic-budget-bert's default)::

      x = x + Attn(PreAttentionLayerNorm(x));  x = x + FFN(PreFeedForwardLayerNorm(x))
      ... and encoder.FinalLayerNorm after the last layer

  The pre-ln norms have their own names, so a pre-ln state dict can never be mistaken
  for a post-ln one (loading it into transformers' BERT reports them as missing).

Everything except attention works on ``[..., hidden]`` tensors token by token, so the
token layout is a per-batch object that the encoder passes down to attention
(:func:`make_layout` builds it once per batch):

* :class:`PaddedLayout` (the plain path): hidden states ``[B, S, d]``; attention is
  ``F.scaled_dot_product_attention`` with a boolean key-padding mask (:func:`attend`).
* :class:`UnpaddedLayout` (``--unpad_inputs``): the padding tokens are dropped before
  the embeddings, hidden states are ``[T, d]`` for the T real tokens of the batch, and
  attention runs on variable-length sequences with a kernel from
  :data:`UNPADDED_ATTENTION` (``--unpadded_attention``): ``repad`` (scatter q/k/v back
  to ``[B, S]`` for masked SDPA: any device, attention dropout), ``nested`` (SDPA on
  jagged nested tensors: flash/efficient varlen kernels on a GPU, with dropout; very
  slow on the CPU) or ``varlen`` (``torch.nn.attention.varlen.varlen_attn``: CUDA
  flash varlen, no attention dropout). Projections, feed-forward, norms and heads then
  skip the padding's FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretraining.errors import UserError

NORMS = {"pytorch": nn.LayerNorm, "rms_norm": nn.RMSNorm}
#: --layer_norm_type values (apex: an alias of pytorch)
NORM_TYPES = (*NORMS, "apex")
#: --encoder_ln_mode values: LayerNorm before each sublayer (pre-ln) or after its residual sum (post-ln, BERT's)
LN_MODES = ("pre-ln", "post-ln")


def make_norm(config) -> nn.Module:
    """The configured normalisation over ``hidden_size`` (``--layer_norm_type``; the config checked the name)."""
    return NORMS[config.layer_norm_type](config.hidden_size, eps=config.layer_norm_eps)


def make_activation(name: str):
    """Activation function by Hugging Face name (gelu, relu, gelu_new, silu, ...; the config checked the name)."""
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, S]`` 1/0 mask -> boolean ``[B, 1, 1, S]`` (True = attend), broadcast over heads and queries."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """Scaled dot-product attention over ``[B, heads, S, head_dim]`` tensors."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _padded_attention(q, k, v, mask, num_heads: int, dropout_p: float) -> torch.Tensor:
    """Multi-head :func:`attend` on ``[B, S, d]`` projections; returns ``[B, S, d]``."""
    q, k, v = (t.unflatten(-1, (num_heads, -1)).transpose(1, 2) for t in (q, k, v))
    return attend(q, k, v, mask, dropout_p).transpose(1, 2).flatten(-2)


class PaddedLayout:
    """Hidden states ``[B, S, d]`` with padding in place; attention masks the padded keys."""

    def __init__(self, attention_mask: torch.Tensor | None):
        self.mask = padding_mask(attention_mask)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """A ``[B, S, ...]`` input in this layout (unchanged)."""
        return x

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position ids of the tokens: ``0..S-1`` (broadcast over the batch)."""
        return torch.arange(input_ids.shape[1], device=input_ids.device)

    def flatten(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states as ``[B*S, ...]`` rows in (batch, position) order."""
        return hidden.reshape(-1, *hidden.shape[2:])

    def repad(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states as ``[B, S, ...]`` (unchanged)."""
        return hidden

    def first_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` states of each sequence's first token (the pooler's input)."""
        return hidden[:, 0]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, dropout_p: float) -> torch.Tensor:
        """Self-attention of ``[B, S, d]`` projections."""
        return _padded_attention(q, k, v, self.mask, num_heads, dropout_p)


@dataclass(frozen=True)
class UnpaddedLayout:
    """The T real tokens of a batch as ``[T, ...]`` rows in (batch, position) order.

    ``indices`` ``[T]``: flat positions of the real tokens in ``[B*S]``;
    ``cu_seqlens`` ``[B+1]`` (int32): sequence b is rows ``cu_seqlens[b]:cu_seqlens[b+1]``;
    ``kernel``: the varlen attention from :data:`UNPADDED_ATTENTION`.
    """

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    batch_size: int
    seq_len: int
    key_mask: torch.Tensor
    kernel: Callable

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """A ``[B, S, ...]`` input (ids, segments, labels) -> ``[T, ...]`` real-token rows."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.indices)

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position id of each real token (its index in its sequence, as in the padded batch)."""
        return self.indices % self.seq_len

    def flatten(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states as rows (already ``[T, ...]``)."""
        return hidden

    def repad(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` -> ``[B, S, ...]`` with zeros at the padding."""
        rows = hidden.new_zeros(self.batch_size * self.seq_len, *hidden.shape[1:])
        return rows.index_copy(0, self.indices, hidden).unflatten(0, (self.batch_size, self.seq_len))

    def first_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` states of each sequence's first real token (position 0 for right-padded rows)."""
        return hidden.index_select(0, self.cu_seqlens[:-1].long())

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, dropout_p: float) -> torch.Tensor:
        """Self-attention within each sequence of ``[T, d]`` projections."""
        return self.kernel(self, q, k, v, num_heads, dropout_p)


def _repad_attention(layout: UnpaddedLayout, q, k, v, num_heads: int, dropout_p: float) -> torch.Tensor:
    """Scatter q/k/v back to ``[B, S, d]``, masked SDPA, gather the real tokens' outputs."""
    q, k, v = (layout.repad(t) for t in (q, k, v))
    return layout.gather(_padded_attention(q, k, v, layout.key_mask, num_heads, dropout_p))


def _nested_attention(layout: UnpaddedLayout, q, k, v, num_heads: int, dropout_p: float) -> torch.Tensor:
    """SDPA on jagged nested tensors (one component per sequence)."""
    offsets = layout.cu_seqlens.long()

    def nest(t):
        values = t.unflatten(-1, (num_heads, -1)).contiguous()
        return torch.nested.nested_tensor_from_jagged(values, offsets, max_seqlen=layout.max_seqlen).transpose(1, 2)

    out = F.scaled_dot_product_attention(nest(q), nest(k), nest(v), dropout_p=dropout_p)
    return out.transpose(1, 2).values().flatten(-2)


def _varlen_attention(layout: UnpaddedLayout, q, k, v, num_heads: int, dropout_p: float) -> torch.Tensor:
    """``torch.nn.attention.varlen.varlen_attn`` (CUDA flash varlen kernel; no attention dropout)."""
    if not q.is_cuda:
        raise UserError("--unpadded_attention varlen needs a CUDA GPU: use --unpadded_attention repad on the CPU")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise UserError("--unpadded_attention varlen runs in bf16/fp16 only: add --bf16 or --fp16, or use "
                        "--unpadded_attention nested for fp32")
    from torch.nn.attention.varlen import varlen_attn

    q, k, v = (t.unflatten(-1, (num_heads, -1)) for t in (q, k, v))
    cu = layout.cu_seqlens
    return varlen_attn(q, k, v, cu, cu, layout.max_seqlen, layout.max_seqlen).flatten(-2)


#: ``--unpadded_attention`` name -> kernel(layout, q, k, v, num_heads, dropout_p) -> ``[T, d]``
UNPADDED_ATTENTION: dict[str, Callable] = {
    "repad": _repad_attention, "nested": _nested_attention, "varlen": _varlen_attention,
}


def make_layout(attention_mask: torch.Tensor | None, unpad: bool, kernel: str = "repad") -> PaddedLayout | UnpaddedLayout:
    """The token layout of one batch: unpadded (attention by ``kernel``) when ``unpad`` and the batch has padding.

    Batches without padding, or with a sequence that has no real token, use the padded
    layout (the same numbers). Unpadding reads the token count on the host (one sync).
    """
    if attention_mask is None or not unpad:
        return PaddedLayout(attention_mask)
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1, dtype=torch.int32)
    total, shortest, longest = torch.stack([lengths.sum(), lengths.min(), lengths.max()]).tolist()
    batch_size, seq_len = mask.shape
    if total == batch_size * seq_len:
        return PaddedLayout(None)
    if shortest == 0:
        return PaddedLayout(attention_mask)
    return UnpaddedLayout(
        indices=mask.flatten().nonzero_static(size=total).flatten(),
        cu_seqlens=F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)),
        max_seqlen=int(longest), batch_size=batch_size, seq_len=seq_len,
        key_mask=padding_mask(mask), kernel=UNPADDED_ATTENTION[kernel],
    )


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm (``config.layernorm_embedding``)."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        use_norm = config.layernorm_embedding
        self.LayerNorm = make_norm(config) if use_norm else nn.Identity()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids`` ``[B, S]`` (positions 0..S-1) or ``[T]`` with ``position_ids`` ``[T]``."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: query/key/value projections, then the layout's attention.

    With ``config.fused_qkv`` the three projections run as one matmul over the
    concatenated weights (the parameters stay separate, with Hugging Face's names).
    """

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.fused_qkv = config.fused_qkv

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value projections of ``x``."""
        projections = (self.query, self.key, self.value)
        if not self.fused_qkv:
            return tuple(proj(x) for proj in projections)
        weight = torch.cat([proj.weight for proj in projections])
        bias = torch.cat([proj.bias for proj in projections])
        return F.linear(x, weight, bias).chunk(3, dim=-1)

    def forward(self, x: torch.Tensor, layout: PaddedLayout | UnpaddedLayout) -> torch.Tensor:
        q, k, v = self.project(x)
        return layout.attend(q, k, v, self.num_heads, self.dropout_p if self.training else 0.0)


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

    def forward(self, x: torch.Tensor, layout: PaddedLayout | UnpaddedLayout) -> torch.Tensor:
        x = self.attention.output(self.attention.self(self.PreAttentionLayerNorm(x), layout), x)
        return self.output(self.intermediate(self.PreFeedForwardLayerNorm(x)), x)


class BertEncoder(nn.Module):
    """The stack of layers (plus the final LayerNorm in pre-ln)."""

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.FinalLayerNorm = make_norm(config) if config.pre_ln else nn.Identity()

    def forward(self, x: torch.Tensor, layout: PaddedLayout | UnpaddedLayout) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, layout)
        return self.FinalLayerNorm(x)


class BertPooler(nn.Module):
    """tanh(dense(hidden state of the first token)), as in BERT; takes the ``[B, d]`` first-token states."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, first_tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(first_tokens))


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
    """Masked-LM head. ``decoder`` is tied to the word embeddings and its bias to ``bias`` by the model's
    ``_tied_weights_keys`` (``post_init``), so a checkpoint without an MLM head loads with a fresh zero bias.

    The projection runs over the padded vocabulary (a multiple of ``vocab_pad_multiple``,
    fast matmul shapes); the padding columns are sliced off, so they are never predicted.
    """

    def __init__(self, config):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.padded_vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))

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
