"""pretraining.train.optimizers: each optimizer's first steps against a float64 reference of its published rule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from pretraining.train.args import OptimizerArguments
from pretraining.errors import UserError
from pretraining.model.modeling import BertConfig, BertForPreTraining
from pretraining.train.optimizers import OPTIMIZERS, Lamb, build_optimizer, parameter_groups

STEPS = 3


class Tiny(nn.Module):
    """A matrix, a bias-carrying layer and a LayerNorm: both parameter groups, factored and unfactored shapes."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(6, 5)
        self.LayerNorm = nn.LayerNorm(5)
        self.out = nn.Linear(5, 4, bias=False)


def make_model(seed=0) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny()
    with torch.no_grad():
        model.LayerNorm.weight.add_(0.1 * torch.randn(5))
        model.LayerNorm.bias.add_(0.1 * torch.randn(5))
    return model


def gradients(model, step):
    """A fixed, distinct gradient per parameter and step (replaces a backward pass)."""
    g = torch.Generator().manual_seed(100 + step)
    return {name: torch.randn(p.shape, generator=g, dtype=torch.float64) * (1 + step) for name, p in model.named_parameters()}


def run(model, optimizer, steps=STEPS, start=0):
    for step in range(start, start + steps):
        for name, p in model.named_parameters():
            p.grad = gradients(model, step)[name].to(p.device, p.dtype)
        optimizer.step()


def args(name, **overrides) -> OptimizerArguments:
    values = dict(optimizer_type=name, lr=0.01, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.98, adam_eps=1e-6)
    values.update(overrides)
    return OptimizerArguments(**values)


def decayed(name):
    return name.endswith("weight") and "LayerNorm" not in name


def reference(model, update_rule, opt_args):
    """Apply ``update_rule(p, g, state, step, wd, a)`` in float64 to copies of the parameters."""
    params = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    states = {n: {} for n in params}
    for step in range(STEPS):
        grads = gradients(model, step)
        for name in params:
            wd = opt_args.weight_decay if decayed(name) else 0.0
            params[name] = update_rule(params[name], grads[name], states[name], step + 1, wd, opt_args)
    return params, states


def adam_l2(p, g, s, t, wd, a):
    g = g + wd * p
    s["m"] = a.adam_beta1 * s.get("m", 0) + (1 - a.adam_beta1) * g
    s["v"] = a.adam_beta2 * s.get("v", 0) + (1 - a.adam_beta2) * g * g
    m_hat, v_hat = s["m"] / (1 - a.adam_beta1**t), s["v"] / (1 - a.adam_beta2**t)
    return p - a.lr * m_hat / (v_hat.sqrt() + a.adam_eps)


def adamw(p, g, s, t, wd, a):
    p = p * (1 - a.lr * wd)
    return adam_l2(p, g, s, t, 0.0, a)


def lamb(p, g, s, t, wd, a):
    """LAMB (You et al. 2019, Alg. 2) with FusedLamb's trust-ratio clip and step-size bias correction."""
    s["m"] = a.adam_beta1 * s.get("m", 0) + (1 - a.adam_beta1) * g
    s["v"] = a.adam_beta2 * s.get("v", 0) + (1 - a.adam_beta2) * g * g
    r = s["m"] / (s["v"].sqrt() + a.adam_eps) + wd * p
    w_norm, r_norm = p.norm(), r.norm()
    raw = float(w_norm / r_norm) if w_norm > 0 and r_norm > 0 else 1.0
    ratio = min(max(raw, a.min_coeff), a.max_coeff)
    s["clipped"] = s.get("clipped", False) or ratio != raw
    lr = a.lr * math.sqrt(1 - a.adam_beta2**t) / (1 - a.adam_beta1**t) if a.bias_correction else a.lr
    return p - lr * ratio * r


