"""The pretraining run: one loop for the DeepSpeed and the plain-torch engines.

``pretrain(config)`` sets up the process group, data, model, optimizer, schedule and
engine (:mod:`pretraining.engine`), optionally resumes a checkpoint, then trains until
a stop rule fires, checked after every optimizer step:

* ``time_budget``: training time reached ``min(--early_exit_time_marker,
  --total_training_time)`` hours (the LR is 0 at the end of the budget anyway);
* ``max_steps``: ``--max_steps`` optimizer steps done;
* ``num_epochs``: ``--num_epochs`` epochs (one shard per rank each) done;
* ``early_stop`` (epoch ends, ``--use_early_stopping``): eval loss NaN, or still above
  ``--early_stop_eval_loss`` after ``--early_stop_time`` minutes of training time;
* ``nonfinite_loss``: the training loss is NaN/inf (fp32/bf16: stop before the update
  is applied, save nothing, point at the last good checkpoint), the same for NaN/inf
  gradients under fp32/bf16 (the engine reports them, see :mod:`pretraining.engine`),
  or fp16's loss scaler skipped ``--scale_cnt_limit`` updates in a row.

Training time (what the budget, the time-based LR schedule, early stopping and
``--finetune_time_markers`` see, logged as ``elapsed_s``) counts the training steps
only, data loading included: validation, checkpointing and model export are *not*
counted, nor is start-up (model build, DeepSpeed init). So a run's learning curve does
not depend on how often it validates or checkpoints. ``wall_s`` is plain wall time
since the start of this process's run. A resumed run continues the training time of
its checkpoint.

At epoch ends (in this order): validation on the seed's schedule (one test shard per
validation, rotating; ``--validation_epochs_begin`` while training time is under
``--validation_begin_proportion`` of the budget, ``--validation_epochs_end`` in the last
``--validation_end_proportion``, ``--validation_epochs`` in between, on 0-based epoch
indices divisible by it), early stopping, fine-tuning exports at time markers, and a
checkpoint after every ``--num_epochs_between_checkpoints`` completed epochs. At the
end: a final validation (``--do_validation``), a checkpoint, and ``pretrained/``.

Output in ``OUTPUT_DIR/JOB_NAME/``: ``args.json``, ``metrics.jsonl`` (train lines every
``--print_steps`` with the mean loss since the previous line, under fp16 also ``loss_scale``
and ``skipped_steps``, the updates the loss scaler skipped so far; eval lines; one end line),
``checkpoints/<id>/`` (:mod:`pretraining.checkpoint`), ``pretrained/``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pretraining.args import (DatasetArguments, DeepSpeedArguments, ModelArguments, OptimizerArguments,
                              PretrainingArguments, SchedulerArguments)
from pretraining.atomic import write_guard
from pretraining.checkpoint import (CorruptCheckpoint, list_checkpoints, load_checkpoint, resume_candidates,
                                   save_checkpoint)
from pretraining.cli import ArgumentChecker, asdict, parse_args
from pretraining.errors import UserError
from pretraining.evaluation import MaskedLMSums, unigram_log_probs

logger = logging.getLogger(__name__)
ARGUMENT_GROUPS = (ModelArguments, OptimizerArguments, SchedulerArguments, DatasetArguments, DeepSpeedArguments,
                   PretrainingArguments)
#: model inputs the collator produces (next_sentence_label only for bert-mlm-nsp)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")
#: what must match between a checkpoint and the run resuming it
MODEL_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                    "encoder_ln_mode")
RUN_KEYS = ("model_type", "optimizer_type", "deepspeed", "zero_stage")


@dataclass
class PretrainingConfig:
    """All argument groups of run_pretraining.py."""

    model: ModelArguments
    optimizer: OptimizerArguments
    scheduler: SchedulerArguments
    data: DatasetArguments
    engine: DeepSpeedArguments
    run: PretrainingArguments

    @classmethod
    def parse(cls, argv=None) -> "PretrainingConfig":
        """Parse command-line flags (or one JSON file of them)."""
        return cls(*parse_args(ARGUMENT_GROUPS, argv))

    def groups(self) -> tuple:
        return self.model, self.optimizer, self.scheduler, self.data, self.engine, self.run

    def as_dict(self) -> dict:
        return asdict(*self.groups())

    def compatibility(self, model_config) -> dict:
        """What a checkpoint and the run resuming it must share: the model's shape and the run's engine."""
        merged = self.as_dict()
        return {**{key: getattr(model_config, key) for key in MODEL_SHAPE_KEYS},
                **{key: merged[key] for key in RUN_KEYS}, "precision": self.engine.precision}


def check_arguments(config: PretrainingConfig, world_size: int) -> tuple[int, list[str]]:
    """Validate every group and the rules across groups, all errors at once.

    Returns the gradient accumulation steps and the notices for no-op flags.
    """
    from pretraining.engine import check_precision_supported

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
    check.require(config.scheduler.lr_schedule != "step" or run.max_steps is not None,
                  "--lr_schedule step needs --max_steps (the schedule's total); or use --lr_schedule time")
    problem = check_precision_supported(config.engine.precision)
    check.require(problem is None, problem or "")
    check.require(not (config.engine.fused_optimizer and config.optimizer.optimizer_type == "lamb")
                  or torch.cuda.is_available(),
                  "--fused_optimizer with lamb is DeepSpeed's FusedLamb, which needs a CUDA GPU: drop "
                  "--fused_optimizer (the torch LAMB computes the same update)")
    check.raise_if_any()
    notices = [n for group in (config.data, config.engine, config.run) for n in group.notices()]
    return max(accum, 1), notices


def load_tokenizer(name: str | None, manifest: dict | None, dataset_path: str | None = None):
    """``--tokenizer_name``, else the manifest's tokenizer (a relative one is the dataset folder's own, e.g. the
    vocabulary ``prepare_dataset.py --train_tokenizer`` trained), else the packaged bert-base-uncased."""
    from transformers import AutoTokenizer

    from pretraining.resources import default_tokenizer_dir

    recorded = (manifest or {}).get("tokenizer")
    if recorded and dataset_path and not Path(recorded).is_absolute() and (Path(dataset_path) / recorded).is_dir():
        recorded = str(Path(dataset_path) / recorded)
    source = name or recorded or str(default_tokenizer_dir())
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer {source!r} could not be loaded ({str(exc).splitlines()[0]}); pass --tokenizer_name "
                        "with a local tokenizer folder (or a Hub name when online)") from None


def build_model(model_args, vocab_size: int):
    """A new BERT from the architecture flags (``--vocab_size``, else ``vocab_size``: the tokenizer's), or the
    weights of ``--model_name_or_path`` (its own architecture)."""
    from pretraining.modeling import BertForPreTraining, build_config

    if not model_args.model_name_or_path:
        return BertForPreTraining(build_config(model_args, vocab_size=model_args.vocab_size or vocab_size))
    from pretraining.convert import check_loading

    try:
        model, info = BertForPreTraining.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir, output_loading_info=True,
            next_sentence_prediction=model_args.model_type == "bert-mlm-nsp",
            sparse_mask_prediction=model_args.sparse_mask_prediction)
    except OSError as exc:
        raise UserError(f"--model_name_or_path {model_args.model_name_or_path!r} could not be loaded "
                        f"({str(exc).splitlines()[0]}): give a folder written by run_pretraining.py (pretrained/) "
                        "or a BERT checkpoint") from None
    fresh = check_loading(info.get("missing_keys", []), info.get("unexpected_keys", []), model_args.model_name_or_path)
    if fresh:
        logger.warning("notice: --model_name_or_path %s has no %s: they start fresh (heads, not the encoder)",
                       model_args.model_name_or_path, ", ".join(fresh))
    return model


def data_vocab_size(manifest: dict | None, tokenizer) -> int:
    """The vocabulary the shards and tokenizer need: the larger of the manifest's and the tokenizer's."""
    return max(int((manifest or {}).get("vocab_size") or 0), len(tokenizer))


def check_vocab(dataset_path: str, manifest: dict | None, tokenizer, model_vocab: int) -> None:
    """Refuse shards or a tokenizer whose token ids do not fit the model's embedding."""
    data_vocab = int((manifest or {}).get("vocab_size") or len(tokenizer))
    if max(data_vocab, len(tokenizer)) > model_vocab:
        raise UserError(
            f"the shards in {dataset_path} use a tokenizer of {data_vocab} tokens (tokenizer {len(tokenizer)}), more "
            f"than the model's --vocab_size {model_vocab}: set --vocab_size {max(data_vocab, len(tokenizer))}, or "
            "prepare the shards with a tokenizer that fits")


def check_shards(paths: list[Path], max_positions: int) -> None:
    """Check every shard's schema before training (metadata only: a bad shard fails the start, not epoch 500).

    All shards must share one sequence length, within the model's position embeddings.
    """
    from pretraining.data.shards import check_shard

    lengths = {path: check_shard(path)["seq_length"] for path in paths}
    distinct = sorted(set(lengths.values()))
    if len(distinct) > 1:
        examples = ", ".join(f"{next(p.name for p, n in lengths.items() if n == length)}: {length}"
                             for length in distinct)
        raise UserError(f"the shards have different sequence lengths ({examples}): they come from different "
                        "preparations; keep one prepare_dataset.py output per --dataset_path")
    if distinct and distinct[0] > max_positions:
        raise UserError(f"the shards hold sequences of {distinct[0]} tokens, more than the model's "
                        f"--max_position_embeddings {max_positions}: set --max_position_embeddings {distinct[0]} or "
                        f"more, or prepare the shards with --max_seq_length {max_positions} or less")


class TrainingTimer:
    """Training time: seconds since start (plus an offset from a checkpoint) minus paused spans."""

    def __init__(self, clock: Callable[[], float], offset_s: float = 0.0):
        self.clock = clock
        self.offset_s = offset_s
        self.start = clock()
        self.paused_s = 0.0

    def elapsed(self) -> float:
        return self.offset_s + self.clock() - self.start - self.paused_s

    @contextmanager
    def paused(self):
        """Time spent inside does not count as training time."""
        began = self.clock()
        try:
            yield
        finally:
            self.paused_s += self.clock() - began


@dataclass
class Progress:
    """The loop's position, saved in every checkpoint's state.json."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0
    samples: int = 0
    validations: int = 0
    markers_done: int = 0
    skipped_in_a_row: int = 0
    skipped_steps: int = 0
    last_eval_step: int = -1
    last_checkpoint_step: int = -1
    wandb_run_id: str | None = None


@dataclass
class Interval:
    """Sums since the last progress line."""

    steps: int = 0
    loss: float = 0.0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    last_mean: float = math.nan

    def mean_loss(self) -> float:
        return self.loss / self.steps if self.steps else self.last_mean


@dataclass
class RunResult:
    """What :func:`pretrain` returns: the end record, the run folder and the trained (unwrapped) model."""

    end: dict
    run_dir: Path
    model: torch.nn.Module = field(repr=False)


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Pretraining:
    """One run: built by :func:`pretrain`; ``run()`` trains and returns the result."""

    def __init__(self, config: PretrainingConfig, clock: Callable[[], float] = time.monotonic, stream=None):
        from pretraining.data.collator import PretrainingCollator
        from pretraining.data.loader import ShardLoader
        from pretraining.data.shards import list_shards, read_manifest, read_shard
        from pretraining.engine import build_engine, setup_distributed
        from pretraining.logging import RunLogger, wandb_mode
        from pretraining.optimizers import build_optimizer
        from pretraining.schedules import build_scheduler

        self.config, self.clock = config, clock
        self.wall_start = time.monotonic()
        run, data = config.run, config.data
        self.dist = setup_distributed(config.engine.deepspeed, run.local_rank, timeout_s=run.ddp_timeout)
        grad_accum, notices = check_arguments(config, self.dist.world_size)
        self.run_dir = Path(run.output_dir) / run.job_name
        self.ckpt_root = self.run_dir / "checkpoints"
        candidates = resume_candidates(run.load_training_checkpoint, run.load_checkpoint_id) \
            if run.load_training_checkpoint else []
        resume = candidates[0] if candidates else None
        self._prepare_run_dir(resume)

        self.train_shards = list_shards(data.dataset_path, "train")
        self.test_shards = list_shards(data.dataset_path, "test") if run.do_validation else []
        self.manifest = read_manifest(data.dataset_path)
        self.tokenizer = load_tokenizer(config.model.tokenizer_name, self.manifest, data.dataset_path)
        self.nsp = config.model.model_type == "bert-mlm-nsp"
        self.inputs = MODEL_INPUTS + (("next_sentence_label",) if self.nsp else ())
        self.collate = PretrainingCollator(
            vocab_size=len(self.tokenizer), mask_token_id=self.tokenizer.mask_token_id,
            special_token_ids=self.tokenizer.all_special_ids, masked_lm_prob=data.masked_lm_prob,
            max_predictions_per_seq=data.max_predictions_per_seq)

        set_seeds(run.seed)
        model = build_model(config.model, data_vocab_size(self.manifest, self.tokenizer)).to(self.dist.device)
        check_vocab(data.dataset_path, self.manifest, self.tokenizer, model.config.vocab_size)
        check_shards(self.train_shards + self.test_shards, model.config.max_position_embeddings)
        self.read_shard = functools.partial(read_shard, vocab_size=model.config.vocab_size)
        self.unigram = torch.as_tensor(unigram_log_probs(data.dataset_path, self.train_shards, self.read_shard,
                                                         model.config.vocab_size, self.tokenizer, notices),
                                       dtype=torch.float32, device=self.dist.device) if run.do_validation else None
        self.compatibility = config.compatibility(model.config)
        if config.model.model_name_or_path:
            notices.append(f"--model_name_or_path: the architecture comes from {config.model.model_name_or_path} "
                           f"({model.config.num_hidden_layers}x{model.config.hidden_size}); the architecture flags "
                           "are ignored")
        optimizer = build_optimizer(model, config.optimizer, use_fused=config.engine.fused_optimizer)
        self.scheduler = build_scheduler(optimizer, config.scheduler, total_steps=run.max_steps)
        self.engine = build_engine(model, optimizer, ds_args=config.engine, dist_info=self.dist,
                                   train_batch_size=run.train_batch_size,
                                   micro_batch=run.train_micro_batch_size_per_gpu, grad_accum=grad_accum)
        torch.manual_seed(run.seed + self.dist.rank)  # dropout differs across ranks
        self.loader = ShardLoader(
            self.train_shards, read=self.read_shard, collate=self.collate, micro_batch=self.engine.micro_batch,
            grad_accum=self.engine.grad_accum, rank=self.dist.rank, world_size=self.dist.world_size,
            loader_type=data.data_loader_type, seed=run.seed, max_steps_per_epoch=run.max_steps_per_epoch,
            prefetch=data.async_worker)

        self.progress = Progress()
        self.last_eval: dict | None = None
        if resume is not None:
            resume = self._resume(candidates, notices)
        self.loader.steps_in_epoch(self.progress.epoch)  # shards too small for one step: fail now, not later
        self.budget_s = min(run.early_exit_time_marker, config.scheduler.total_training_time) * 3600.0
        self.total_s = config.scheduler.total_training_time * 3600.0
        self.logger = RunLogger(
            self.run_dir, is_main=self.dist.is_main, budget_s=self.budget_s, stream=stream,
            resume_step=self.progress.step if resume is not None else None,
            wandb={"mode": wandb_mode(run.no_wandb), "project": run.project_name, "name": run.job_name,
                   "config": self._args_record(), "run_id": self.progress.wandb_run_id})
        self.progress.wandb_run_id = self.logger.wandb_run_id or self.progress.wandb_run_id
        for notice in notices:
            self.logger.print(f"notice: {notice}")
        if resume is not None:
            self.logger.print(f"resumed from {resume} at step {self.progress.step}, epoch {self.progress.epoch}")
        if self.dist.is_main:
            (self.run_dir / "args.json").write_text(json.dumps(self._args_record(), indent=1))
        self.logger.print(
            f"pretraining {model.config.num_hidden_layers}x{model.config.hidden_size} {config.model.model_type} with "
            f"{config.optimizer.optimizer_type} on {self.dist.world_size} rank(s) ({self.dist.device.type}, "
            f"{'deepspeed' if config.engine.deepspeed else 'torch'}, {config.engine.precision}); batch "
            f"{run.train_batch_size} = {self.engine.micro_batch} x {self.dist.world_size} x {self.engine.grad_accum}; "
            f"{len(self.train_shards)} train shards; output {self.run_dir}")

    # --- setup helpers ----------------------------------------------------------------------------------

    def _args_record(self) -> dict:
        return {**self.config.as_dict(), "precision": self.config.engine.precision,
                "world_size": self.dist.world_size}

    def _prepare_run_dir(self, resume: Path | None) -> None:
        existing = list_checkpoints(self.ckpt_root)  # every rank decides alike: none is left waiting
        if existing and resume is None:
            raise UserError(
                f"{self.run_dir} already holds checkpoints ({', '.join(p.name for p in existing)}): resume with "
                f"--load_training_checkpoint {self.run_dir}, or pick another --job_name / --output_dir")
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()

    def _resume(self, candidates: list[Path], notices: list[str]) -> Path:
        """Restore the first candidate that verifies (a corrupt latest one falls back, with a notice)."""
        for folder in candidates:
            try:
                state = load_checkpoint(folder, engine=self.engine, dist_info=self.dist, expect=self.compatibility)
                break
            except CorruptCheckpoint as exc:
                if folder == candidates[-1]:
                    raise
                notices.append(f"{str(exc).split(';')[0]}; resuming from the checkpoint before it instead")
        names = {f.name for f in dataclasses.fields(Progress)}
        self.progress = Progress(**{k: v for k, v in state.items() if k in names})
        self.scheduler.load_state_dict(state["scheduler"])
        return folder

    # --- the loop ----------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train until a stop rule fires; then validate, checkpoint, export and log the end line."""
        self.timer = TrainingTimer(self.clock, self.progress.elapsed_s)
        self.interval = Interval()
        self.engine.train()
        reason = self._limit_reached()  # a resumed run may have nothing left to do
        try:
            while reason is None:
                if self.progress.epoch >= self.config.run.num_epochs:
                    reason = "num_epochs"
                    break
                for micro_batches in self.loader.epoch(self.progress.epoch, self.progress.step_in_epoch):
                    reason = self._train_step(micro_batches)
                    if reason is not None:
                        break
                else:
                    reason = self._end_of_epoch()
            end = self._finish(reason)
        finally:
            self.loader.close()
            self.logger.close()
        return RunResult(end=end, run_dir=self.run_dir, model=self.engine.module)

    def _to_device(self, batch: dict) -> dict:
        return {k: batch[k].to(self.dist.device, non_blocking=True) for k in self.inputs}

    def _train_step(self, micro_batches: list[dict]) -> str | None:
        progress, engine = self.progress, self.engine
        lr = self.scheduler.step(progress.step, progress.elapsed_s)  # training time when this step begins
        loss_sum, tokens, samples = torch.zeros((), device=self.dist.device), 0, 0
        last = len(micro_batches) - 1
        for j, batch in enumerate(micro_batches):
            tokens += int(batch["attention_mask"].sum())
            samples += len(batch["input_ids"])
            loss = engine.forward(self._to_device(batch))
            loss_sum += loss.detach().float()
            if j == last:  # all ranks agree on the loss before the update is applied
                loss_total, tokens, samples = self.dist.sum([float(loss_sum), tokens, samples])
                mean_loss = loss_total / (len(micro_batches) * self.dist.world_size)
                if not math.isfinite(mean_loss) and engine.precision != "fp16":
                    return self._nonfinite(f"the training loss became {mean_loss}", lr)
            engine.backward(loss)
            applied = engine.step()
        if applied is False and engine.precision != "fp16":
            return self._nonfinite("the gradients became non-finite (NaN/inf)", lr)
        progress.skipped_in_a_row = 0 if applied else progress.skipped_in_a_row + 1
        progress.skipped_steps += 0 if applied else 1
        progress.step += 1
        progress.step_in_epoch += 1
        progress.tokens += int(tokens)
        progress.samples += int(samples)
        elapsed = self.timer.elapsed()
        self._account(mean_loss if applied else math.nan, int(tokens), int(samples), elapsed - progress.elapsed_s)
        progress.elapsed_s = elapsed
        self.logger.advance(progress.step)
        if progress.step % self.config.run.print_steps == 0:
            self._log_train(lr)
        if progress.skipped_in_a_row >= self.config.run.scale_cnt_limit:
            self.logger.print(f"error: the fp16 loss scaler skipped {progress.skipped_in_a_row} updates in a row "
                              f"({progress.skipped_steps} in total) at step {progress.step} "
                              "(overflowing gradients): stopping; lower --lr or enable --gradient_clipping")
            return "nonfinite_loss"
        return self._limit_reached()

    def _limit_reached(self) -> str | None:
        """max_steps or time_budget when reached (a collective: every rank must call it)."""
        if self.config.run.max_steps is not None and self.progress.step >= self.config.run.max_steps:
            return "max_steps"
        if self.dist.any(self.progress.elapsed_s >= self.budget_s):
            return "time_budget"
        return None

    def _account(self, loss: float, tokens: int, samples: int, seconds: float) -> None:
        interval = self.interval
        if math.isfinite(loss):
            interval.steps += 1
            interval.loss += loss
        interval.tokens += tokens
        interval.samples += samples
        interval.seconds += seconds

    def _log_train(self, lr: float) -> None:
        p, interval = self.progress, self.interval
        seconds = max(interval.seconds, 1e-9)
        mean = interval.mean_loss()
        self.logger.train({
            "step": p.step, "epoch": p.epoch, "elapsed_s": p.elapsed_s, "wall_s": time.monotonic() - self.wall_start,
            "lr": lr, "loss": mean, "seq_per_s": interval.samples / seconds, "tokens_per_s": interval.tokens / seconds,
            "tokens": p.tokens, "samples": p.samples, **self._fp16_record(),
        }, loss_scale=self.engine.loss_scale)
        self.interval = Interval(last_mean=mean)

    def _fp16_record(self) -> dict:
        """fp16 only: the loss scale and the updates the scaler skipped so far (for train and end records)."""
        if self.engine.precision != "fp16":
            return {}
        return {"loss_scale": self.engine.loss_scale, "skipped_steps": self.progress.skipped_steps}

    def _nonfinite(self, what: str, lr: float) -> str:
        good = list_checkpoints(self.ckpt_root)
        where = (f"the last good checkpoint is {good[-1]} (resume with --load_training_checkpoint {self.run_dir} "
                 f"--load_checkpoint_id {good[-1].name})") if good else "no checkpoint was saved before it"
        self.logger.print(f"error: {what} at step {self.progress.step + 1} (lr {lr:.3e}); "
                          f"stopped before applying that update and saved nothing; {where}. Lower --lr, set "
                          "--gradient_clipping, or lengthen the warmup")
        return "nonfinite_loss"

    # --- epoch ends and the end ----------------------------------------------------------------------------

    def _should_validate(self, epoch_index: int) -> bool:
        run = self.config.run
        share = self.progress.elapsed_s / self.total_s
        every = run.validation_epochs_begin if share < run.validation_begin_proportion else \
            run.validation_epochs_end if share > 1 - run.validation_end_proportion else run.validation_epochs
        return epoch_index % every == 0

    def _end_of_epoch(self) -> str | None:
        run, progress = self.config.run, self.progress
        finished = progress.epoch
        progress.epoch += 1
        progress.step_in_epoch = 0
        with self.timer.paused():
            if run.do_validation and self._should_validate(finished):
                eval_loss = self._validate()
                if run.use_early_stopping and self._early_stop(eval_loss):
                    return "early_stop"
            markers = run.time_markers
            while progress.markers_done < len(markers) and \
                    progress.elapsed_s >= markers[progress.markers_done] * self.total_s:
                self._export(self.run_dir / f"pretrained_at_{markers[progress.markers_done]:g}")
                progress.markers_done += 1
            if run.num_epochs_between_checkpoints > 0 and progress.epoch % run.num_epochs_between_checkpoints == 0:
                self._checkpoint()
        return None

    def _early_stop(self, eval_loss: float) -> bool:
        run = self.config.run
        if math.isnan(eval_loss):
            self.logger.print("early stop: the eval loss is NaN")
            return True
        minutes = self.progress.elapsed_s / 60
        if minutes > run.early_stop_time and eval_loss > run.early_stop_eval_loss:
            self.logger.print(f"early stop: eval loss {eval_loss:.4f} is above --early_stop_eval_loss "
                              f"{run.early_stop_eval_loss} after {minutes:.1f} minutes "
                              f"(--early_stop_time {run.early_stop_time})")
            return True
        return False

    def _validate(self) -> float:
        from pretraining.data.loader import validation_batches

        progress = self.progress
        shard = self.test_shards[progress.validations % len(self.test_shards)]
        progress.validations += 1
        self.engine.eval()
        sums = MaskedLMSums()
        for batch in validation_batches(shard, read=self.read_shard, collate=self.collate,
                                        micro_batch=self.config.run.validation_micro_batch, rank=self.dist.rank,
                                        world_size=self.dist.world_size, seed=self.config.run.seed):
            batch = self._to_device(batch)
            sums.add(self.engine.evaluate(batch), batch["labels"], self.unigram)
        self.engine.train()
        metrics = sums.metrics(self.dist.sum(sums.values()), nsp=self.nsp)
        progress.last_eval_step = progress.step
        self.last_eval = metrics
        self.logger.eval({"step": progress.step, "epoch": progress.epoch, "elapsed_s": progress.elapsed_s,
                          "tokens": progress.tokens, **metrics})
        return metrics["eval_loss"]

    def _checkpoint(self) -> Path:
        progress = self.progress
        progress.last_checkpoint_step = progress.step
        state = {**dataclasses.asdict(progress), "scheduler": self.scheduler.state_dict(),
                 "world_size": self.dist.world_size, "compatibility": self.compatibility}
        folder = save_checkpoint(self.ckpt_root, f"epoch{progress.epoch}-step{progress.step}", engine=self.engine,
                                 state=state, dist_info=self.dist, keep=self.config.run.keep_checkpoints)
        self.logger.print(f"checkpoint saved: {folder}")
        return folder

    def _export(self, folder: Path) -> None:
        from pretraining.modeling import export_pretrained

        model = self.engine.export_model()  # every rank: a collective under ZeRO
        if self.dist.is_main:
            tmp = folder.with_name(f".tmp-{folder.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            with write_guard(folder, tmp):
                export_pretrained(model, self.tokenizer, tmp, card=self._card())
            old = folder.with_name(f".old-{folder.name}")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
            self.logger.print(f"model exported: {folder}")
        self.dist.barrier()

    def _card(self) -> dict:
        """The model card's facts about this run (README.md of every export)."""
        config, progress = self.config, self.progress
        counts = (self.manifest or {}).get("counts", {}).get("train", {})
        last = self.last_eval or {}
        return {
            "run": config.run.job_name,
            "data": f"{config.data.dataset_path} (tokenizer {(self.manifest or {}).get('tokenizer', 'n/a')}; "
                    f"{counts.get('tokens', 'n/a')} train tokens, {counts.get('samples', 'n/a')} sequences)",
            "budget": f"{progress.elapsed_s / 3600:.3g} h of training time of {config.scheduler.total_training_time:g} "
                      f"h, {progress.step} optimizer steps, {progress.tokens:,} tokens, {self.dist.world_size} "
                      f"rank(s), {config.engine.precision}",
            "optimizer": f"{config.optimizer.optimizer_type}, lr {config.optimizer.lr:g} ({config.scheduler.lr_schedule} "
                         f"schedule, {config.scheduler.curve}), batch {config.run.train_batch_size}",
            "final losses": f"train {self.interval.last_mean:.4f}" + (
                f", eval {last['eval_loss']:.4f} (unigram baseline {last.get('eval_unigram_loss', float('nan')):.4f}, "
                f"MLM accuracy {last.get('eval_mlm_accuracy', float('nan')):.4f})" if last else ""),
        }

    def _finish(self, reason: str) -> dict:
        run, progress = self.config.run, self.progress
        if self.interval.steps and progress.step % run.print_steps:
            self._log_train(self.scheduler.get_last_lr()[0])
        if reason != "nonfinite_loss":
            with self.timer.paused():
                if run.do_validation and progress.last_eval_step != progress.step:
                    self._validate()
                if progress.last_checkpoint_step != progress.step:
                    self._checkpoint()
                if run.finetune_checkpoint_at_end:
                    self._export(self.run_dir / "pretrained")
        end = {"reason": reason, "step": progress.step, "elapsed_s": progress.elapsed_s, "tokens": progress.tokens,
               "final_loss": self.interval.last_mean, **self._fp16_record()}
        self.logger.end(end)
        return end


def pretrain(config: PretrainingConfig, clock: Callable[[], float] = time.monotonic, stream=None) -> RunResult:
    """Run pretraining as configured (see the module docstring); ``clock`` is injectable for tests.

    In a multi-process run, losing another rank (it died, or hung past ``--ddp_timeout``)
    is a UserError on the ranks left, instead of a traceback or a hang.
    """
    from pretraining.engine import lost_peer

    try:
        return Pretraining(config, clock=clock, stream=stream).run()
    except RuntimeError as exc:
        why = lost_peer(exc)
        if why is None:
            raise
        run = config.run
        raise UserError(
            f"rank {torch.distributed.get_rank()} of {torch.distributed.get_world_size()} lost contact with another rank ({why}): a rank died or "
            f"did not answer within --ddp_timeout {run.ddp_timeout} s; its own output names the cause. This rank "
            f"stopped; resume with --load_training_checkpoint {Path(run.output_dir) / run.job_name} once every rank "
            "can run") from None
