"""The pretraining run: one loop for the DeepSpeed and the plain-torch engines.

``pretrain(config)`` sets up the process group, data, model, optimizer, schedule, engine
and loader (:func:`pretraining.train.run_setup.build_run`, in its stated order), optionally
resumes a checkpoint, then trains until a stop rule fires, checked after every optimizer step:

* ``time_budget``: training time reached ``min(--early_exit_time_marker,
  --total_training_time)`` hours (the LR is 0 at the end of the budget anyway);
* ``max_steps``: ``--max_steps`` optimizer steps done;
* ``num_epochs``: ``--num_epochs`` epochs (one shard per rank each) done;
* ``early_stop`` (epoch ends, ``--use_early_stopping``): eval loss NaN, or still above
  ``--early_stop_eval_loss`` after ``--early_stop_time`` minutes of training time;
* ``nonfinite_loss``: the training loss is NaN/inf (fp32/bf16: stop before the update
  is applied, save nothing, point at the last good checkpoint), the same for NaN/inf
  gradients under fp32/bf16 (the engine reports them, see :mod:`pretraining.train.engine`),
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
``checkpoints/<id>/`` (:mod:`pretraining.checkpoints.checkpoint`), ``pretrained/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pretraining.atomic import swap_folder, write_guard
from pretraining.checkpoints.checkpoint import CorruptCheckpoint, list_checkpoints, load_checkpoint, save_checkpoint
from pretraining.train.config import PretrainingConfig, resume_history
from pretraining.errors import UserError
from pretraining.train.evaluation import MaskedLMSums
from pretraining.train.progress import Interval, Progress, StopReason, StopSignals, TrainingTimer
from pretraining.train.run_setup import BuiltRun, build_run

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`pretrain` returns: the end record, the run folder and the trained (unwrapped) model."""

    end: dict
    run_dir: Path
    model: torch.nn.Module = field(repr=False)


