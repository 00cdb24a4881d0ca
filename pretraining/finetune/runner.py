"""run_glue.py's arguments and the fine-tuning run itself (Hugging Face Trainer).

Three argument groups, parsed with :func:`pretraining.cli.parse_args`:
:class:`GlueModelArguments`, :class:`GlueDataArguments` and
:class:`GlueTrainingArguments` (transformers' ``TrainingArguments`` plus the seed's
``--evaluation_strategy``, ``--warmup_ratio``, ``--overwrite_output_dir`` and
``--early_stopping_patience``). :func:`finetune` trains, evaluates, predicts and writes
``train_results.json``, ``eval_results.json``, ``all_results.json`` and
``predict_results_<task>.tsv`` into ``--output_dir``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import TrainingArguments

from pretraining.finetune import glue
from pretraining.atomic import atomic_file, write_json_atomic
from pretraining.cli import ArgumentChecker
from pretraining.errors import UserError
from pretraining.checkpoints.export import export_pretrained
from pretraining.model.modeling import BertPreTrainedModel
from pretraining.outputs import check_output_folder

logger = logging.getLogger("run_glue")
#: where ``--seeds`` puts each seed's run inside ``--output_dir``
SEED_DIR = "seed_{}"


@dataclass
class GlueModelArguments:
    """Which checkpoint to fine-tune, and an optional teacher to distil from."""

    model_name_or_path: str = field(
        metadata={"help": "Checkpoint folder (a Hugging Face BERT, or a pretraining run's pretrained/ export) "
                          "or Hub model name"})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer folder or Hub name; default: the one saved with the model"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Cache folder for Hub downloads"})
    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "A model already fine-tuned on this task to distil from (same tokenizer)"})
    distill_alpha: float = field(
        default=0.5, metadata={"help": "Distillation: weight of the hard-label loss; 1 - alpha weighs the teacher's"})
    distill_temperature: float = field(
        default=2.0, metadata={"help": "Distillation: softmax temperature T of teacher and student (loss scaled by T^2)"})


@dataclass
class GlueDataArguments:
    """Which task and data, and how to tokenise it."""

    task_name: Optional[str] = field(
        default=None,
        metadata={"help": f"GLUE task ({', '.join(glue.GLUE_TASKS)}; from the Hub unless files are given) or "
                          "rotten_tomatoes (offline, packaged); leave out for a local task from --train_file"})
    dataset_name: str = field(
        default=glue.GLUE_HUB_DATASET, metadata={"help": "Hub dataset holding the GLUE tasks"})
    train_file: Optional[str] = field(
        default=None, metadata={"help": "Training data: csv, tsv (GLUE's own TSVs too; .txt as MRPC's raw files), "
                                        "json, jsonl or parquet (the Hub's format)"})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Validation data (same formats)"})
    test_file: Optional[str] = field(default=None, metadata={"help": "Test data for --do_predict (labels not needed)"})
    glue_dir: Optional[str] = field(
        default=None,
        metadata={"help": "GLUE's glue_data/ folder (CoLA/, SST-2/, MRPC/, STS-B/, QQP/, MNLI/, QNLI/, RTE/, WNLI/): "
                          "--task_name's train.tsv, dev.tsv and test.tsv (MNLI: dev/test_matched and _mismatched, "
                          "both evaluated and predicted) instead of the Hub; --train_file etc. still override"})
    text_columns: Optional[str] = field(
        default=None, metadata={"help": "Text column(s) of local files, comma-separated: 'sentence' or "
                                        "'question1,question2'; default sentence1,sentence2 / sentence / text"})
    text_column: Optional[str] = field(default=None, metadata={"help": "Alias of --text_columns for one column"})
    label_column: Optional[str] = field(
        default=None, metadata={"help": "Label column of local files (default: label, or the GLUE TSV's own)"})
    max_seq_length: int = field(
        default=128, metadata={"help": "Truncate inputs (both sentences together) to this many tokens"})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every input to --max_seq_length instead of to the longest in the "
                                         "batch (slower; the seed's default)"})
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Train on a fixed-seed random subset of this many examples"})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Evaluate on a fixed-seed random subset of this many examples"})
    max_predict_samples: Optional[int] = field(
        default=None, metadata={"help": "Predict only the first this many test examples"})

    @property
    def text_column_list(self) -> Optional[list[str]]:
        names = self.text_columns or self.text_column
        return [c.strip() for c in names.split(",") if c.strip()] if names else None

    def validate(self, check: ArgumentChecker) -> None:
        """Gather argument errors into ``check``."""
        check.require(not self.glue_dir or self.task_name is not None, "--glue_dir needs --task_name (which task)")
        check.require(not self.glue_dir or Path(self.glue_dir).expanduser().is_dir(),
                      f"--glue_dir {self.glue_dir} is not a folder: give GLUE's glue_data/ folder")
        if self.task_name is not None:
            check.require(self.task_name.lower().replace("-", "") in glue.TASKS,
                          f"--task_name {self.task_name!r} is not one of: {', '.join(glue.TASKS)}")
        else:
            check.require(bool(self.train_file or self.validation_file),
                          "give --task_name or local files (--train_file/--validation_file)")
        columns = self.text_column_list
        check.require(columns is None or 1 <= len(columns) <= 2, "--text_columns takes one or two column names")
        check.require(self.max_seq_length > 0, "--max_seq_length must be > 0")
        for flag in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, flag)
            check.require(value is None or value > 0, f"--{flag} must be > 0 (got {value})")


@dataclass
class GlueTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments plus the names academic-budget-bert's recipes use."""

    evaluation_strategy: Optional[str] = field(
        default=None, metadata={"help": "Alias of --eval_strategy (no, steps, epoch), as in the seed's commands"})
    warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": "Warm up over this fraction of the steps (used when --warmup_steps is 0)"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh even if --output_dir holds checkpoints (default: resume "
                                         "from the last one)"})
    early_stopping_patience: int = field(
        default=-1, metadata={"help": "Stop after this many evaluations without improving the task's main metric "
                                      "and keep the best model (-1 = off)"})
    finetune_checkpoint_at_end: Optional[bool] = field(
        default=None, metadata={"help": "Accepted for the seed's run_glue.sh (it is a pretraining flag): no effect "
                                        "here, a notice says so", "nargs": "?", "const": True})
    seeds: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Fine-tune once per seed (e.g. --seeds 1 2 3), each run in OUTPUT_DIR/seed_<N>, and write "
                          "the mean and std of every eval metric over the seeds to OUTPUT_DIR/all_results.json "
                          "(replaces --seed)", "nargs": "+"})
    learning_rate_grid: Optional[list[float]] = field(
        default=None,
        metadata={"help": "Choose --learning_rate from these values on a dev split carved out of the training "
                          "examples (--dev_fraction; never the evaluation split): one run per value with the first "
                          "seed on the rest of the training examples, scored by the task's main metric on the dev "
                          "split; then the runs of --seeds with the best value on all training examples. The choice "
                          "and every value's dev score are in all_results.json (lr_selection)", "nargs": "+"})
    dev_fraction: float = field(
        default=0.2, metadata={"help": "--learning_rate_grid: share of the training examples held out as the dev "
                                       "split the LR is chosen on (a fixed split, the same for every model)"})

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None and not self.warmup_steps:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"--warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
            self.warmup_steps = self.warmup_ratio
        if self.early_stopping_patience > 0:
            if str(getattr(self.eval_strategy, "value", self.eval_strategy)) == "no":
                raise ValueError("--early_stopping_patience needs --eval_strategy steps or epoch")
            self.load_best_model_at_end = True
            self.save_strategy = self.eval_strategy
            self.eval_steps = self.eval_steps or self.logging_steps
            self.save_steps = self.eval_steps
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds lists a seed twice ({self.seeds})")
        if self.learning_rate_grid is not None:
            if not self.learning_rate_grid or min(self.learning_rate_grid) <= 0 or \
                    len(set(self.learning_rate_grid)) != len(self.learning_rate_grid):
                raise ValueError(f"--learning_rate_grid must list distinct values > 0 (got {self.learning_rate_grid})")
            if not 0.0 < self.dev_fraction < 1.0:
                raise ValueError(f"--dev_fraction must be in (0, 1) (got {self.dev_fraction})")
        super().__post_init__()
        if self.fp16 and self.device.type == "cpu":
            raise ValueError("--fp16 needs a GPU and none is in use here (device cpu): on a CPU use --bf16 "
                             "or neither")