def adafactor(p, g, s, t, wd, a):
    """Adafactor (Shazeer & Stern 2018, Alg. 4/5): factored second moment for matrices, RMS clip d=1, beta1 momentum."""
    beta2 = 1 - t ** -0.8
    g2 = g * g + 1e-30
    if p.dim() >= 2:
        s["r"] = beta2 * s.get("r", 0) + (1 - beta2) * g2.mean(-1)
        s["c"] = beta2 * s.get("c", 0) + (1 - beta2) * g2.mean(-2)
        v = torch.outer(s["r"], s["c"]) / s["r"].mean()
    else:
        s["v"] = beta2 * s.get("v", 0) + (1 - beta2) * g2
        v = s["v"]
    u = g / v.sqrt()
    u = u / max(1.0, float(u.pow(2).mean().sqrt()))
    if a.adafactor_beta1 is None:  # academic-budget-bert's Adafactor: no first moment
        return p - a.lr * wd * p - a.lr * u
    s["m"] = a.adafactor_beta1 * s.get("m", 0) + (1 - a.adafactor_beta1) * a.lr * u
    return p - a.lr * wd * p - s["m"]


def lion(p, g, s, t, wd, a):
    """Lion (Chen et al. 2023, Alg. 2): the sign of beta1-interpolated momentum, decoupled decay, beta2 momentum."""
    m = s.get("m", torch.zeros_like(p))
    update = torch.sign(a.adam_beta1 * m + (1 - a.adam_beta1) * g)
    s["m"] = a.adam_beta2 * m + (1 - a.adam_beta2) * g
    return p * (1 - a.lr * wd) - a.lr * update


def stableadamw(p, g, s, t, wd, a):
    """StableAdamW (Wortsman et al. 2023, Alg. 2): AdamW with debiased betas and the step divided per tensor by
    max(1, RMS(g / sqrt(v)))."""
    def debiased(beta):
        return beta * (1 - beta ** (t - 1)) / (1 - beta**t)

    b1, b2 = debiased(a.adam_beta1), debiased(a.adam_beta2)
    s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
    rms = float((g * g / s["v"].clamp(min=a.adam_eps**2)).mean().sqrt())
    lr = a.lr / max(1.0, rms)
    return p * (1 - lr * wd) - lr * s["m"] / (s["v"].sqrt() + a.adam_eps)


def sfadamw(p, g, s, t, wd, a):
    """Schedule-free AdamW (Defazio et al. 2024, Alg. 1; no warmup, c_t = lr_max^2 / sum lr_max^2): ``p`` is the
    interpolation y the gradients are taken at; z the base iterate; x the average (stored in s["x"])."""
    y = p
    z, x = s.get("z", p), s.get("x", p)
    s["v"] = a.adam_beta2 * s.get("v", 0) + (1 - a.adam_beta2) * g * g
    update = g / ((s["v"] / (1 - a.adam_beta2**t)).sqrt() + a.adam_eps) + wd * y
    s["weights"] = s.get("weights", 0.0) + a.lr**2
    c = a.lr**2 / s["weights"]
    s["z"] = z - a.lr * update
    s["x"] = (1 - c) * x + c * s["z"]
    return (1 - a.adam_beta1) * s["z"] + a.adam_beta1 * s["x"]


CASES = {
    "lion": (args("lion", lr=0.003, adam_beta2=0.99), lion),
    "stableadamw": (args("stableadamw"), stableadamw),
    "sfadamw": (args("sfadamw"), sfadamw),
    "adam": (args("adam"), adam_l2),
    "adamw": (args("adamw"), adamw),
    "lamb": (args("lamb", max_coeff=0.3, min_coeff=0.01), lamb),
    "lamb_bias_corrected": (args("lamb", bias_correction=True, max_coeff=10.0, min_coeff=0.5), lamb),
    "adafactor": (args("adafactor", lr=0.05), adafactor),
    "adafactor_momentum": (args("adafactor", lr=0.05, adafactor_beta1=0.9), adafactor),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_steps_match_the_published_update(case):
    opt_args, rule = CASES[case]
    model = make_model()
    expected, states = reference(model, rule, opt_args)
    run(model, build_optimizer(model, opt_args))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), expected[name], atol=1e-6, rtol=1e-5, msg=name)
    if rule is lamb:  # the trust-ratio clip must bind for some tensor, or it is not tested
        assert any(state["clipped"] for state in states.values())


def test_schedule_free_adamw_evaluates_and_exports_its_average():
    """eval() puts the averaged weights x into the module (validation, export), train() the interpolation y back."""
    from pretraining.train.optimizers import switch_weights

    opt_args = args("sfadamw")
    model = make_model()
    _, states = reference(model, sfadamw, opt_args)
    optimizer = build_optimizer(model, opt_args)
    run(model, optimizer)
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    switch_weights(optimizer, "eval")
    switch_weights(optimizer, "eval")  # idempotent
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), states[name]["x"], atol=1e-6, rtol=1e-5, msg=name)
        assert not torch.allclose(p, trained[name])
    switch_weights(optimizer, "train")
    for name, p in model.named_parameters():  # bit for bit (the optimizer's own train() rounds them)
        assert torch.equal(p, trained[name]), name
    switch_weights(torch.optim.AdamW(make_model().parameters()), "eval")  # any other optimizer: nothing happens


