"""run_pretraining.py's own argument groups (the dataset, the engine and precision, the run itself), with
academic-budget-bert's flag names; the model, optimizer and schedule groups, shared with the benchmarks and the
fine-tuning checks, are in :mod:`pretraining.train.args`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

from pretraining.cli import ArgumentChecker
from pretraining.data.loader import LOADER_TYPES


def _notice_if_changed(instance, flags: dict[str, str]) -> list[str]:
    """One notice per no-op compatibility flag set away from its default (flag name -> why it does nothing)."""
    defaults = {f.name: f.default for f in dataclasses.fields(instance)}
    return [f"--{name} has no effect here: {why}" for name, why in flags.items()
            if getattr(instance, name) != defaults[name]]


@dataclass
class DatasetArguments:
    """Where the shards are and how ranks read them (academic-budget-bert's PreTrainDatasetArguments)."""

    dataset_path: Optional[str] = field(
        default=None,
        metadata={"help": "Folder of HDF5 shards (train_shard_*.hdf5, test_shard_*.hdf5; prepare_dataset.py's or "
                          "academic-budget-bert's). Required."},
    )
    data_loader_type: str = field(
        default="per_device",
        metadata={"help": "per_device: each rank reads its own shard per epoch; dist: all ranks split one shard. "
                          "Either way every rank runs the same number of steps and every shard is used before any "
                          "is repeated", "choices": list(LOADER_TYPES)},
    )
    async_worker: bool = field(
        default=True, metadata={"help": "Read the next epoch's shard in a background thread while training"}
    )
    num_workers: int = field(
        default=4,
        metadata={"help": "Accepted for academic-budget-bert compatibility; batches are sliced from the in-memory "
                          "shard, so there are no loader worker processes (a notice is printed)"},
    )
    max_predictions_per_seq: Optional[int] = field(
        default=None,
        metadata={"help": "Dynamic masking: the most tokens masked per sequence; default: the shards' manifest "
                          "(prepare_dataset.py's value), else 20. Statically masked shards refuse a different value"},
    )
    masked_lm_prob: Optional[float] = field(
        default=None,
        metadata={"help": "Dynamic masking: share of tokens masked; default: the shards' manifest, else 0.15. "
                          "Statically masked shards refuse a different value"},
    )

    def validate(self, check: ArgumentChecker) -> None:
        check.choice("--data_loader_type", self.data_loader_type, LOADER_TYPES)
        check.require(bool(self.dataset_path), "--dataset_path is required (a folder made by prepare_dataset.py)")
        check.require(self.max_predictions_per_seq is None or self.max_predictions_per_seq > 0,
                      "--max_predictions_per_seq must be > 0")
        check.require(self.masked_lm_prob is None or 0 < self.masked_lm_prob < 1, "--masked_lm_prob must be in (0, 1)")

    def notices(self) -> list[str]:
        return _notice_if_changed(self, {"num_workers": "batches are sliced in memory (no worker processes)"})


@dataclass
class EngineArguments:
    """Engine, precision and gradient clipping (academic-budget-bert's DeepspeedArguments, plus --bf16)."""

    deepspeed: bool = field(
        default=False,
        metadata={"help": "Train with the DeepSpeed engine (config generated from these flags); without it plain "
                          "torch, or DDP under torchrun"},
    )
    deepspeed_config: Optional[str] = field(
        default=None,
        metadata={"help": "A DeepSpeed JSON config whose keys override the generated ones (no 'optimizer' or "
                          "'scheduler': the optimizer and the LR schedule come from the flags)"},
    )
    zero_stage: int = field(default=0, metadata={"help": "DeepSpeed ZeRO stage (0, 1 or 2)", "choices": [0, 1, 2]})
    fp16: bool = field(
        default=False,
        metadata={"help": "Mixed precision fp16 with dynamic loss scaling (needs a CUDA GPU)"},
    )
    bf16: bool = field(default=False, metadata={"help": "Mixed precision bfloat16 (GPU or CPU; no loss scaling)"})
    initial_scale_power: int = field(
        default=16, metadata={"help": "fp16: the dynamic loss scale starts at 2**this (both engines)"}
    )
    loss_scale_window: int = field(
        default=1000,
        metadata={"help": "fp16: the loss scale doubles after this many updates in a row without an overflow and "
                          "halves on an overflow (both engines; DeepSpeed also waits out a hysteresis of 2)"},
    )
    gradient_clipping: float = field(
        default=1.0, metadata={"help": "Clip the global gradient norm to this value; 0 turns clipping off"}
    )
    fused_optimizer: Optional[bool] = field(
        default=None,
        metadata={"help": "Fused optimizer kernels: default auto (torch's fused Adam/AdamW, on a GPU or the CPU); "
                          "true also picks DeepSpeed's FusedLamb for lamb (GPU only); false forbids them"},
    )
    fp16_backend: str = field(
        default="ds",
        metadata={"help": "ds: DeepSpeed's loss scaler (torch's GradScaler without --deepspeed). apex is accepted "
                          "as an alias with a notice (apex is not used)", "choices": ["ds", "apex"]},
    )
    fp16_opt: str = field(default="O2", metadata={"help": "Accepted for compatibility (apex opt level; no effect)"})
    steps_per_print: int = field(
        default=1000000, metadata={"help": "DeepSpeed's own log interval (progress lines come from --print_steps)"}
    )
    wall_clock_breakdown: bool = field(default=False, metadata={"help": "DeepSpeed: time forward/backward/step"})
    prescale_gradients: bool = field(default=False, metadata={"help": "DeepSpeed: scale gradients before all-reduce"})
    gradient_predivide_factor: Optional[float] = field(
        default=None, metadata={"help": "DeepSpeed: divide gradients by this before all-reduce"}
    )
    deepspeed_transformer_kernel: bool = field(
        default=False, metadata={"help": "Accepted for compatibility; the model uses torch SDPA (no effect)"}
    )
    stochastic_mode: bool = field(default=False, metadata={"help": "Accepted for compatibility (no effect)"})
    attention_dropout_checkpoint: bool = field(default=False, metadata={"help": "Accepted for compatibility (no effect)"})
    normalize_invertible: bool = field(default=False, metadata={"help": "Accepted for compatibility (no effect)"})
    gelu_checkpoint: bool = field(default=False, metadata={"help": "Accepted for compatibility (no effect)"})

    @property
    def precision(self) -> str:
        """fp16, bf16 or fp32."""
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    def validate(self, check: ArgumentChecker) -> None:
        check.require(not (self.fp16 and self.bf16), "--fp16 and --bf16 exclude each other: pick one")
        check.require(self.gradient_clipping >= 0, "--gradient_clipping must be >= 0 (0 = off)")
        check.require(0 <= self.initial_scale_power <= 64, "--initial_scale_power must be in [0, 64]")
        check.require(self.loss_scale_window > 0, "--loss_scale_window must be > 0")
        check.require(self.deepspeed or self.zero_stage == 0, "--zero_stage needs --deepspeed")
        check.require(self.deepspeed or not self.deepspeed_config, "--deepspeed_config needs --deepspeed")
        check.require(not self.deepspeed_config or os.path.isfile(self.deepspeed_config),
                      f"--deepspeed_config {self.deepspeed_config} does not exist")

    def notices(self) -> list[str]:
        no_kernel = "the model's attention is torch SDPA; DeepSpeed's transformer kernel is not used"
        return _notice_if_changed(self, {
            "fp16_backend": "apex is not used; fp16 runs on DeepSpeed's (or torch's) loss scaler",
            "fp16_opt": "apex is not used",
            "deepspeed_transformer_kernel": no_kernel, "stochastic_mode": no_kernel,
            "attention_dropout_checkpoint": no_kernel, "normalize_invertible": no_kernel, "gelu_checkpoint": no_kernel,
        })


@dataclass
class PretrainingArguments:
    """The run: batch sizes, stopping rules, validation, checkpoints, logging (PretrainScriptParamsArguments)."""

    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Runs are written to OUTPUT_DIR/JOB_NAME/ (args.json, metrics.jsonl, "
                                        "checkpoints/, pretrained/). Required."}
    )
    job_name: str = field(default="pretraining_experiment", metadata={"help": "Name of the run (folder and W&B run)"})
    current_run_id: str = field(default="", metadata={"help": "Appended to --job_name as JOB_NAME-ID when set"})
    project_name: str = field(default="budget-bert-pretraining", metadata={"help": "W&B project"})
    no_wandb: bool = field(default=False, metadata={"help": "Do not log to W&B (also: WANDB_MODE=disabled)"})
    seed: int = field(default=42, metadata={"help": "Random seed (weights, dropout, data order, dynamic masks)"})
    local_rank: int = field(default=-1, metadata={"help": "Set by the deepspeed launcher; torchrun uses LOCAL_RANK"})
    ddp_timeout: int = field(
        default=1800,
        metadata={"help": "Seconds a rank waits in a collective (all-reduce, barrier) for the other ranks: a rank that "
                          "died or hangs stops the run with an error after this long instead of hanging it"},
    )
    train_batch_size: int = field(
        default=4096, metadata={"help": "Sequences per optimizer step over all ranks (micro batch x ranks x accumulation)"}
    )
    train_micro_batch_size_per_gpu: int = field(default=32, metadata={"help": "Sequences per forward pass per rank"})
    gradient_accumulation_steps: Optional[int] = field(
        default=None,
        metadata={"help": "Derived: train_batch_size / (micro batch x ranks); when given it must agree"},
    )
    early_exit_time_marker: float = field(
        default=24.0, metadata={"help": "Stop after this many hours of training time (checked every step)"}
    )
    max_steps: Optional[int] = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (default: no limit, the time budget "
                                        "stops); 0 exports the initial, untrained weights: the no-pretraining control "
                                        "of a comparison (same architecture, init and tokenizer)"}
    )
    max_steps_per_epoch: Optional[int] = field(
        default=None,
        metadata={"help": "At most this many micro-batches per epoch (shard) on each rank, academic-budget-bert's "
                          "unit (its help says steps; its loop counts micro-batches): whole optimizer steps of them"},
    )
    num_epochs: int = field(default=1000000, metadata={"help": "Stop after this many epochs (one shard per rank each)"})
    print_steps: int = field(default=100, metadata={"help": "Progress line and metrics every this many steps"})
    log_throughput_every: int = field(
        default=20, metadata={"help": "Accepted for compatibility; throughput is in every progress line (no effect)"}
    )
    num_epochs_between_checkpoints: int = field(
        default=-1, metadata={"help": "Training checkpoint every this many epochs (<= 0: only at the end)"}
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "Keep this many most recent training checkpoints"})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace an earlier run in OUTPUT_DIR/JOB_NAME (its logs, checkpoints and export); without "
                          "it such a run is resumed (--load_training_checkpoint) or refused, never overwritten"},
    )
    load_training_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "Resume from this run folder (OUTPUT_DIR/JOB_NAME), its checkpoints/ folder, or one "
                          "checkpoint folder"},
    )
    load_checkpoint_id: Optional[str] = field(
        default=None, metadata={"help": "Checkpoint id to resume (a folder name under checkpoints/, or latest; "
                                        "latest_checkpoint, academic-budget-bert's tag, is the same)"}
    )
    finetune_time_markers: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated shares of the time budget (e.g. 0.5,0.9) at which to export a fine-tuning "
                          "model to pretrained_at_<share>/ (checked at epoch ends)"},
    )
    finetune_checkpoint_at_end: bool = field(
        default=True, metadata={"help": "Export pretrained/ (model + tokenizer for run_glue.py) at the end"}
    )
    do_validation: bool = field(default=False, metadata={"help": "Evaluate the MLM loss on the test shards"})
    validation_epochs: int = field(default=10, metadata={"help": "Validate every this many epochs (middle stage)"})
    validation_epochs_begin: int = field(default=1, metadata={"help": "Validate every this many epochs (first stage)"})
    validation_epochs_end: int = field(default=1, metadata={"help": "Validate every this many epochs (last stage)"})
    validation_begin_proportion: float = field(
        default=0.1, metadata={"help": "Share of the time budget that is the first stage"}
    )
    validation_end_proportion: float = field(
        default=0.1, metadata={"help": "Share of the time budget that is the last stage"}
    )
    validation_micro_batch: int = field(default=16, metadata={"help": "Validation sequences per forward per rank"})
    use_early_stopping: bool = field(
        default=False,
        metadata={"help": "Stop when the eval loss is NaN, or still above --early_stop_eval_loss after "
                          "--early_stop_time minutes"},
    )
    early_stop_time: float = field(default=720, metadata={"help": "Early stopping: minutes of training time"})
    early_stop_eval_loss: float = field(default=2.1, metadata={"help": "Early stopping: eval loss to be under"})
    scale_cnt_limit: int = field(
        default=100, metadata={"help": "Stop after this many consecutive skipped updates (fp16 overflow)"}
    )
    add_nsp: bool = field(
        default=False, metadata={"help": "Alias of --model_type bert-mlm-nsp (shards must carry NSP labels)"}
    )
    config_name: Optional[str] = field(
        default=None, metadata={"help": "Accepted for compatibility (no effect): the architecture comes from the "
                                        "flags, or from --model_name_or_path"}
    )
    pretrain_run_args: Optional[str] = field(
        default=None, metadata={"help": "Accepted for compatibility (used by academic-budget-bert's run_glue.py only)"}
    )

    def __post_init__(self):
        if self.current_run_id:
            self.job_name = f"{self.job_name}-{self.current_run_id}"
            self.current_run_id = ""
        if self.load_checkpoint_id == "latest_checkpoint":  # academic-budget-bert's DeepSpeed tag of the newest one
            self.load_checkpoint_id = "latest"

    def validate(self, check: ArgumentChecker) -> None:
        check.require(0 <= self.seed < 2 ** 32, f"--seed must be in [0, 2**32 - 1] (got {self.seed}; numpy's range)")
        check.require(bool(self.output_dir), "--output_dir is required")
        check.require(self.job_name not in ("", ".", "..") and "/" not in self.job_name and os.sep not in self.job_name,
                      f"--job_name {self.job_name!r} must be a plain folder name (no '/', not '.' or '..'): the run "
                      "is written to OUTPUT_DIR/JOB_NAME and nowhere else")
        check.require(self.train_batch_size > 0 and self.train_micro_batch_size_per_gpu > 0,
                      "--train_batch_size and --train_micro_batch_size_per_gpu must be > 0")
        check.require(self.print_steps > 0, "--print_steps must be > 0")
        check.require(self.early_exit_time_marker > 0, "--early_exit_time_marker must be > 0 hours")
        check.require(self.max_steps is None or self.max_steps >= 0, "--max_steps must be >= 0")
        check.require(self.max_steps_per_epoch is None or self.max_steps_per_epoch > 0, "--max_steps_per_epoch must be > 0")
        check.require(self.num_epochs > 0, "--num_epochs must be > 0")
        check.require(self.keep_checkpoints >= 1, "--keep_checkpoints must be >= 1")
        check.require(min(self.validation_epochs, self.validation_epochs_begin, self.validation_epochs_end) > 0,
                      "--validation_epochs, --validation_epochs_begin and --validation_epochs_end must be > 0")
        check.require(0 <= self.validation_begin_proportion <= 1 and 0 <= self.validation_end_proportion <= 1,
                      "--validation_begin_proportion and --validation_end_proportion must be in [0, 1]")
        check.require(self.validation_micro_batch > 0, "--validation_micro_batch must be > 0")
        check.require(self.scale_cnt_limit > 0, "--scale_cnt_limit must be > 0")
        check.require(self.ddp_timeout > 0, "--ddp_timeout must be > 0 seconds")
        try:
            markers = self.time_markers
        except ValueError:
            markers = None
        check.require(markers is not None and all(0 < m <= 1 for m in markers),
                      f"--finetune_time_markers must be comma-separated numbers in (0, 1] (got {self.finetune_time_markers!r})")

    @property
    def time_markers(self) -> list[float]:
        """--finetune_time_markers as sorted floats."""
        text = (self.finetune_time_markers or "").strip()
        return sorted(float(x) for x in text.split(",") if x.strip()) if text else []

    def notices(self) -> list[str]:
        return _notice_if_changed(self, {"log_throughput_every": "throughput is in every --print_steps line",
                                         "config_name": "the architecture comes from the flags or --model_name_or_path",
                                         "pretrain_run_args": "it is for fine-tuning scripts"})
