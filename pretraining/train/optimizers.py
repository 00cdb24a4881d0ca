"""Optimizers by name (``--optimizer_type``): adam, adamw, lamb, adafactor, lion, stableadamw, sfadamw, muon.

:func:`build_optimizer` puts biases and normalisation weights in a group without
weight decay and everything else in a group with ``--weight_decay``, then calls the
builder registered in :data:`OPTIMIZERS`:

* ``adam``: ``torch.optim.Adam``, weight decay as an L2 term added to the gradient.
* ``adamw``: ``torch.optim.AdamW``, decoupled weight decay.
* ``lamb``: :class:`Lamb`, DeepSpeed FusedLamb's update on any device (see there),
  with ``--adam_beta1/--adam_beta2/--adam_eps`` (academic-budget-bert silently used
  FusedLamb's 0.9/0.999/1e-8), ``--bias_correction``, ``--max_coeff``, ``--min_coeff``;
  ``use_fused=True`` on a GPU uses DeepSpeed's FusedLamb kernel itself.
* ``customized``: the seed's ``--optimizer_conf_file`` (sgd with momentum/nesterov, adam,
  adamw, or the do-nothing ``dummy``; :mod:`pretraining.train.custom_curves`).
* ``adafactor``: ``transformers.optimization.Adafactor`` with the external learning
  rate (``relative_step=False, scale_parameter=False``) and no first moment, as
  academic-budget-bert (which ignores the Adam betas for it); ``--adafactor_beta1``
  asks for a first moment.

The modern optimizers, from pytorch-optimizer (each with ``--lr``, ``--weight_decay`` and the Adam betas/eps):

* ``lion``: :class:`pytorch_optimizer.Lion` (Chen et al. 2023): the sign of an interpolated momentum, decoupled
  decay; betas ``--adam_beta1/--adam_beta2`` (its authors' 0.9/0.99; the LR ~3-10x below AdamW's).
* ``stableadamw``: :class:`pytorch_optimizer.StableAdamW` (Wortsman et al. 2023): AdamW whose step is divided per
  tensor by max(1, RMS(g / sqrt(v))) (update clipping instead of gradient clipping).
* ``sfadamw``: :class:`pytorch_optimizer.ScheduleFreeAdamW` (Defazio et al. 2024): no decay schedule (use
  ``--curve constant``); the weights it trains on are an interpolation, and validation, checkpoints' exports and
  the exported model use its averaged weights (the engines call its ``eval()``/``train()``).
* ``muon``: :class:`pytorch_optimizer.Muon` (Jordan et al. 2024; Moonlight's update scaling, so it shares AdamW's
  LR and decay): the orthogonalised momentum on the encoder's 2-D hidden matrices, AdamW on embeddings, norms,
  biases and the task/MLM heads (:func:`muon_parameter_groups`), as its authors prescribe.

Optimizers whose rule is per tensor (LAMB, Adafactor, StableAdamW, Muon) cannot run under ZeRO 1/2
(:func:`zero_sharding_problem`); schedule-free AdamW's weight switch needs the module's own parameters, so on
DeepSpeed it runs only at fp32 ZeRO 0 (:func:`deepspeed_problem`).

``use_fused``: None (default) picks torch's fused Adam/AdamW kernels when every
parameter is on one CUDA GPU or every parameter is on the CPU (build the optimizer after
moving the model; on the CPU the fused step is 3-4.5x faster than the multi-tensor one,
benchmarks/bench_optim.py), torch's default implementations otherwise, and :class:`Lamb`
(multi-tensor kernels) for LAMB; True forces fused kernels (FusedLamb for LAMB, GPU
only), False forbids them.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from pretraining.errors import UserError

NO_DECAY_MODULES = (nn.LayerNorm, nn.RMSNorm)


def lamb_coefficients_problem(min_coeff: float, max_coeff: float) -> str | None:
    """What is wrong with LAMB's trust-ratio clip (``--min_coeff``, ``--max_coeff``), or None."""
    if 0.0 <= min_coeff <= max_coeff:
        return None
    return f"LAMB needs 0 <= --min_coeff <= --max_coeff (got {min_coeff}, {max_coeff})"