def load_data(data_args: GlueDataArguments, cache_dir: Optional[str] = None) -> glue.TaskData:
    """The task's splits: rotten_tomatoes (packaged) or a GLUE task from the Hub, with any of
    --train_file/--validation_file/--test_file replacing that split; a local task without a name."""
    task = glue.get_task(data_args.task_name) if data_args.task_name else None
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    local = glue.load_local_files(files, task, data_args.text_column_list, data_args.label_column) \
        if any(files.values()) else None
    if task is not None and data_args.glue_dir:
        base = glue.load_glue_dir(data_args.glue_dir, task)
    elif task is not None and task.name == "rotten_tomatoes":
        base = glue.load_rotten_tomatoes()
    elif task is not None and local is None:
        base = glue.load_hub_task(task, data_args.dataset_name, cache_dir)
    else:
        return local
    if local is None:
        return base
    return dataclasses.replace(base, train=local.train or base.train, evals=local.evals or base.evals,
                               tests=local.tests or base.tests)


def _subsets(data: glue.TaskData, data_args: GlueDataArguments) -> glue.TaskData:
    return dataclasses.replace(
        data,
        train=None if data.train is None else glue.subset(data.train, data_args.max_train_samples),
        evals={k: glue.subset(v, data_args.max_eval_samples) for k, v in data.evals.items()},
        tests={k: glue.subset(v, data_args.max_predict_samples, shuffle=False) for k, v in data.tests.items()},
    )


