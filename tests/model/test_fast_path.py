"""The fast path (unpadding, fused QKV, compiled layers) computes what the plain path computes.

Every comparison loads one set of weights into both models and checks the loss and
every parameter's gradient, on padded batches; CUDA runs the same checks when present.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pretraining.train.args import ModelArguments
from pretraining.errors import UserError
from pretraining.model.layers import PaddedLayout, UnpaddedLayout, make_layout
from pretraining.checkpoints.export import export_pretrained
from pretraining.model.modeling import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    build_config,
)

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAST = dict(unpad_inputs=True, fused_qkv=True, sparse_mask_prediction=True, vocab_pad_multiple=64)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def padded_batch(lengths=(16, 11, 5, 2, 16, 9), seq=16, vocab=120, seed=0, device="cpu") -> dict:
    """Right-padded ids, segments, MLM labels (-100 = not predicted) and NSP labels."""
    g = torch.Generator().manual_seed(seed)
    size = len(lengths)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, vocab, (size, seq), generator=g) * mask
    segments = ((torch.arange(seq) >= seq // 2).long() * mask)
    chosen = (torch.rand(size, seq, generator=g) < 0.25) & mask.bool()
    chosen[:, 0] = True
    labels = torch.where(chosen, torch.randint(0, vocab, (size, seq), generator=g), -100)
    nsp = torch.randint(0, 2, (size,), generator=g)
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=segments, labels=labels, next_sentence_label=nsp)
    return {k: v.to(device) for k, v in batch.items()}


def twins(plain: dict, fast: dict, cls=BertForPreTraining, device="cpu"):
    """Two models with identical weights: one with ``plain`` config fields, one with ``fast``."""
    torch.manual_seed(0)
    a = cls(BertConfig(**{**TINY, **plain})).to(device)
    b = cls(BertConfig(**{**TINY, **fast})).to(device)
    state = b.state_dict()
    for key, tensor in a.state_dict().items():  # a padded vocabulary keeps the plain rows first
        state[key][: tensor.shape[0]] = tensor
    b.load_state_dict(state)
    return a, b


def loss_and_grads(model, batch, dtype=None) -> tuple[torch.Tensor, dict]:
    with torch.autocast(batch["input_ids"].device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = model(**batch).loss
    model.zero_grad(set_to_none=True)
    loss.backward()
    vocab, padded = model.config.vocab_size, model.config.padded_vocab_size
    grads = {n: p.grad[:vocab] if p.shape[0] == padded else p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads


def encoder_input_shapes(model) -> list:
    """Records the shape of the hidden states entering the first encoder layer on each call."""
    shapes = []
    model.bert.encoder.layer[0].register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


def assert_same_training_signal(a, b, batch, atol=1e-5, rtol=1e-4, dtype=None):
    loss_a, grads_a = loss_and_grads(a, batch, dtype)
    loss_b, grads_b = loss_and_grads(b, batch, dtype)
    torch.testing.assert_close(loss_b, loss_a, atol=atol, rtol=rtol)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=atol, rtol=rtol, msg=name)
    return loss_a


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["repad", "nested"])
@pytest.mark.parametrize("mode", ["pre-ln", "post-ln"])
def test_unpadded_encoder_gives_the_same_loss_and_gradients(device, kernel, mode):
    common = dict(encoder_ln_mode=mode, sparse_mask_prediction=True)
    a, b = twins(common, dict(common, unpad_inputs=True, unpadded_attention=kernel), device=device)
    shapes = encoder_input_shapes(b)
    batch = padded_batch(device=device)
    assert_same_training_signal(a, b, batch)
    assert shapes == [(int(batch["attention_mask"].sum()), 32)]


@pytest.mark.parametrize("device", DEVICES)
def test_every_fast_path_flag_together_fp32(device):
    a, b = twins(dict(encoder_ln_mode="pre-ln"), dict(encoder_ln_mode="pre-ln", **FAST), device=device)
    assert b.bert.embeddings.word_embeddings.weight.shape[0] == 128
    loss = assert_same_training_signal(a, b, padded_batch(device=device))
    assert torch.isfinite(loss) and loss > 1.0


def assert_same_signal_in_half_precision(reference: tuple, model, batch, dtype):
    """Loss within half-precision rounding of the reference's; every gradient with the same direction and size."""
    loss, grads = loss_and_grads(model, batch, dtype)
    torch.testing.assert_close(loss.float(), reference[0].float(), atol=3e-2, rtol=1e-2)
    for name, grad in reference[1].items():
        if name.endswith("attention.self.key.bias"):  # softmax cancels it: its gradient is 0 plus rounding noise
            continue
        got = grads[name].flatten().float()
        assert F.cosine_similarity(got, grad.flatten().float(), dim=0) > 0.99, name
        assert abs(got.norm() / grad.norm() - 1) < 0.05, name


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_under_bf16_autocast(device):
    """bf16 autocast: the fast path against the plain path in bf16 and in fp32."""
    a, b = twins(dict(encoder_ln_mode="pre-ln"), dict(encoder_ln_mode="pre-ln", **FAST), device=device)
    batch = padded_batch(device=device)
    assert_same_signal_in_half_precision(loss_and_grads(a, batch, torch.bfloat16), b, batch, torch.bfloat16)
    assert_same_signal_in_half_precision(loss_and_grads(a, batch), b, batch, torch.bfloat16)