def bert(**overrides):
    config = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  encoder_ln_mode="pre-ln")
    torch.manual_seed(0)
    return BertForPreTraining(BertConfig(**{**config, **overrides}))


def test_muon_takes_the_encoders_hidden_matrices_and_leaves_the_rest_to_adamw():
    from pretraining.train.optimizers import muon_parameter_names

    model = bert()
    names = muon_parameter_names(model)
    assert names == {f"bert.encoder.layer.{i}.{m}.weight" for i in range(2) for m in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")}
    optimizer = build_optimizer(model, args("muon"))
    flags = {id(p): g["use_muon"] for g in optimizer.param_groups for p in g["params"]}
    assert sorted(n for n, p in model.named_parameters() if flags[id(p)]) == sorted(names)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(decay[id(p)] == (0.0 if n.endswith("bias") or "LayerNorm" in n else 0.1)
               for n, p in model.named_parameters())


def test_muon_matches_torch_muon_on_the_matrices_and_torch_adamw_elsewhere():
    """Our muon = torch.optim.Muon (Moonlight's match_rms_adamw LR scaling) on the hidden matrices + torch AdamW on
    embeddings, norms, biases and heads, at the same LR and decay."""
    from pretraining.train.optimizers import muon_parameter_names

    opt_args = args("muon", lr=0.01, weight_decay=0.1)
    ours, theirs = bert(), bert()
    matrices = muon_parameter_names(theirs)
    named = dict(theirs.named_parameters())
    decayed_rest = [p for n, p in named.items() if n not in matrices and decayed(n)]
    plain_rest = [p for n, p in named.items() if n not in matrices and not decayed(n)]
    muon = torch.optim.Muon([named[n] for n in sorted(matrices)], lr=0.01, weight_decay=0.1, momentum=0.95,
                            nesterov=True, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": decayed_rest, "weight_decay": 0.1}, {"params": plain_rest, "weight_decay": 0.0}],
                              lr=0.01, betas=(0.9, 0.98), eps=1e-6)

    class Both:
        def step(self):
            muon.step()
            adamw.step()

    run(ours, build_optimizer(ours, opt_args))
    run(theirs, Both())
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)
    moved = [n for n in matrices if not torch.allclose(dict(ours.named_parameters())[n], dict(bert().named_parameters())[n])]
    assert sorted(moved) == sorted(matrices)


def test_muon_refuses_a_model_without_hidden_matrices():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = nn.Linear(4, 2)

    with pytest.raises(UserError, match="no 2-D hidden matrix"):
        build_optimizer(Heads(), args("muon"))