class Pretraining:
    """The loop of one run over the parts :func:`pretraining.train.run_setup.build_run` made (resuming a checkpoint
    into them first when asked); ``run()`` trains and returns the result."""

    def __init__(self, built: BuiltRun, clock: Callable[[], float] = time.monotonic, stream=None):
        from pretraining.train.metrics import RunLogger, wandb_mode

        self.config, self.clock = built.config, clock
        self.wall_start = time.monotonic()
        self.dist, self.run_dir, self.ckpt_root = built.dist, built.run_dir, built.ckpt_root
        self.manifest, self.tokenizer, self.inputs = built.manifest, built.tokenizer, built.inputs
        self.test_shards, self.collate, self.read_shard, self.unigram = \
            built.test_shards, built.collate, built.read_shard, built.unigram
        self.engine, self.scheduler, self.loader = built.engine, built.scheduler, built.loader
        self.compatibility, self.nsp = built.compatibility, "next_sentence_label" in built.inputs
        config, run, notices = self.config, self.config.run, built.notices

        self.progress = Progress()
        self.signals = StopSignals()
        self.last_eval: dict | None = None
        resume = self._resume(built.resume_candidates, notices) if built.resume_candidates else None
        self.loader.steps_in_epoch(self.progress.epoch)  # shards too small for one step: fail now, not later
        self.budget_s, self.total_s = config.budget_s, config.scheduler.total_training_s
        self.logger = RunLogger(
            self.run_dir, is_main=self.dist.is_main, budget_s=self.budget_s, stream=stream,
            resume_step=self.progress.step if resume is not None else None,
            wandb={"mode": wandb_mode(run.no_wandb), "project": run.project_name, "name": run.job_name,
                   "config": self._args_record(), "run_id": self.progress.wandb_run_id})
        self.progress.wandb_run_id = self.logger.wandb_run_id or self.progress.wandb_run_id
        for notice in notices:
            self.logger.print(f"notice: {notice}")
        self.history = self._settings_history(resume)
        if resume is not None:
            self.logger.print(f"resumed from {resume} at step {self.progress.step}, epoch {self.progress.epoch}")
        if self.dist.is_main:
            (self.run_dir / "args.json").write_text(json.dumps({**self._args_record(), "history": self.history},
                                                               indent=1))
        model = self.engine.module.config
        self.logger.print(
            f"pretraining {model.num_hidden_layers}x{model.hidden_size} {config.model.model_type} with "
            f"{config.optimizer.optimizer_type} on {self.dist.world_size} rank(s) ({self.dist.device.type}, "
            f"{'deepspeed' if config.backend.deepspeed else 'torch'}, {config.backend.precision}); batch "
            f"{run.train_batch_size} = {self.engine.micro_batch} x {self.dist.world_size} x {self.engine.grad_accum}; "
            f"{len(built.train_shards)} train shards; output {self.run_dir}")

    # --- setup helpers ----------------------------------------------------------------------------------

    def _args_record(self) -> dict:
        return {**self.config.as_dict(), "precision": self.config.backend.precision,
                "world_size": self.dist.world_size,  # and the masking trained with (flag, else the manifest's)
                "masked_lm_prob": self.collate.masked_lm_prob,
                "max_predictions_per_seq": self.collate.max_predictions_per_seq}

    def _settings_history(self, resume: Path | None) -> list[dict]:
        """args.json's history of changed settings (:func:`pretraining.train.config.resume_history`), with a notice."""
        history, changes = resume_history(self.run_dir / "args.json", self._args_record(), self.progress.step) \
            if resume is not None else ([], {})
        if changes:
            self.logger.print(f"notice: resumed at step {self.progress.step} with other settings than the run so far "
                              "(recorded in args.json's history and the model card): " +
                              ", ".join(f"{key} {before} -> {now}" for key, (before, now) in changes.items()))
        return history

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
        self.scheduler.load_state_dict(state["scheduler"])  # its base LRs; the position is the loop's
        return folder

    # --- the loop ----------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train until a stop rule fires; then validate, checkpoint, export and log the end line."""
        self.timer = TrainingTimer(self.clock, self.progress.elapsed_s)
        self.interval = Interval()
        self.engine.train()
        try:
            with self.signals:
                reason = self.should_stop()  # a resumed run may have nothing left to do
                while reason is None:
                    if self.progress.epoch >= self.config.run.num_epochs:
                        reason = StopReason.NUM_EPOCHS
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

    def _train_step(self, micro_batches: list[dict]) -> StopReason | None:
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
        # the ranks' clocks differ a little: every rank takes the slowest one's training time, so the time-based LR,
        # the validation and checkpoint markers and the stop are the same on each (else DDP replicas drift apart)
        elapsed = self.dist.max(self.timer.elapsed())
        self._account(mean_loss if applied else math.nan, int(tokens), int(samples), elapsed - progress.elapsed_s)
        progress.elapsed_s = elapsed
        self.logger.advance(progress.step)
        if progress.step % self.config.run.print_steps == 0:
            self._log_train(lr)
        if progress.skipped_in_a_row >= self.config.run.scale_cnt_limit:
            return self._nonfinite(f"the fp16 loss scaler skipped {progress.skipped_in_a_row} updates in a row "
                                   f"(--scale_cnt_limit; {progress.skipped_steps} in total, loss scale now "
                                   f"{engine.loss_scale:g}): the gradients overflow at every scale", lr,
                                   step=progress.step, applied="skipped those updates")
        return self.should_stop()

    def should_stop(self) -> StopReason | None:
        """max_steps or time_budget when reached (a collective: every rank must call it)."""
        if self.config.run.max_steps is not None and self.progress.step >= self.config.run.max_steps:
            return StopReason.MAX_STEPS
        over_budget, interrupted = self.dist.sum([float(self.progress.elapsed_s >= self.budget_s),
                                                  float(self.signals.received is not None)])
        if interrupted:  # on any rank: every rank stops at this step and saves its part of the checkpoint
            return StopReason.INTERRUPTED
        return StopReason.TIME_BUDGET if over_budget else None

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

    def _nonfinite(self, what: str, lr: float, step: int | None = None,
                   applied: str = "stopped before applying that update") -> StopReason:
        good = list_checkpoints(self.ckpt_root)
        where = (f"the last good checkpoint is {good[-1]} (resume with --load_training_checkpoint {self.run_dir} "
                 f"--load_checkpoint_id {good[-1].name})") if good else "no checkpoint was saved before it"
        step = self.progress.step + 1 if step is None else step
        self.logger.print(f"error: {what} at step {step} (lr {lr:.3e}); {applied} and saved nothing; {where}. "
                          "Lower --lr, set --gradient_clipping, or lengthen the warmup")
        return StopReason.NONFINITE_LOSS

    # --- epoch ends and the end ----------------------------------------------------------------------------

    def _should_validate(self, epoch_index: int) -> bool:
        run = self.config.run
        share = self.progress.elapsed_s / self.total_s
        every = run.validation_epochs_begin if share < run.validation_begin_proportion else \
            run.validation_epochs_end if share > 1 - run.validation_end_proportion else run.validation_epochs
        return epoch_index % every == 0

    def _end_of_epoch(self) -> StopReason | None:
        run, progress = self.config.run, self.progress
        finished = progress.epoch
        progress.epoch += 1
        progress.step_in_epoch = 0
        with self.timer.paused():
            if run.do_validation and self._should_validate(finished):
                eval_loss = self._validate()
                if run.use_early_stopping and self._early_stop(eval_loss):
                    return StopReason.EARLY_STOP
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
        from pretraining.checkpoints.export import export_pretrained

        self.engine.eval()  # a schedule-free optimizer's averaged weights are the model
        try:
            model = self.engine.export_model()  # every rank: a collective under ZeRO
            if self.dist.is_main:
                tmp = folder.with_name(f".tmp-{folder.name}")
                shutil.rmtree(tmp, ignore_errors=True)
                with write_guard(folder, tmp):
                    export_pretrained(model, self.tokenizer, tmp, card=self._card())
                swap_folder(tmp, folder, folder.with_name(f".old-{folder.name}"))
                self.logger.print(f"model exported: {folder}")
        finally:
            self.engine.train()
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
                      f"rank(s), {config.backend.precision}",
            "optimizer": f"{config.optimizer.optimizer_type}, lr {config.optimizer.lr:g} ({config.scheduler.lr_schedule} "
                         f"schedule, {config.scheduler.curve}), batch {config.run.train_batch_size}",
            "settings changed at resume": "; ".join(
                f"step {entry['step']}: " + ", ".join(f"{k} {b} -> {n}" for k, (b, n) in entry["changed"].items())
                for entry in self.history) or None,
            "final losses": f"train {self.interval.last_mean:.4f}" + (
                f", eval {last['eval_loss']:.4f} (unigram baseline {last.get('eval_unigram_loss', float('nan')):.4f}, "
                f"MLM accuracy {last.get('eval_mlm_accuracy', float('nan')):.4f})" if last else ""),
        }

    def _finish(self, reason: StopReason) -> dict:
        run, progress = self.config.run, self.progress
        if self.interval.steps and progress.step % run.print_steps:
            self._log_train(self.scheduler.get_last_lr()[0])
        finished = reason not in (StopReason.NONFINITE_LOSS, StopReason.INTERRUPTED)
        if reason is not StopReason.NONFINITE_LOSS:
            with self.timer.paused():
                if finished and run.do_validation and progress.last_eval_step != progress.step:
                    self._validate()
                if progress.last_checkpoint_step != progress.step:
                    self._checkpoint()
                if finished and run.finetune_checkpoint_at_end:
                    self._export(self.run_dir / "pretrained")
        end = {"reason": reason.value, "step": progress.step, "elapsed_s": progress.elapsed_s, "tokens": progress.tokens,
               "final_loss": self.interval.last_mean, **self._fp16_record()}
        if reason is StopReason.INTERRUPTED:
            end["signal"] = self.signals.name or "SIGINT"  # another rank's signal: this one stopped with it
            self.logger.print(f"error: interrupted ({end['signal']}) at step {progress.step}: checkpoint "
                              f"{list_checkpoints(self.ckpt_root)[-1]} saved; resume with the same command plus "
                              f"--load_training_checkpoint {self.run_dir}")
        self.logger.end(end)
        return end


def pretrain(config: PretrainingConfig, clock: Callable[[], float] = time.monotonic, stream=None) -> RunResult:
    """Run pretraining as configured (see the module docstring); ``clock`` is injectable for tests.

    In a multi-process run, losing another rank (it died, or hung past ``--ddp_timeout``)
    is a UserError on the ranks left, instead of a traceback or a hang.
    """
    from pretraining.train.engine import lost_peer

    try:
        return Pretraining(build_run(config), clock=clock, stream=stream).run()
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