def test_fused_qkv_keeps_hugging_face_parameter_names():
    a, b = twins({}, dict(fused_qkv=True))
    assert list(a.state_dict()) == list(b.state_dict())
    assert "bert.encoder.layer.0.attention.self.query.weight" in b.state_dict()
    assert_same_training_signal(a, b, padded_batch())


def test_real_shard_batch(tiny_shards, bert_tokenizer):
    """A batch of real Wikipedia shard rows (static masks, real vocabulary) through both paths."""
    from pretraining.data.collator import PretrainingCollator
    from pretraining.data.shards import list_shards, read_shard

    rows = read_shard(list_shards(tiny_shards, "train")[0])
    collate = PretrainingCollator(len(bert_tokenizer), bert_tokenizer.mask_token_id, bert_tokenizer.all_special_ids)
    batch = collate({k: v[:16] for k, v in rows.items()})
    batch["next_sentence_label"] = torch.arange(16) % 2
    assert (batch["attention_mask"].sum(1) < 64).any(), "the real rows should include padded ones"
    size = dict(vocab_size=len(bert_tokenizer), encoder_ln_mode="pre-ln")
    a, b = twins(size, {**size, **FAST})
    assert_same_training_signal(a, b, batch)


def test_per_position_outputs_use_the_padded_path_and_classification_unpads():
    """BertModel states and dense MLM logits equal transformers' at padding positions too; the rest unpads."""
    batch = padded_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    tokens = int(inputs["attention_mask"].sum())
    a, b = twins({}, dict(unpad_inputs=True), cls=BertModel)
    with torch.no_grad():
        want, got = a(**inputs), b(**inputs)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-5, rtol=1e-5)

    a, b = twins({}, dict(unpad_inputs=True, sparse_mask_prediction=True))
    shapes = encoder_input_shapes(b)
    with torch.no_grad():
        torch.testing.assert_close(b(**inputs).prediction_logits, a(**inputs).prediction_logits, atol=1e-5, rtol=1e-5)
        b(**batch)
    assert shapes == [(6, 16, 32), (tokens, 32)]  # dense logits: padded; sparse MLM loss: unpadded

    a, b = twins(dict(num_labels=3), dict(num_labels=3, unpad_inputs=True, fused_qkv=True),
                 cls=BertForSequenceClassification)
    shapes = encoder_input_shapes(b)
    assert_same_training_signal(a, b, {**inputs, "labels": torch.tensor([0, 1, 2, 0, 1, 2])})
    assert shapes == [(tokens, 32)]


def test_unpadded_layout_indices_positions_and_round_trip():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 1]])  # the last row has a hole
    layout = make_layout(mask, True)
    assert isinstance(layout, UnpaddedLayout)
    assert layout.indices.tolist() == [0, 1, 2, 4, 5, 8, 10, 11]
    assert layout.cu_seqlens.tolist() == [0, 3, 5, 8] and layout.cu_seqlens.dtype == torch.int32
    assert layout.positions(mask).tolist() == [0, 1, 2, 0, 1, 0, 2, 3]
    assert layout.max_seqlen == 3
    values = torch.arange(12.0).reshape(3, 4)
    packed = layout.gather(values)
    assert packed.tolist() == [0, 1, 2, 4, 5, 8, 10, 11]
    assert torch.equal(layout.repad(packed), values * mask)
    assert layout.first_tokens(packed).tolist() == [0, 4, 8]


def test_mask_with_holes_matches_masked_attention():
    batch = padded_batch()
    batch["attention_mask"][0, 3] = 0  # a padding token in the middle of a sequence
    batch["labels"][0, 3] = -100  # (a label on padding is scored only by the padded path)
    a, b = twins({}, dict(unpad_inputs=True, sparse_mask_prediction=True))
    assert_same_training_signal(a, b, batch)


def test_batches_without_padding_or_with_an_empty_row_use_the_padded_layout():
    full = torch.ones(3, 8, dtype=torch.long)
    assert isinstance(make_layout(full, True), PaddedLayout) and make_layout(full, True).mask is None
    empty_row = full.clone()
    empty_row[1] = 0
    assert isinstance(make_layout(empty_row, True), PaddedLayout)
    assert isinstance(make_layout(None, True), PaddedLayout)
    batch = padded_batch(lengths=(16, 16, 16))
    a, b = twins({}, dict(unpad_inputs=True, sparse_mask_prediction=True))
    assert_same_training_signal(a, b, batch)