def _check_splits(data: glue.TaskData, args: GlueTrainingArguments) -> None:
    check = ArgumentChecker()
    name = data.task.name
    check.require(not args.do_train or data.train is not None, f"--do_train: task {name} has no training data; "
                                                               "pass --train_file")
    check.require(not args.do_eval or bool(data.evals), f"--do_eval: task {name} has no validation data; "
                                                        "pass --validation_file")
    check.require(not args.do_predict or bool(data.tests), f"--do_predict: task {name} has no test data; "
                                                           "pass --test_file")
    check.raise_if_any()


def _load_teacher(model_args: GlueModelArguments, task: glue.TaskSpec, tokenizer, max_seq_length: int):
    teacher, missing = glue.load_model_for_task(model_args.teacher_model_name_or_path, task.num_labels,
                                                _problem_type(task), task.label_names, model_args.cache_dir)
    if any("classifier" in key for key in missing):
        raise UserError(f"the teacher {model_args.teacher_model_name_or_path} has no fine-tuned classification "
                        "head: fine-tune it on this task with run_glue.py first")
    glue.check_model_fits(teacher.config, tokenizer, max_seq_length, "the teacher")
    return teacher


def _problem_type(task: glue.TaskSpec) -> str:
    return "regression" if task.is_regression else "single_label_classification"


def _token_to_environment(args: GlueTrainingArguments) -> None:
    """Move ``--hub_token`` to ``HF_TOKEN`` (where huggingface_hub reads it): the Trainer pickles its arguments into
    ``training_args.bin`` in the output folder and every checkpoint, and a token must not be written there."""
    if args.hub_token:
        os.environ["HF_TOKEN"] = args.hub_token
        args.hub_token = None


def _refuse_replacing_results(args: GlueTrainingArguments) -> None:
    """A later run into an output folder keeps the earlier run's results: its all_results.json gains the new keys
    (:func:`_merged_results`), and predictions that exist already are refused unless ``--overwrite_output_dir``."""
    out = Path(args.output_dir)
    earlier = sorted(p.name for p in out.glob("predict_results_*.tsv")) if out.is_dir() else []
    if args.do_predict and earlier and not args.overwrite_output_dir:
        raise UserError(f"--output_dir {out} holds predictions of an earlier run ({', '.join(earlier)}): pick another "
                        "--output_dir, or pass --overwrite_output_dir to replace them")