def fused_lamb_problem(optimizer_type: str, use_fused: bool | None) -> str | None:
    """``--fused_optimizer true`` with lamb is DeepSpeed's FusedLamb, a CUDA kernel: the problem on a machine
    without a GPU, else None."""
    if use_fused and optimizer_type == "lamb" and not torch.cuda.is_available():
        return ("--fused_optimizer with lamb is DeepSpeed's FusedLamb, which needs a CUDA GPU: drop "
                "--fused_optimizer (the torch LAMB computes the same update)")
    return None


#: optimizers whose update of a tensor depends on the whole tensor (not element by element), and why ZeRO breaks it
PER_TENSOR_RULES = {
    "lamb": "LAMB scales each layer's update by the ratio of that layer's weight norm to its update norm",
    "adafactor": "Adafactor factors each matrix's second moment into its row and column means",
    "stableadamw": "StableAdamW divides each tensor's step by the RMS of its normalised gradient",
    "muon": "Muon orthogonalises each hidden matrix's momentum as a whole (Newton-Schulz on the matrix)",
}

#: optimizers that keep two sets of weights and switch the module's parameters between them (train/eval)
WEIGHT_SWITCHING = {"sfadamw": "schedule-free AdamW evaluates and exports its averaged weights by swapping them into "
                               "the module's parameters (optimizer.eval()/train())"}


def zero_sharding_problem(optimizer_type: str, zero_stage: int) -> str | None:
    """ZeRO stage 1 or 2 with an optimizer whose rule is per tensor: the problem, else None.

    ZeRO > 0 flattens each parameter group into one vector and gives each rank a slice of it; the optimizer then
    steps on that slice as if it were one tensor. An element-wise rule (Adam, AdamW, SGD) computes the same update;
    a per-tensor rule computes it over slices that cut across layers, so the update changes with the world size.
    (DeepSpeed itself refuses untested optimizers under ZeRO; this project allows the element-wise ones it tests.)
    """
    why = PER_TENSOR_RULES.get(str(optimizer_type).lower())
    if not zero_stage or why is None:
        return None
    return (f"--optimizer_type {optimizer_type} cannot run under ZeRO stage {zero_stage}: {why}, and ZeRO stages 1-2 "
            "flatten every parameter group into one vector sliced across ranks, so the rule would be computed over "
            "slices that cut across layers (and change with the number of GPUs). Use --zero_stage 0 (or adam/adamw)")


def deepspeed_problem(optimizer_type: str, precision: str, zero_stage: int) -> str | None:
    """Why ``optimizer_type`` cannot run on the DeepSpeed engine with this precision and ZeRO stage, else None."""
    problem = zero_sharding_problem(optimizer_type, zero_stage)
    why = WEIGHT_SWITCHING.get(str(optimizer_type).lower())
    if problem or why is None or (precision == "fp32" and not zero_stage):
        return problem
    return (f"--optimizer_type {optimizer_type} cannot run on DeepSpeed at {precision}, ZeRO stage {zero_stage}: {why}, "
            "but there DeepSpeed steps it on its own fp32 copies, so validation and the export would see the training "
            "weights. Run it without --deepspeed (the torch engine), or with --deepspeed at fp32 and --zero_stage 0")


def switch_weights(optimizer, mode: str) -> None:
    """``mode`` "train" or "eval": a weight-switching optimizer (schedule-free) swaps the module's parameters to its
    training or averaged weights; any other optimizer is left alone. Idempotent.

    The training weights are kept aside while evaluating and put back bit for bit (switching back by arithmetic, as
    the optimizer's own ``train()`` does, rounds them: a run that validated would drift from one that did not, and a
    resumed run would not continue exactly).
    """
    switch = getattr(optimizer, mode, None) if isinstance(optimizer, torch.optim.Optimizer) else None
    if not callable(switch):
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if mode == "eval":
        if getattr(optimizer, "_training_weights", None) is None and all(g.get("train_mode", True)
                                                                         for g in optimizer.param_groups):
            optimizer._training_weights = [p.detach().clone() for p in params]
        switch()
        return
    kept = getattr(optimizer, "_training_weights", None)
    switch()
    if kept is not None:
        with torch.no_grad():
            for p, weights in zip(params, kept):
                p.copy_(weights)
        optimizer._training_weights = None


