#!/usr/bin/env python
"""Optimizer step alone: time per step of each optimizer implementation on real BERT parameters.

For a model config (``--configs``; the parameters of :class:`pretraining.model.modeling.BertForPreTraining`
built with the defaults), each implementation gets the same parameters and the same fixed
gradients (seeded), and ``optimizer.step()`` is timed alone: warm-up steps excluded, median over
windows of ``--steps`` steps, implementations interleaved window by window (load drifts on a
shared machine hit all alike); CUDA events on a GPU, ``--timer`` (wall or process CPU time) on a
CPU. Implementations (all through :func:`pretraining.train.optimizers.build_optimizer`):

* ``adamw-foreach`` / ``adamw-fused``, ``adam-foreach`` / ``adam-fused``: torch's multi-tensor
  and fused kernels (``use_fused`` False / True);
* ``adamw-auto``: what ``build_optimizer`` picks by default on this device;
* ``lamb``: :class:`pretraining.train.optimizers.Lamb` (multi-tensor); ``lamb-deepspeed``: DeepSpeed's
  FusedLamb (GPU with deepspeed installed only);
* ``adafactor``: transformers' Adafactor.

On a GPU with DeepSpeed it also checks that FusedLamb and :class:`Lamb` give the same parameters
after ``--agree_steps`` steps from the same state and gradients (the numerics academic-budget-bert
users rely on). Last line: ``RESULT device=<d> config=<c> fused_vs_foreach_adamw=<x>
lamb_vs_adamw=<y>`` (ratios of step times; > 1 = the first is slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from bench_pretrain import CONFIGS, model_arguments  # noqa: E402
from pretraining.train.args import OptimizerArguments  # noqa: E402
from pretraining.model.modeling import BertForPreTraining, build_config  # noqa: E402
from pretraining.train.optimizers import build_optimizer  # noqa: E402

#: name -> (optimizer_type, use_fused)
IMPLEMENTATIONS = {
    "adamw-foreach": ("adamw", False),
    "adamw-fused": ("adamw", True),
    "adamw-auto": ("adamw", None),
    "adam-foreach": ("adam", False),
    "adam-fused": ("adam", True),
    "lamb": ("lamb", None),
    "lamb-deepspeed": ("lamb", True),
    "adafactor": ("adafactor", None),
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def build_model(config: str, device: torch.device) -> BertForPreTraining:
    """bench_pretrain.py's model of that size, masked LM only (the pretraining default)."""
    torch.manual_seed(0)
    with device:
        return BertForPreTraining(build_config(model_arguments(CONFIGS[config], {"model_type": "bert-mlm"})))


def with_gradients(model: BertForPreTraining, seed: int = 1) -> BertForPreTraining:
    """Fixed, seeded gradients of a realistic scale on every parameter."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=generator) * 1e-3).to(p.device)
    return model


#: implementations asked for on a GPU that could not run there (the run then exits 1: nothing is dropped silently)
NOT_RUN: dict[str, str] = {}


def make_optimizer(name: str, model: BertForPreTraining):
    """``name``'s optimizer over ``model``, or None when it cannot run here (FusedLamb on a CPU; on a GPU, a
    missing deepspeed or kernel is recorded in NOT_RUN and printed)."""
    kind, use_fused = IMPLEMENTATIONS[name]
    on_gpu = next(model.parameters()).device.type == "cuda"
    if name == "lamb-deepspeed":
        if not on_gpu:
            return None
        try:
            import deepspeed  # noqa: F401
        except Exception as exc:  # ImportError, or a dependency of deepspeed's that fails at import
            NOT_RUN[name] = f"import deepspeed failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            print(f"{name}: NOT RUN ({NOT_RUN[name]})")
            return None
    args = OptimizerArguments(optimizer_type=kind, lr=1e-4, weight_decay=0.01, max_coeff=10.0)
    try:
        return build_optimizer(model, args, use_fused=use_fused)
    except (RuntimeError, ImportError) as exc:  # e.g. a fused kernel missing for this device or dtype
        print(f"{name}: not available here ({str(exc).splitlines()[0]})")
        if on_gpu:
            NOT_RUN[name] = str(exc).splitlines()[0]
        return None


def window(optimizer, steps: int, device: torch.device, clock) -> float:
    """Seconds for ``steps`` optimizer steps."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            optimizer.step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    began = clock()
    for _ in range(steps):
        optimizer.step()
    return clock() - began