def _merged_results(path: Path, results: dict, overwrite: bool) -> dict:
    """``results`` over the earlier run's all_results.json in the same folder (the same task; its keys this run does
    not produce are kept), so a predict-only run does not erase the train and eval figures the report reads."""
    if overwrite or not path.is_file():
        return results
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return results
    if not isinstance(earlier, dict) or earlier.get("task_name") != results.get("task_name"):
        return results
    return {**earlier, **results}


def _resume_checkpoint(args: GlueTrainingArguments) -> Optional[str]:
    if args.resume_from_checkpoint or args.overwrite_output_dir or not os.path.isdir(args.output_dir):
        return args.resume_from_checkpoint
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(args.output_dir)
    if last:
        logger.info("resuming from %s (pass --overwrite_output_dir to start afresh)", last)
    return last


def build_trainer(model, tokenizer, data: glue.TaskData, model_args: GlueModelArguments,
                  data_args: GlueDataArguments, training_args: GlueTrainingArguments, teacher=None):
    """A Trainer (a DistillationTrainer when ``teacher`` is given) for tokenised ``data``."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, default_data_collator

    from pretraining.finetune.distillation import DistillationTrainer

    if data_args.pad_to_max_length:
        collator = default_data_collator
    else:
        multiple = 8 if (training_args.fp16 or training_args.bf16) else None
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
    callbacks = []
    if training_args.early_stopping_patience > 0:
        training_args.metric_for_best_model = data.task.main_metric
        training_args.greater_is_better = data.task.main_metric != "mse"
        callbacks.append(EarlyStoppingCallback(training_args.early_stopping_patience))
    kwargs = dict(model=model, args=training_args, train_dataset=data.train,
                  eval_dataset=data.evals.get(""), processing_class=tokenizer, data_collator=collator,
                  compute_metrics=glue.metrics_function(data.task), callbacks=callbacks)
    if teacher is None:
        return Trainer(**kwargs)
    return DistillationTrainer(**kwargs, teacher_model=teacher, alpha=model_args.distill_alpha,
                               temperature=model_args.distill_temperature)


def finetune(model_args: GlueModelArguments, data_args: GlueDataArguments,
             training_args: GlueTrainingArguments) -> dict:
    """Fine-tune (``--do_train``), evaluate (``--do_eval``) and predict (``--do_predict``).

    Returns the ``all_results.json`` dict: ``task_name``, train metrics (``train_loss``,
    ``train_runtime``, ``train_samples``, ``epoch``...), eval metrics (``eval_loss``,
    ``eval_<metric>``, ``eval_samples``; MNLI's mismatched ones suffixed ``_mm``).
    With ``--seeds``, one run per seed in ``OUTPUT_DIR/seed_<N>`` and the summary of
    :func:`summarize_seeds` (means, ``<key>_std``, ``<key>_per_seed``, ``seeds``).
    """
    check = ArgumentChecker()
    data_args.validate(check)
    check.raise_if_any()
    local = [path for path in (data_args.train_file, data_args.validation_file, data_args.test_file) if path]
    check_output_folder(training_args.output_dir, flag="--output_dir", inputs=local)
    _refuse_replacing_results(training_args)
    _token_to_environment(training_args)
    if training_args.finetune_checkpoint_at_end is not None:
        logger.warning("notice: --finetune_checkpoint_at_end has no effect in run_glue.py (it is "
                       "run_pretraining.py's; the fine-tuned model is always saved to --output_dir)")
    data = _subsets(load_data(data_args, model_args.cache_dir), data_args)
    _check_splits(data, training_args)
    glue.checkpoint_model_type(model_args.model_name_or_path, model_args.cache_dir)  # a bad model path is named first
    tokenizer = glue.checkpoint_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.cache_dir)
    data = glue.tokenize_splits(data, tokenizer, data_args.max_seq_length, data_args.pad_to_max_length)
    selection = None
    if training_args.learning_rate_grid:
        selection = select_learning_rate(model_args, data_args, training_args, data, tokenizer)
        training_args = copy.copy(training_args)
        training_args.learning_rate = selection["learning_rate"]
    if not training_args.seeds:
        return _finetune_seed(model_args, data_args, training_args, data, tokenizer, selection)
    output_dir = Path(training_args.output_dir)
    per_seed = {}
    for seed in training_args.seeds:
        args = copy.copy(training_args)
        args.seed, args.output_dir = seed, str(output_dir / SEED_DIR.format(seed))
        logger.info("fine-tuning with seed %d of %s into %s", seed, training_args.seeds, args.output_dir)
        per_seed[seed] = _finetune_seed(model_args, data_args, args, data, tokenizer)
    results = _with_selection(summarize_seeds(per_seed), selection)
    if training_args.process_index == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "all_results.json", results)
    return results


#: where --learning_rate_grid puts each candidate's run inside --output_dir
SELECTION_DIR = "lr_selection/lr_{:g}"


def select_learning_rate(model_args: GlueModelArguments, data_args: GlueDataArguments,
                         training_args: GlueTrainingArguments, data: glue.TaskData, tokenizer) -> dict:
    """``--learning_rate_grid``: the LR whose run (first seed, training examples less the dev split) scores best on
    the dev split by the task's main metric. Returns ``{"learning_rate", "metric", "dev_samples", "scores"}``."""
    task = data.task
    if data.train is None or len(data.train) < 4:
        raise UserError("--learning_rate_grid needs training examples to carve a dev split from (at least 4)")
    split = data.train.train_test_split(test_size=training_args.dev_fraction, seed=0, shuffle=True)
    carved = dataclasses.replace(data, train=split["train"], evals={"": split["test"]}, tests={})
    seed = (training_args.seeds or [training_args.seed])[0]
    key, better = f"eval_{task.main_metric}", (min if task.main_metric == "mse" else max)
    scores = {}
    for lr in training_args.learning_rate_grid:
        args = copy.copy(training_args)
        args.learning_rate, args.seed, args.do_eval, args.do_predict, args.do_train = lr, seed, True, False, True
        args.output_dir = str(Path(training_args.output_dir) / SELECTION_DIR.format(lr))
        logger.info("choosing the learning rate: %g (seed %d, %d training, %d dev examples)", lr, seed,
                    len(split["train"]), len(split["test"]))
        score = _finetune_seed(model_args, data_args, args, carved, tokenizer).get(key)
        scores[f"{lr:g}"] = None if score is None or not math.isfinite(score) else float(score)
    finite = {lr: v for lr, v in scores.items() if v is not None}
    if not finite:
        raise UserError(f"--learning_rate_grid: no value gave a finite dev {task.main_metric} ({scores}): try "
                        "smaller learning rates")
    chosen = better(finite, key=finite.get)
    logger.info("learning rate %s chosen on the dev split (%s %s)", chosen, task.main_metric, scores)
    return {"learning_rate": float(chosen), "metric": task.main_metric, "dev_samples": len(split["test"]),
            "dev_fraction": training_args.dev_fraction, "seed": seed, "scores": scores}


def _with_selection(results: dict, selection: Optional[dict]) -> dict:
    """all_results.json with the LR choice recorded (``lr_selection`` and ``learning_rate``)."""
    if selection is None:
        return results
    return {**results, "learning_rate": selection["learning_rate"], "lr_selection": selection}


def pretrained_model(model_name_or_path: str) -> str:
    """The pretrained model a fine-tuning run starts from, at the root: a fine-tuned folder (MNLI's model predicting
    AX) names the one it came from in its all_results.json; else the model itself (resolved when a folder)."""
    from pretraining.finetune.glue.submission import recorded_pretrained_model

    path = Path(model_name_or_path).expanduser()
    return recorded_pretrained_model(path) or (str(path.resolve()) if path.exists() else str(model_name_or_path))


def summarize_seeds(per_seed: dict[int, dict]) -> dict:
    """One results dict for runs that differ only in their seed.

    Every numeric key present in all runs becomes its mean, with ``<key>_std`` (sample
    standard deviation, ddof=1; 0 for one seed) and ``<key>_per_seed`` (the values in
    seed order); ``seeds`` lists the seeds. Other keys (``task_name``) are the first run's.
    """
    import numpy as np

    runs = list(per_seed.values())
    out: dict = {"seeds": list(per_seed)}
    for key, first in runs[0].items():
        values = [run.get(key) for run in runs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numeric:
            out[key] = first
            continue
        out[key] = float(np.mean(values))
        out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[f"{key}_per_seed"] = [float(v) for v in values]
    return out


def _finetune_seed(model_args: GlueModelArguments, data_args: GlueDataArguments, training_args: GlueTrainingArguments,
                   data: glue.TaskData, tokenizer, selection: Optional[dict] = None) -> dict:
    """One fine-tuning run with ``training_args.seed`` on tokenised ``data``; writes its results files
    (all_results.json once, with the ``--learning_rate_grid`` choice when ``selection`` is given)."""
    from transformers import set_seed

    set_seed(training_args.seed)
    task = data.task
    model, missing = glue.load_model_for_task(model_args.model_name_or_path, task.num_labels, _problem_type(task),
                                              task.label_names, model_args.cache_dir)
    glue.check_model_fits(model.config, tokenizer, data_args.max_seq_length, model_args.model_name_or_path)
    if missing:
        logger.warning("notice: these weights start fresh (a new task head; a pooler that masked-LM pretraining "
                       "never trains): %s", ", ".join(missing))
    teacher = None
    if model_args.teacher_model_name_or_path:
        teacher = _load_teacher(model_args, task, tokenizer, data_args.max_seq_length)
    trainer = build_trainer(model, tokenizer, data, model_args, data_args, training_args, teacher)

    output_dir = Path(training_args.output_dir)
    results: dict = {"task_name": task.name, "model_name_or_path": str(model_args.model_name_or_path),
                     "pretrained_model": pretrained_model(model_args.model_name_or_path),
                     "learning_rate": float(training_args.learning_rate)}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=_resume_checkpoint(training_args))
        if not isinstance(trainer.model, BertPreTrainedModel):
            trainer.save_model()
        elif trainer.is_world_process_zero():  # written once, in the stock transformers layout
            export_pretrained(trainer.model, tokenizer, output_dir)
            with atomic_file(output_dir / "training_args.bin") as handle:  # as Trainer.save_model does
                torch.save(trainer.args, handle)
        train_metrics = {**train_result.metrics, "train_samples": len(data.train)}
        results.update(train_metrics)
        if trainer.is_world_process_zero():
            write_json_atomic(output_dir / "train_results.json", train_metrics)
            trainer.save_state()
    if training_args.do_eval:
        eval_metrics = {}
        for suffix, dataset in data.evals.items():
            metrics = {**trainer.evaluate(eval_dataset=dataset), "eval_samples": len(dataset)}
            eval_metrics.update({f"{key}{suffix}" if key != "epoch" else key: value for key, value in metrics.items()})
        results.update(eval_metrics)
        if trainer.is_world_process_zero():
            write_json_atomic(output_dir / "eval_results.json", eval_metrics)
    if training_args.do_predict:
        for tag, dataset in data.tests.items():
            ids = dataset["idx"] if "idx" in dataset.column_names else None
            dataset = dataset.remove_columns([c for c in ("label", "idx") if c in dataset.column_names])
            predictions = trainer.predict(dataset).predictions
            if trainer.is_world_process_zero():
                glue.write_predictions(output_dir / f"predict_results_{tag}.tsv", task, predictions, ids)
                if tag in glue.SERVER_FILES:  # and under the GLUE server's own name (CoLA.tsv, MNLI-m.tsv, AX.tsv)
                    glue.write_predictions(output_dir / f"{glue.SERVER_FILES[tag]}.tsv", task, predictions, ids)
    results = _with_selection(results, selection)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        results = _merged_results(output_dir / "all_results.json", results, training_args.overwrite_output_dir)
        write_json_atomic(output_dir / "all_results.json", results)
    return results
