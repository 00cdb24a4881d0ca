"""Training engines: DeepSpeed, or plain torch (one process, or DDP under torchrun).

Both give the training loop the same small interface, so there is one loop:

* ``forward(batch) -> loss`` (mixed precision inside), ``backward(loss)``,
* ``step() -> None | bool``, called after every micro-batch's backward: ``None``
  between accumulation boundaries, at a boundary ``True`` when the update was
  applied and ``False`` when an fp16 overflow made the loss scaler skip it, or (fp32,
  bf16) when the gradients were not finite: the torch engine then skips the update,
  DeepSpeed has applied it (the loop stops either way and saves nothing),
* ``zero_grad()``, ``train()`` / ``eval()``, ``evaluate(batch) -> model output`` (no grad),
* ``save(folder)`` / ``load(folder)`` (model, optimizer, loss scaler),
  ``export_model()`` (the model with full-precision weights; collective under ZeRO).

The learning rate is not the engine's business: the schedule writes it into the
client optimizer's param groups, which DeepSpeed's wrappers step. Gradient clipping
is always set from ``--gradient_clipping`` (0 = off) for both engines, so they agree.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pretraining.errors import UserError
from pretraining.train.optimizers import switch_weights

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}



def deepspeed_precision(ds_args) -> dict:
    """DeepSpeed's precision keys; fp16 is dynamic loss scaling as academic-budget-bert configured it (start
    2**--initial_scale_power, double after --loss_scale_window clean updates, hysteresis 2, minimum 1)."""
    if ds_args.precision == "bf16":
        return {"bf16": {"enabled": True}}
    if ds_args.precision == "fp16":
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": ds_args.initial_scale_power,
                         "loss_scale_window": ds_args.loss_scale_window, "hysteresis": 2, "min_loss_scale": 1}}
    return {}

# Keys a --deepspeed_config file may not set: the flags own the optimizer and the schedule.
FORBIDDEN_DEEPSPEED_KEYS = {"optimizer": "--optimizer_type and its flags", "scheduler": "--lr_schedule and its flags"}


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all ranks (float64); the identity on one process."""
        return self._all_reduce(values, dist.ReduceOp.SUM) if self.world_size > 1 else list(values)

    def max(self, value: float) -> float:
        """The largest of ``value`` over all ranks (float64; a collective); ``value`` itself on one process."""
        return self._all_reduce([value], dist.ReduceOp.MAX)[0] if self.world_size > 1 else value

    def _all_reduce(self, values: list[float], op) -> list[float]:
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank (a collective: every rank must call it)."""
        return self.sum([float(flag)])[0] > 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def free_port() -> int:
    """A TCP port free on this machine right now (for a launcher's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_accelerator(cuda_available: bool) -> str:
    """The DeepSpeed accelerator for this hardware: ``cuda`` on a CUDA GPU, else its ``cpu`` accelerator.

    DeepSpeed reads ``DS_ACCELERATOR`` when it is set (a user's choice is kept); where it is not, processes of
    this project set it from the hardware before DeepSpeed is imported, never to ``cpu`` on a GPU machine (then
    FusedLamb, fp16 and the placement of the model on the GPU break)."""
    return "cuda" if cuda_available else "cpu"


def pick_device(local_rank: int, cuda_available: bool, visible_gpus: int, cuda_visible: str | None) -> torch.device:
    """The device of the process with ``local_rank``: GPU ``local_rank`` among the visible ones, else the CPU.

    More processes on a node than visible GPUs (``NUM_GPUS`` above the count ``CUDA_VISIBLE_DEVICES`` leaves, or
    ``--nproc_per_node`` too high) is a UserError naming both numbers, not CUDA's "invalid device ordinal"."""
    if not cuda_available:
        return torch.device("cpu")
    if not 0 <= local_rank < visible_gpus:
        where = f"CUDA_VISIBLE_DEVICES={cuda_visible!r}" if cuda_visible is not None else "this node"
        raise UserError(f"local rank {local_rank} has no GPU: {where} leaves {visible_gpus} visible GPU(s); start "
                        f"at most {visible_gpus} process(es) per node (NUM_GPUS / --nproc_per_node / --num_gpus)")
    return torch.device("cuda", local_rank)


def setup_distributed(use_deepspeed: bool, local_rank: int = -1, timeout_s: float = 1800) -> DistInfo:
    """Initialise the process group the engine needs and pick the device.

    torchrun and the deepspeed launcher set RANK/WORLD_SIZE/LOCAL_RANK. DeepSpeed needs
    a process group even for one process: when those variables are absent, this sets
    them for a single local process (MASTER_ADDR=127.0.0.1 and a free MASTER_PORT)
    in ``os.environ``, which is where torch.distributed reads them. A collective waits
    at most ``timeout_s`` for the other ranks (``--ddp_timeout``).
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", max(local_rank, 0)))
    cuda = torch.cuda.is_available()
    device = pick_device(local, cuda, torch.cuda.device_count() if cuda else 0,
                         os.environ.get("CUDA_VISIBLE_DEVICES"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if use_deepspeed:
        os.environ.setdefault("DS_ACCELERATOR", deepspeed_accelerator(cuda))
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=str(local), MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        import deepspeed

        deepspeed.init_distributed(verbose=False, timeout=timeout)
    elif world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)
    return DistInfo(0, 1, local, device)


#: how gloo reports a rank that died (its socket closed) or hangs (the timeout); NCCL raises a DistError
PEER_FAILURES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out")


def lost_peer(exc: BaseException) -> str | None:
    """When ``exc`` says that another rank of this multi-process run died or stopped responding: why, in brief."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    text = str(exc)
    if not (isinstance(exc, getattr(dist, "DistError", ())) or
            isinstance(exc, RuntimeError) and any(words in text for words in PEER_FAILURES)):
        return None
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    return first.split(". ")[0]


def check_precision_supported(precision: str) -> str | None:
    """The problem with ``precision`` on this machine, or None when it can run."""
    if precision == "fp16" and not torch.cuda.is_available():
        return ("--fp16 needs a CUDA GPU (none found; DeepSpeed's and torch's fp16 loss scaling do not run on the "
                "CPU): drop --fp16 for fp32, or use --bf16")
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "--bf16 is not supported by this GPU: use --fp16 or fp32"
    return None


def deepspeed_config(ds_args, *, train_batch_size: int, micro_batch: int, grad_accum: int) -> dict:
    """The DeepSpeed config generated from the flags, overridden by ``--deepspeed_config`` keys."""
    config = {
        "train_batch_size": train_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": float(ds_args.gradient_clipping),
        "steps_per_print": ds_args.steps_per_print,
        "wall_clock_breakdown": ds_args.wall_clock_breakdown,
        "prescale_gradients": ds_args.prescale_gradients,
        "zero_optimization": {"stage": ds_args.zero_stage},
        "zero_allow_untested_optimizer": True,
        **deepspeed_precision(ds_args),
    }
    if ds_args.gradient_predivide_factor is not None:
        config["gradient_predivide_factor"] = ds_args.gradient_predivide_factor
    if ds_args.deepspeed_config:
        path = Path(ds_args.deepspeed_config)
        try:
            override = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--deepspeed_config {path} is not a readable JSON file: {exc}") from None
        bad = [f"'{key}' (set it with {flag})" for key, flag in FORBIDDEN_DEEPSPEED_KEYS.items() if key in override]
        if bad:
            raise UserError(f"--deepspeed_config {path} may not set {', '.join(bad)}: remove it from the file")
        config = _deep_merge(config, override)
    if ds_args.precision == "bf16" and config["zero_optimization"].get("stage") == 1:
        # DeepSpeed's BF16_Optimizer: fp32 master weights and fp32 gradient accumulation (without this key ZeRO 1
        # sums the micro-batches' gradients in bf16); a file's own data_types wins
        config.setdefault("data_types", {"grad_accum_dtype": "fp32"})
    return config


def bf16_accumulation_notice(ds_args, grad_accum: int) -> str | None:
    """Where DeepSpeed would sum bf16 gradients in bf16 (ZeRO 0 or 2, several micro-batches): a notice saying so."""
    if not (ds_args.deepspeed and ds_args.precision == "bf16" and grad_accum > 1 and ds_args.zero_stage != 1):
        return None
    return (f"--deepspeed --bf16 at --zero_stage {ds_args.zero_stage}: DeepSpeed sums the gradients of the "
            f"{grad_accum} micro-batches of a step in bf16 (it supports fp32 accumulation only at ZeRO stage 1): "
            "use --zero_stage 1, or the torch engine (no --deepspeed), which accumulates in fp32")


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if nested else value
    return merged


class TorchEngine:
    """Plain torch: autocast for bf16/fp16, GradScaler for fp16, DDP when world_size > 1."""

    def __init__(self, model, optimizer, *, dist_info: DistInfo, precision: str, grad_accum: int,
                 micro_batch: int, gradient_clipping: float, initial_scale_power: int = 16,
                 loss_scale_window: int = 1000):
        self.module = model.to(dist_info.device)
        self.optimizer = optimizer
        self.device = dist_info.device
        self.precision = precision
        self.grad_accum = grad_accum
        self.micro_batch = micro_batch
        self.clip = gradient_clipping
        self._dtype = AUTOCAST_DTYPES[precision]
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0 ** initial_scale_power,
                                           growth_interval=loss_scale_window, enabled=precision == "fp16")
        self._micro = 0
        self.sharded = False
        self.network = self.module
        if dist_info.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.module, device_ids=ids)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self._dtype or torch.bfloat16, enabled=self._dtype is not None)

    @property
    def at_boundary(self) -> bool:
        return (self._micro + 1) % self.grad_accum == 0

    def forward(self, batch: dict) -> torch.Tensor:
        if self.network is not self.module:  # all-reduce gradients only on the boundary micro-batch
            self.network.require_backward_grad_sync = self.at_boundary
        with self._autocast():
            return self.network(**batch).loss

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.grad_accum).backward()

    def step(self) -> bool | None:
        boundary = self.at_boundary
        self._micro += 1
        if not boundary:
            return None
        norm = None
        if self.clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        if not self.scaler.is_enabled():  # fp32/bf16: never apply a non-finite gradient (fp16: the scaler skips it)
            if norm is None:
                norm = torch.nn.utils.get_total_norm([p.grad for p in self.module.parameters() if p.grad is not None])
            if not torch.isfinite(norm):
                self.zero_grad()
                return False
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.zero_grad()
        return not self.scaler.is_enabled() or self.scaler.get_scale() >= scale

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def loss_scale(self) -> float | None:
        return self.scaler.get_scale() if self.scaler.is_enabled() else None

    def train(self) -> None:
        self.module.train()
        switch_weights(self.optimizer, "train")

    def eval(self) -> None:
        """Evaluation mode: no dropout, and a schedule-free optimizer's averaged weights (train() switches back)."""
        self.module.eval()
        switch_weights(self.optimizer, "eval")

    @torch.no_grad()
    def evaluate(self, batch: dict):
        """The model's output (loss, prediction logits) for ``batch``, without gradients."""
        with self._autocast():
            return self.module(**batch)

    def export_model(self):
        """The model with full-precision weights, for export (the trained module itself)."""
        return self.module

    def save(self, folder: Path, is_main: bool) -> None:
        if is_main:
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict(), "micro": self._micro}, folder / "engine.pt")

    def load(self, folder: Path) -> None:
        state = torch.load(folder / "engine.pt", map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self._micro = state["micro"]


def _deepspeed_safe_globals() -> list:
    """The few DeepSpeed classes its ZeRO/fp16 checkpoints pickle (allowed for weights_only loads)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _weights_only_checkpoint_engine(config):
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return WeightsOnlyCheckpointEngine(config)


class DeepSpeedEngine:
    """The real DeepSpeed engine with a client optimizer (no DeepSpeed LR scheduler)."""

    TAG = "deepspeed"

    def __init__(self, model, optimizer, *, dist_info: DistInfo, precision: str, config: dict):
        import deepspeed
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        self.ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        if type(self.ds.checkpoint_engine) is TorchCheckpointEngine:
            self.ds.checkpoint_engine = _weights_only_checkpoint_engine(self.ds._config)
        scaler = getattr(self.ds.optimizer, "loss_scaler", None)
        if getattr(scaler, "raise_error_at_min_scale", False):
            # ZeRO 1/2's DynamicLossScaler raises a bare Exception on an overflow at the minimum scale (after ~18
            # overflows in a row); keep skipping instead, so the loop's --scale_cnt_limit ends the run cleanly
            scaler.raise_error_at_min_scale = False
        self.module = self.ds.module
        self.optimizer = optimizer
        self.device = self.ds.device
        self.precision = precision
        self.grad_accum = self.ds.gradient_accumulation_steps()
        self.micro_batch = self.ds.train_micro_batch_size_per_gpu()
        self.sharded = self.ds.zero_optimization_stage() > 0  # optimizer state split over the ranks
        # fp16 without ZeRO: DeepSpeed's FP16 optimizers unscale the gradients by the loss scale in step(), but
        # DeepSpeed 0.19's engine.backward() does not scale the loss (deepspeedai/DeepSpeed PR #8393): every update
        # would be ~65536x too small and training would stall (measured: loss flat, scale never backing off)
        self._scale_fp16_loss = precision == "fp16" and not self.sharded and \
            getattr(self.ds.optimizer, "loss_scale", None) is not None

    def forward(self, batch: dict) -> torch.Tensor:
        return self.ds(**batch).loss

    def backward(self, loss: torch.Tensor) -> None:
        if self._scale_fp16_loss:
            loss.register_hook(self._apply_loss_scale)
        self.ds.backward(loss)

    def _apply_loss_scale(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient reaching the loss: times the loss scale where DeepSpeed left it unscaled (1/accumulation
        steps exactly); unchanged where a DeepSpeed that scales the loss itself already did."""
        scale = float(self.ds.optimizer.loss_scale)
        unscaled = torch.equal(grad, torch.full_like(grad, 1.0 / self.grad_accum))
        return grad * scale if unscaled and scale != 1.0 else grad

    def step(self) -> bool | None:
        boundary = self.ds.is_gradient_accumulation_boundary()
        skipped = self.ds.skipped_steps
        self.ds.step()
        if not boundary:
            return None
        if self.precision == "fp16":
            return self.ds.skipped_steps == skipped
        norm = self.ds.get_global_grad_norm()  # fp32/bf16: False when the gradients were not finite
        if norm is None:  # nothing computed it (fp32 without ZeRO): are the updated weights still finite?
            norm = torch.nn.utils.get_total_norm([p.detach() for p in self.module.parameters()])
        return math.isfinite(float(norm))

    def zero_grad(self) -> None:
        self.ds.zero_grad()

    @property
    def loss_scale(self) -> float | None:
        return float(self.ds.optimizer.loss_scale) if self.precision == "fp16" else None

    def train(self) -> None:
        self.ds.train()
        switch_weights(self.optimizer, "train")  # fp32 ZeRO 0 only (optimizers.deepspeed_problem)

    def eval(self) -> None:
        self.ds.eval()
        switch_weights(self.optimizer, "eval")

    @torch.no_grad()
    def evaluate(self, batch: dict):
        """The model's output (loss, prediction logits) for ``batch``, without gradients."""
        return self.module(**batch)

    def fp32_state_dict(self) -> dict:
        """Full-precision weights: DeepSpeed's fp32 master copies where it keeps them (every rank must call)."""
        from deepspeed.utils import safe_get_full_fp32_param

        params = {p.data_ptr(): p for p in self.module.parameters()}
        optimizer = self.ds.optimizer  # without ZeRO: fp32 copies listed group by group beside the 16-bit ones
        copies = {id(low): high for lows, highs in zip(getattr(optimizer, "fp16_groups", []),
                                                        getattr(optimizer, "fp32_groups", []))
                  if isinstance(highs, list) for low, high in zip(lows, highs)}
        out = {}
        for key, tensor in self.module.state_dict(keep_vars=True).items():
            param = params.get(tensor.data_ptr())
            master = None if param is None else safe_get_full_fp32_param(param)
            if master is None and param is not None:
                master = copies.get(id(param))
            out[key] = (master if master is not None else tensor).detach().float().cpu()
        return out

    def export_model(self):
        """The model with full-precision weights, for export; every rank must call it (collective under ZeRO)."""
        if self.precision == "fp32":
            return self.module
        state = self.fp32_state_dict()
        with torch.random.fork_rng(devices=[]):  # building a model draws random init; keep the run's RNG
            model = type(self.module)(self.module.config)
        model.load_state_dict(state)
        return model

    def save(self, folder: Path, is_main: bool) -> None:
        self.ds.save_checkpoint(str(folder), tag=self.TAG, client_state={}, save_latest=False)

    def load(self, folder: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(folder), tag=self.TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
        if path is None:
            raise UserError(f"{folder} holds no DeepSpeed engine state (was the run trained without --deepspeed?)")


def build_engine(model, optimizer, *, ds_args, dist_info: DistInfo, train_batch_size: int, micro_batch: int,
                 grad_accum: int, optimizer_type: str):
    """DeepSpeedEngine with ``--deepspeed``, else TorchEngine; both see the same flags."""
    if ds_args.deepspeed:
        from pretraining.train.optimizers import deepspeed_problem

        config = deepspeed_config(ds_args, train_batch_size=train_batch_size, micro_batch=micro_batch,
                                  grad_accum=grad_accum)
        problem = deepspeed_problem(optimizer_type, ds_args.precision,
                                    int(config.get("zero_optimization", {}).get("stage", 0)))
        if problem:  # the stage may come from a --deepspeed_config file
            raise UserError(f"{problem} (the stage comes from --deepspeed_config {ds_args.deepspeed_config})"
                            if ds_args.deepspeed_config else problem)
        return DeepSpeedEngine(model, optimizer, dist_info=dist_info, precision=ds_args.precision, config=config)
    return TorchEngine(model, optimizer, dist_info=dist_info, precision=ds_args.precision, grad_accum=grad_accum,
                       micro_batch=micro_batch, gradient_clipping=ds_args.gradient_clipping,
                       initial_scale_power=ds_args.initial_scale_power, loss_scale_window=ds_args.loss_scale_window)