class Lamb(torch.optim.Optimizer):
    """LAMB with the exact update of DeepSpeed's FusedLamb (academic-budget-bert's optimizer).

    Per parameter tensor ``p`` with gradient ``g``, at step ``t``::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        u = m / (sqrt(v) + eps) + weight_decay * p
        ratio = clip(||p|| / ||u||, min_coeff, max_coeff)   (1 when either norm is 0)
        step_size = lr * sqrt(1 - beta2**t) / (1 - beta1**t) if bias_correction else lr
        p = p - step_size * ratio * u

    Note that, like FusedLamb, bias correction scales the step rather than ``m`` and
    ``v`` (it cancels inside the trust ratio otherwise). State keys (``step``,
    ``exp_avg``, ``exp_avg_sq``) are FusedLamb's, so optimizer checkpoints carry over.
    The update runs on torch's multi-tensor (foreach) kernels.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True, max_coeff: float = 10.0,
                 min_coeff: float = 0.01):
        problem = lamb_coefficients_problem(min_coeff, max_coeff)
        if problem:
            raise UserError(problem)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        max_coeff=max_coeff, min_coeff=min_coeff)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One LAMB update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params)
        return loss

    def _update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("Lamb does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])

        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(exp_avgs, denominators)
        if group["weight_decay"]:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])

        weight_norms = torch.stack(torch._foreach_norm(params))
        update_norms = torch.stack(torch._foreach_norm(updates))
        ratios = (weight_norms / update_norms).clamp(group["min_coeff"], group["max_coeff"])
        ratios = torch.where((weight_norms > 0) & (update_norms > 0), ratios, torch.ones_like(ratios))
        step_sizes = [self._step_size(group, t) for t in steps]
        if len(set(step_sizes)) == 1:  # the usual case: a Python scalar, no host-to-device copy (a GPU sync)
            scales = ratios * -step_sizes[0]
        else:  # tensors whose step counts differ (some had no gradient at some steps)
            scales = (ratios * torch.tensor(step_sizes, dtype=ratios.dtype, device=ratios.device)).neg_()
        torch._foreach_mul_(updates, list(scales.unbind()))
        torch._foreach_add_(params, updates)

    @staticmethod
    def _step_size(group: dict, step: int) -> float:
        if not group["bias_correction"]:
            return group["lr"]
        beta1, beta2 = group["betas"]
        return group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases + LayerNorm/RMSNorm weights with no decay.

    Tied parameters appear once; frozen parameters (``requires_grad=False``) are left out.
    """
    no_decay = {id(p) for m in model.modules() if isinstance(m, NO_DECAY_MODULES) for p in m.parameters(recurse=False)}
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if name.endswith("bias") or id(p) in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _device_types(groups: Iterable[dict]) -> set[str]:
    """The device types the parameters are on ({"cuda"}: all on GPUs)."""
    return {p.device.type for g in groups for p in g["params"]}


def _adam_kwargs(args, groups, use_fused):
    # torch's fused Adam/AdamW kernels apply when all parameters are on CUDA, or all on the CPU
    fused = _device_types(groups) in ({"cuda"}, {"cpu"}) if use_fused is None else use_fused
    return dict(lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps, fused=True if fused else None)


def _adam(groups, args, use_fused):
    return torch.optim.Adam(groups, **_adam_kwargs(args, groups, use_fused))


def _adamw(groups, args, use_fused):
    return torch.optim.AdamW(groups, **_adam_kwargs(args, groups, use_fused))


def _lamb(groups, args, use_fused):
    kwargs = dict(lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps,
                  bias_correction=args.bias_correction, max_coeff=args.max_coeff, min_coeff=args.min_coeff)
    if use_fused:
        return _deepspeed_fused_lamb(groups, kwargs)
    return Lamb(groups, **kwargs)


def _deepspeed_fused_lamb(groups, kwargs):
    from deepspeed.ops.lamb import FusedLamb

    return FusedLamb(groups, **kwargs)


def _adafactor(groups, args, use_fused):
    from transformers.optimization import Adafactor

    return Adafactor(groups, lr=args.lr, beta1=args.adafactor_beta1, relative_step=False,
                     scale_parameter=False, warmup_init=False)


def _lion(groups, args, use_fused):
    from pytorch_optimizer import Lion

    return Lion(groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), weight_decouple=True)


def _stableadamw(groups, args, use_fused):
    from pytorch_optimizer import StableAdamW

    return StableAdamW(groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps,
                       weight_decouple=True, kahan_sum=True)


