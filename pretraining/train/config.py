"""run_pretraining.py's configuration: its argument groups together, the rules across groups and the values
derived from several of them (gradient accumulation, the time budget). Each group's own rules live with the
group in :mod:`pretraining.train.args` and :mod:`pretraining.train.run_args`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pretraining.train.args import ModelArguments, OptimizerArguments, SchedulerArguments
from pretraining.cli import ArgumentChecker, asdict, parse_args
from pretraining.train.run_args import DatasetArguments, EngineArguments, PretrainingArguments

ARGUMENT_GROUPS = (ModelArguments, OptimizerArguments, SchedulerArguments, DatasetArguments, EngineArguments,
                   PretrainingArguments)
#: what must match between a checkpoint and the run resuming it
MODEL_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                    "encoder_ln_mode")
RUN_KEYS = ("model_type", "optimizer_type", "deepspeed", "zero_stage")
#: flags that do not change what a run computes (where it resumes from, logging, bookkeeping, how long it goes on):
#: a resume may change them without a record; any other change is recorded with the step it took effect at
NOT_COMPUTATION = ("load_training_checkpoint", "load_checkpoint_id", "local_rank", "overwrite_output_dir",
                   "output_dir", "job_name", "print_steps", "no_wandb", "project_name", "keep_checkpoints",
                   "num_epochs_between_checkpoints", "ddp_timeout", "max_steps", "num_epochs", "early_exit_time_marker",
                   "steps_per_print", "wall_clock_breakdown", "async_worker", "num_workers", "history", "world_size")


def settings_changes(previous: dict, current: dict) -> dict:
    """{flag: [before, now]} for the settings a resumed run changed that change what it computes."""
    return {key: [previous.get(key), value] for key, value in current.items()
            if key not in NOT_COMPUTATION and key in previous and previous[key] != value}


def resume_history(args_file: Path, current: dict, step: int) -> tuple[list[dict], dict]:
    """A resumed run's history for args.json: the earlier run's entries, plus ``{"step", "changed"}`` when this
    resume (at ``step``) changes what the run computes; and those changes. The settings of the steps before a
    change are its "before" values, so no earlier setting is lost when args.json is rewritten."""
    if not args_file.is_file():
        return [], {}
    previous = json.loads(args_file.read_text())
    changes = settings_changes(previous, current)
    history = list(previous.get("history", []))
    return history + ([{"step": step, "changed": changes}] if changes else []), changes


@dataclass
class PretrainingConfig:
    """All argument groups of run_pretraining.py."""

    model: ModelArguments
    optimizer: OptimizerArguments
    scheduler: SchedulerArguments
    data: DatasetArguments
    backend: EngineArguments  #: the engine and precision flags (the engine itself is BuiltRun.engine)
    run: PretrainingArguments

    @classmethod
    def parse(cls, argv=None) -> "PretrainingConfig":
        """Parse command-line flags (or one JSON file of them)."""
        return cls(*parse_args(ARGUMENT_GROUPS, argv))

    def groups(self) -> tuple:
        return self.model, self.optimizer, self.scheduler, self.data, self.backend, self.run

    def as_dict(self) -> dict:
        return asdict(*self.groups())

    @property
    def budget_s(self) -> float:
        """Training time at which the run stops: min(--early_exit_time_marker, --total_training_time), in seconds."""
        return min(self.run.early_exit_time_marker * 3600.0, self.scheduler.total_training_s)

    def compatibility(self, model_config) -> dict:
        """What a checkpoint and the run resuming it must share: the model's shape and the run's engine."""
        merged = self.as_dict()
        return {**{key: getattr(model_config, key) for key in MODEL_SHAPE_KEYS},
                **{key: merged[key] for key in RUN_KEYS}, "precision": self.backend.precision}


def check_arguments(config: PretrainingConfig, world_size: int) -> tuple[int, list[str]]:
    """Validate every group and the rules across groups, all errors at once.

    Returns the gradient accumulation steps and the notices for no-op flags.
    """
    from pretraining.train.engine import bf16_accumulation_notice, check_precision_supported
    from pretraining.train.optimizers import deepspeed_problem, fused_lamb_problem
    from pretraining.train.schedules import step_warmup

    if config.run.add_nsp:
        config.model.model_type = "bert-mlm-nsp"
    check = ArgumentChecker()
    for group in config.groups():
        group.validate(check)
    run = config.run
    per_step = run.train_micro_batch_size_per_gpu * world_size
    check.require(run.train_batch_size % per_step == 0 if per_step > 0 else False,
                  f"--train_batch_size {run.train_batch_size} is not a multiple of --train_micro_batch_size_per_gpu "
                  f"{run.train_micro_batch_size_per_gpu} x {world_size} rank(s) = {per_step}: pick sizes that divide")
    accum = run.train_batch_size // per_step if per_step > 0 else 0
    check.require(run.gradient_accumulation_steps in (None, accum),
                  f"--gradient_accumulation_steps {run.gradient_accumulation_steps} disagrees with --train_batch_size / "
                  f"(micro batch x ranks) = {accum}: drop it (it is derived)")
    if config.scheduler.lr_schedule == "step":
        check.require(bool(run.max_steps), "--lr_schedule step needs --max_steps (the schedule's total, > 0); or use "
                                           "--lr_schedule time with --total_training_time")
        warmup = step_warmup(config.scheduler, run.max_steps or 0)
        check.require(not run.max_steps or warmup < run.max_steps,
                      f"the warmup ({warmup:g} steps) must be shorter than --max_steps ({run.max_steps}): lower "
                      "--warmup_proportion or --num_warmup_steps")
    check.add(check_precision_supported(config.backend.precision))
    check.add(fused_lamb_problem(config.optimizer.optimizer_type, config.backend.fused_optimizer))
    if config.backend.deepspeed:
        check.add(deepspeed_problem(config.optimizer.optimizer_type, config.backend.precision,
                                    config.backend.zero_stage))
    check.raise_if_any()
    notices = [n for group in (config.data, config.backend, config.run) for n in group.notices()]
    notices += [n for n in (bf16_accumulation_notice(config.backend, accum),) if n]
    return max(accum, 1), notices