def time_implementations(names: list[str], config: str, device: torch.device, steps: int, windows: int,
                         warmup: int, clock) -> dict[str, float]:
    """Median seconds per optimizer step for each available implementation."""
    runs = {}
    for name in names:
        model = with_gradients(build_model(config, device))
        optimizer = make_optimizer(name, model)
        if optimizer is not None:
            runs[name] = (model, optimizer)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(warmup + windows):
        for name, (_, optimizer) in runs.items():
            elapsed = window(optimizer, steps, device, clock)
            if round_ >= warmup:
                times[name].append(elapsed / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def lamb_agreement(config: str, device: torch.device, steps: int) -> float | None:
    """Max |difference| between FusedLamb's and Lamb's parameters after ``steps`` steps (None when not run)."""
    results = []
    for name in ("lamb", "lamb-deepspeed"):
        model = with_gradients(build_model(config, device))
        optimizer = make_optimizer(name, model)
        if optimizer is None:
            return None
        for _ in range(steps):
            optimizer.step()
        results.append([p.detach().float() for p in model.parameters()])
    return max(float((a - b).abs().max()) for a, b in zip(*results))


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", default=None, help="comma-separated: tiny, mini, base, large "
                                                        "(default: mini on a CPU, base,large on a GPU)")
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed window")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="windows dropped per implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on a CPU")
    parser.add_argument("--timer", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--agree_steps", type=int, default=10, help="FusedLamb vs Lamb check (GPU + deepspeed)")
    args = parser.parse_args(argv)
    names = args.implementations.split(",")
    unknown = [n for n in names if n not in IMPLEMENTATIONS]
    if unknown:
        parser.error(f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(IMPLEMENTATIONS)}")
    configs = (args.configs or ("base,large" if args.device == "cuda" else "mini")).split(",")
    if any(c not in CONFIGS for c in configs):
        parser.error(f"--configs: choose from {', '.join(CONFIGS)}")
    args.implementations, args.configs = names, configs
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"optimizer step alone on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, timer "
          f"{'CUDA events' if device.type == 'cuda' else args.timer}")
    summary = {}
    for config in args.configs:
        params = sum(p.numel() for p in build_model(config, torch.device("meta")).parameters())
        times = time_implementations(args.implementations, config, device, args.steps, args.windows, args.warmup,
                                     CLOCKS[args.timer])
        base = times.get("adamw-foreach")
        print(f"\n## {config} ({params / 1e6:.1f}M parameters)\n")
        print("| implementation | ms / step | vs adamw-foreach |")
        print("|---|---|---|")
        for name, seconds in times.items():
            ratio = f"{seconds / base:.2f}x" if base else "n/a"
            print(f"| {name} | {seconds * 1e3:.2f} | {ratio} |")
        if device.type == "cuda":
            difference = lamb_agreement(config, device, args.agree_steps)
            if difference is not None:
                print(f"\nFusedLamb vs Lamb after {args.agree_steps} steps: max |param difference| = {difference:.2e}")
        summary[config] = times
    headline = args.configs[0]
    times = summary[headline]
    fused = times.get("adamw-fused"), times.get("adamw-foreach")
    ratio = f"{fused[0] / fused[1]:.3f}" if all(fused) else "n/a"
    lamb = f"{times['lamb'] / fused[1]:.3f}" if times.get("lamb") and fused[1] else "n/a"
    print(f"\nRESULT device={device.type} config={headline} fused_vs_foreach_adamw={ratio} lamb_vs_adamw={lamb}")
    if NOT_RUN:
        print(f"INCOMPLETE: not run on this GPU: {'; '.join(f'{k}: {v}' for k, v in NOT_RUN.items())}")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(1 if NOT_RUN else 0)