def _sfadamw(groups, args, use_fused):
    from pytorch_optimizer import ScheduleFreeAdamW

    # the warmup is the LR schedule's (--warmup_proportion / --num_warmup_steps), not the optimizer's own
    return ScheduleFreeAdamW(groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps,
                             warmup_steps=0)


#: module-name parts of the layers Muon leaves to AdamW besides embeddings, norms and biases: the output heads
MUON_HEADS = frozenset({"cls", "classifier", "lm_head", "pooler", "qa_outputs", "head"})


def muon_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters Muon updates: the 2-D weights of the ``nn.Linear`` layers outside the heads
    (:data:`MUON_HEADS`); embeddings (and the MLM decoder tied to them), norms and biases stay with AdamW."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    names = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or MUON_HEADS & set(module_name.split(".")):
            continue
        if module.weight.requires_grad and module.weight.dim() == 2 and id(module.weight) not in tied:
            names.add(f"{module_name}.weight" if module_name else "weight")
    return names


def muon_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """:func:`parameter_groups` with the Muon matrices (:func:`muon_parameter_names`) split off the decayed group:
    ``use_muon`` True for them, False for the AdamW groups."""
    matrices = muon_parameter_names(model)
    if not matrices:
        raise UserError("--optimizer_type muon found no 2-D hidden matrix (nn.Linear outside the heads) to "
                        "orthogonalise: use adamw for this model")
    by_id = {id(p): name for name, p in model.named_parameters()}
    groups = []
    for group in parameter_groups(model, weight_decay):
        hidden = [p for p in group["params"] if by_id[id(p)] in matrices]
        rest = [p for p in group["params"] if by_id[id(p)] not in matrices]
        groups += [{**group, "params": ps, "use_muon": flag} for ps, flag in ((hidden, True), (rest, False)) if ps]
    return groups


def _muon(groups, args, use_fused):
    from pytorch_optimizer import Muon

    # use_adjusted_lr: Moonlight's scaling 0.2 * sqrt(max(rows, cols)) gives the orthogonal update AdamW's RMS, so
    # one --lr and --weight_decay serve both kinds of group (Liu et al. 2025, "Muon is scalable for LLM training")
    return Muon(groups, lr=args.lr, adamw_lr=args.lr, momentum=0.95, nesterov=True, use_adjusted_lr=True,
                weight_decouple=True,
                adamw_betas=(args.adam_beta1, args.adam_beta2), adamw_eps=args.adam_eps)


#: optimizers whose parameter groups are not parameter_groups()'s two
GROUPING = {"muon": muon_parameter_groups}


class DummyOptimizer(torch.optim.Optimizer):
    """The seed's ``dummy`` optimizer: it never changes a weight (a baseline of the data and loop alone)."""

    def __init__(self, groups, lr: float):
        super().__init__(groups, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        return closure() if closure is not None else None


def _customized(groups, args, use_fused):
    """``--optimizer_type customized``: the seed's ``--optimizer_conf_file`` (sgd, adam, adamw, dummy)."""
    from pretraining.train.custom_curves import optimizer_spec

    name, extra = optimizer_spec(args.optimizer_conf_file)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, **extra)
    if name == "dummy":
        return DummyOptimizer(groups, lr=args.lr)
    return OPTIMIZERS[name](groups, args, use_fused)


#: name -> builder(param_groups, OptimizerArguments, use_fused) -> torch.optim.Optimizer
OPTIMIZERS: dict[str, Callable] = {"adam": _adam, "adamw": _adamw, "lamb": _lamb, "adafactor": _adafactor,
                                   "lion": _lion, "stableadamw": _stableadamw, "sfadamw": _sfadamw, "muon": _muon,
                                   "customized": _customized}


def build_optimizer(model: nn.Module, args, use_fused: bool | None = None) -> torch.optim.Optimizer:
    """The ``args.optimizer_type`` optimizer over ``model``'s trainable parameters.

    ``args`` is an :class:`~pretraining.train.args.OptimizerArguments` (its ``validate`` checked the name and the
    coefficients; :func:`fused_lamb_problem` the fused kernel).
    """
    name = str(args.optimizer_type).lower()
    groups = GROUPING.get(name, parameter_groups)(model, args.weight_decay)
    if not groups:
        raise UserError("the model has no trainable parameters (all have requires_grad=False)")
    return OPTIMIZERS[name](groups, args, use_fused)