def test_lamb_matches_pytorch_optimizer_lamb_without_clipping():
    from pytorch_optimizer import Lamb as ReferenceLamb

    ours, theirs = make_model(), make_model()
    groups = lambda m: [{"params": list(m.parameters()), "weight_decay": 0.05}]
    a = Lamb(groups(ours), lr=0.01, betas=(0.9, 0.98), eps=1e-8, bias_correction=False, max_coeff=1e9, min_coeff=0.0)
    b = ReferenceLamb(groups(theirs), lr=0.01, betas=(0.9, 0.98), eps=1e-8, weight_decouple=False, adam_debias=True,
                      max_grad_norm=0.0)
    run(ours, a)
    run(theirs, b)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_lamb_keeps_a_step_count_per_tensor():
    """A tensor without a gradient at some step is skipped and its bias correction uses its own step count."""
    torch.manual_seed(3)
    shared = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in shared]
    settings = dict(lr=0.01, betas=(0.9, 0.98), weight_decay=0.01, bias_correction=True, max_coeff=10.0)
    together, separate = Lamb(shared, **settings), [Lamb([p], **settings) for p in alone]
    for step in range(4):
        for i, (p, q) in enumerate(zip(shared, alone)):
            grad = None if (i == 1 and step == 0) else torch.randn(p.shape, generator=torch.Generator().manual_seed(
                10 * step + i))
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        together.step()
        for optimizer in separate:
            optimizer.step()
    assert together.state[shared[1]]["step"] == 3
    for p, q in zip(shared, alone):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_adafactor_matches_transformers_adafactor():
    from transformers.optimization import Adafactor

    for beta1 in (None, 0.9):  # academic-budget-bert's (no first moment, the default), and with momentum
        ours, theirs = make_model(), make_model()
        opt_args = args("adafactor", lr=0.05, adam_beta1=0.9, adafactor_beta1=beta1)  # adam_beta1 never applies
        direct = Adafactor(parameter_groups(theirs, 0.1), lr=0.05, beta1=beta1, relative_step=False,
                           scale_parameter=False, warmup_init=False)
        optimizer = build_optimizer(ours, opt_args)
        run(ours, optimizer)
        run(theirs, direct)
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(p, q)
        assert all(("exp_avg" in state) == (beta1 is not None) for state in optimizer.state.values())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_resumes_identically(name, tmp_path):
    conf = tmp_path / "sgd.ini"  # the seed's customized optimizer: SGD with Nesterov momentum
    conf.write_text("[general]\ntype = sgd\n\n[hyperparams]\nmomentum = 0.9\nnesterov = yes\n")
    extra = {"optimizer_conf_file": str(conf)} if name == "customized" else {}
    straight = make_model()
    optimizer = build_optimizer(straight, args(name, **extra))
    run(straight, optimizer, steps=2)
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    run(straight, optimizer, steps=2, start=2)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = make_model(seed=1)
    resumed.load_state_dict(saved["model"])
    optimizer = build_optimizer(resumed, args(name, **extra))
    optimizer.load_state_dict(saved["optimizer"])
    run(resumed, optimizer, steps=2, start=2)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_no_weight_decay_on_biases_and_norms_of_bert():
    model = BertForPreTraining(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=32, layer_norm_type="rms_norm", encoder_ln_mode="pre-ln"))
    decay, plain = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in plain["params"])
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_fused_adamw_matches_foreach():
    a, b = make_model(), make_model()
    run(a, build_optimizer(a, args("adamw"), use_fused=True))
    run(b, build_optimizer(b, args("adamw"), use_fused=False))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_pick_torch_fused_kernels_on_the_cpu(name):
    """The fused step is 3-4.5x faster than the multi-tensor one on the CPU (benchmarks/bench_optim.py)."""
    assert build_optimizer(make_model(), args(name)).defaults["fused"] is True
    assert not build_optimizer(make_model(), args(name), use_fused=False).defaults["fused"]


def test_errors_name_the_fix():
    """Each rule has one owner: the flags' group (names, coefficients), fused_lamb_problem, the Lamb class."""
    from pretraining.cli import ArgumentChecker
    from pretraining.train.optimizers import Lamb, fused_lamb_problem

    check = ArgumentChecker()
    args("sgd", min_coeff=0.5, max_coeff=0.1).validate(check)
    assert check.errors == ["--optimizer_type 'sgd' is not one of: adafactor, adam, adamw, customized, lamb, lion, "
                            "muon, sfadamw, stableadamw",
                            "LAMB needs 0 <= --min_coeff <= --max_coeff (got 0.5, 0.1)"]
    with pytest.raises(UserError, match="--min_coeff <= --max_coeff"):
        Lamb(make_model().parameters(), min_coeff=0.5, max_coeff=0.1)
    assert fused_lamb_problem("adamw", True) is None and fused_lamb_problem("lamb", None) is None
    if not torch.cuda.is_available():
        assert "FusedLamb, which needs a CUDA GPU" in fused_lamb_problem("lamb", True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("bias_correction", [False, True])
def test_cuda_deepspeed_fused_lamb_matches_our_lamb(bias_correction):
    """The update academic-budget-bert trained with (DeepSpeed FusedLamb's kernel) equals :class:`Lamb`'s."""
    pytest.importorskip("deepspeed")
    opt_args = args("lamb", bias_correction=bias_correction, max_coeff=0.3, min_coeff=0.01)
    fused, ours = make_model().cuda(), make_model().cuda()
    run(fused, build_optimizer(fused, opt_args, use_fused=True))
    run(ours, build_optimizer(ours, opt_args))
    for (name, p), q in zip(fused.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