def test_varlen_kernel_rules_are_user_errors():
    with pytest.raises(UserError, match="no attention dropout"):
        BertConfig(**{**TINY, "attention_probs_dropout_prob": 0.1}, unpad_inputs=True, unpadded_attention="varlen")
    with pytest.raises(UserError, match="unpadded_attention 'flash' is not one of: repad, nested, varlen"):
        BertConfig(**TINY, unpadded_attention="flash")
    if not torch.cuda.is_available():
        model = BertForPreTraining(BertConfig(**TINY, unpad_inputs=True, unpadded_attention="varlen",
                                           sparse_mask_prediction=True))
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            model(**padded_batch())


@pytest.mark.slow
def test_build_config_passes_the_fast_path_flags_and_export_drops_compile(tmp_path):
    args = ModelArguments(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                          unpad_inputs=True, unpadded_attention="nested", fused_qkv=True, torch_compile=True)
    config = build_config(args, vocab_size=120)
    assert (config.unpad_inputs, config.unpadded_attention, config.fused_qkv, config.torch_compile) == \
        (True, "nested", True, True)
    model = BertForPreTraining(config)
    assert all(layer._compiled_call_impl is not None for layer in model.bert.encoder.layer)
    plain_keys = list(BertForPreTraining(build_config(ModelArguments(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64), vocab_size=120)).state_dict())
    assert list(model.state_dict()) == plain_keys  # compiled layers keep their names (no _orig_mod)
    out = export_pretrained(model, None, tmp_path / "export")
    reloaded = BertConfig.from_pretrained(str(out))
    assert not reloaded.torch_compile and reloaded.unpad_inputs and reloaded.fused_qkv


@pytest.mark.slow
def test_compiled_unpadded_layers_trace_whole_and_match_eager():
    """Each layer traces as one graph (no breaks) for changing token counts, with eager's numbers.

    AOTAutograd with the eager backend traces forward and backward exactly as inductor
    receives them, without generating C++ (minutes on a small CPU): the GPU check runs inductor.
    """
    import torch._dynamo

    torch._dynamo.reset()
    a, b = twins(dict(encoder_ln_mode="pre-ln"), dict(encoder_ln_mode="pre-ln", **FAST))
    for layer in b.bert.encoder.layer:
        layer.compile(backend="aot_eager", fullgraph=True, dynamic=True)
    for seed, lengths in enumerate([(16, 11, 5, 2), (9, 16, 3, 7), (12, 12, 12, 1)]):
        assert_same_training_signal(a, b, padded_batch(lengths=lengths, seed=seed))


def test_benchmark_flop_count_matches_the_formula():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_pretrain import CONFIGS, synthetic_rows, useful_flops

    cfg = CONFIGS["tiny"]
    batch = {"attention_mask": torch.tensor([[1] * 128, [1] * 28 + [0] * 100]),
             "labels": torch.tensor([[7] * 20 + [-100] * 108, [7] * 4 + [-100] * 124])}
    L, d, f, V = 2, 128, 512, 30522
    tokens, predicted = 156, 24
    s_eff = (128**2 + 28**2) / tokens
    expected = tokens * (6 * L * (4 * d * d + 2 * d * f) + 12 * L * s_eff * d + 6 * (predicted / tokens) * (d * d + d * V))
    assert useful_flops(batch, cfg) == pytest.approx(expected, rel=1e-12)
    rows = synthetic_rows(128, 2000)
    lengths = rows["input_mask"].sum(1)
    assert 0.7 < (lengths == 128).mean() < 0.85 and lengths.min() >= 2
    predicted = (rows["masked_lm_positions"] > 0).sum(1)
    assert predicted.max() <= 20 and (predicted >= 1).all()
    assert (rows["masked_lm_positions"] < lengths[:, None]).all()


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kernel", ["repad", "nested", "varlen"])
def test_cuda_unpadded_kernels_under_autocast(kernel, dtype):
    a, b = twins(dict(encoder_ln_mode="pre-ln"), dict(encoder_ln_mode="pre-ln", **FAST, unpadded_attention=kernel),
                 device="cuda")
    batch = padded_batch(device="cuda")
    assert_same_signal_in_half_precision(loss_and_grads(a, batch), b, batch, dtype)


@cuda_only
def test_cuda_inductor_compiled_fast_path_matches_eager():
    import torch._dynamo

    torch._dynamo.reset()
    a, b = twins(dict(encoder_ln_mode="pre-ln"), dict(encoder_ln_mode="pre-ln", **FAST, torch_compile=True),
                 device="cuda")
    for seed, lengths in enumerate([(16, 11, 5, 2), (9, 16, 3, 7), (12, 12, 12, 1)]):
        assert_same_training_signal(a, b, padded_batch(lengths=lengths, seed=seed, device="cuda"), atol=1e-4, rtol=1e-3)
