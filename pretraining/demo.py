"""The seed's experiment in one command, offline: ``python -m pretraining.demo --output_dir demo_output``.

Stages, each a real run of the project's scripts in a subprocess (the venv's python),
with its output streamed to the console and to ``OUTPUT_DIR/logs/<stage>.log``:

1. ``prepare_dataset.py``: the fine-tuning task's own unlabelled training text (``--corpus``, default
   ``rotten_tomatoes-unlabelled``) with a WordPiece vocabulary trained on it -> dynamic-masking shards;
2. ``run_pretraining.py --max_steps 0``: the control, the same small BERT exported untrained; then once per
   optimizer (adamw, adam, lamb, adafactor), the same budget of training time each (``--budget_minutes`` or
   ``DEMO_BUDGET_MINUTES``);
3. ``run_glue.py --seeds ...`` on the offline ``rotten_tomatoes`` task for the control and each pretrained
   model, and for the packaged pretrained MiniLM as a reference row;
4. :mod:`pretraining.report`: ``results.md``, ``results.csv`` and ``results.png`` (mean ± std over the seeds
   and each model's gain over the control), and the table printed.

Everything is written under ``--output_dir``. Rerunning (the runner is :mod:`pretraining.stages`) reuses
finished stages (their settings are recorded in ``OUTPUT_DIR/stages/``), resumes a pretraining run that was
interrupted after a checkpoint, and redoes a stage (and the stages built on it) whose
settings changed. A failed stage does not stop the others; the report shows what is
missing and the demo exits non-zero naming the failed stages and their logs.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from pretraining import report, runs
from pretraining.checkpoint import list_checkpoints
from pretraining.cli import ArgumentChecker, parse_args
from pretraining.errors import UserError, run_main
from pretraining.stages import Stage, StageRunner, StageTiming, terminate_as_interrupt

OPTIMIZERS = ("adamw", "adam", "lamb", "adafactor")
BUDGET_ENV = "DEMO_BUDGET_MINUTES"
DEFAULT_BUDGET_MINUTES = 2.0
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: the run folder of the no-pretraining control (the same model, initialised and exported untrained)
CONTROL_JOB = "untrained"
#: per-optimizer pretraining flags (everything else is equal). LAMB scales each layer's step to lr x its weight
#: norm, so the small model's weights move far slower than under Adam at the same LR: it gets a larger one.
OPTIMIZER_FLAGS = {"adamw": ["--lr", "5e-3"], "adam": ["--lr", "5e-3"], "lamb": ["--lr", "2e-2"],
                   "adafactor": ["--lr", "5e-3"]}
#: the pretraining recipe of every optimizer, from the ablation in benchmarks/RESULTS.md ("Pretraining that pays
#: off"): no dropout (a budget this short cannot overfit), a larger init scale (a shorter plateau at the unigram
#: level), pre-LN with the embedding LayerNorm (as measured; the export is transformers' RobertaPreLayerNorm),
#: time-based linear schedule
RECIPE_FLAGS = ["--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--initializer_range", "0.05",
                "--encoder_ln_mode", "pre-ln", "--layernorm_embedding", "true", "--weight_decay", "0.01",
                "--adam_beta2", "0.98",
                "--lr_schedule", "time", "--curve", "linear", "--warmup_proportion", "0.06"]
#: extra flags per precision, the same for run_pretraining.py and run_glue.py
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"]}
#: defaults of every stage's environment: offline, unbuffered output, no sub-second progress bars
STAGE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


@dataclass
class DemoArguments:
    """Flags of the demo (``python -m pretraining.demo --help``)."""

    output_dir: str = field(default="demo_output", metadata={"help": "Everything the demo writes goes here"})
    budget_minutes: Optional[float] = field(
        default=None,
        metadata={"help": f"Pretraining time budget per optimizer, in minutes of training time (default: "
                          f"${BUDGET_ENV}, else {DEFAULT_BUDGET_MINUTES})"})
    optimizers: list[str] = field(
        default_factory=lambda: list(OPTIMIZERS),
        metadata={"help": f"Optimizers to pretrain with, each for the same budget (of: {', '.join(OPTIMIZERS)})",
                  "nargs": "+"})
    precision: str = field(
        default="auto",
        metadata={"help": "fp32, fp16 or bf16; auto: $PRECISION if set (as the shell wrappers), else fp16 on a "
                          "CUDA GPU and fp32 on the CPU", "choices": list(PRECISIONS)})
    corpus: list[str] = field(
        default_factory=lambda: ["rotten_tomatoes-unlabelled"],
        metadata={"help": "Pretraining corpora (prepare_dataset.py --dataset): by default the fine-tuning task's own "
                          "unlabelled training text; add wikipedia-offline for the packaged Wikipedia lead sections "
                          "(at a CPU budget of minutes they dilute the in-domain text)", "nargs": "+"})
    vocab_size: int = field(
        default=8192, metadata={"help": "Train a WordPiece vocabulary of this size on the corpus (0: the packaged "
                                        "bert-base-uncased vocabulary)"})
    max_documents: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N documents of the corpus (default: all)"})
    max_seq_length: int = field(default=64, metadata={"help": "Pretraining sequence length"})
    masked_lm_prob: float = field(default=0.3, metadata={"help": "Share of tokens masked in pretraining (more "
                                                                    "predictions per token processed)"})
    num_train_shards: int = field(
        default=8, metadata={"help": "Train shards (an epoch is one shard, so this sets how often validation runs)"})
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of the small BERT"})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of the small BERT"})
    num_attention_heads: int = field(default=2, metadata={"help": "Attention heads of the small BERT"})
    intermediate_size: int = field(default=512, metadata={"help": "Feed-forward size of the small BERT"})
    train_batch_size: int = field(default=64, metadata={"help": "Pretraining batch size (sequences per step)"})
    print_steps: int = field(default=10, metadata={"help": "Pretraining progress line every this many steps"})
    task_name: str = field(default="rotten_tomatoes", metadata={"help": "Fine-tuning task of run_glue.py"})
    max_train_samples: Optional[int] = field(
        default=2000, metadata={"help": "Fine-tune on this many training examples (a fixed-seed subset)"})
    max_eval_samples: Optional[int] = field(
        default=1000, metadata={"help": "Evaluate on this many validation examples (a fixed-seed subset)"})
    finetune_max_seq_length: int = field(default=64, metadata={"help": "Fine-tuning sequence length"})
    finetune_epochs: float = field(default=4.0, metadata={
        "help": "Fine-tuning epochs of the demo's models (with 2, the barely pretrained models stay at the majority "
                "class)"})
    finetune_lr: float = field(default=1e-3, metadata={"help": "Fine-tuning learning rate of the demo's models"})
    finetune_batch_size: int = field(default=32, metadata={"help": "Fine-tuning batch size (every model)"})
    seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "Fine-tune every model once per seed; the table shows mean, std and the gain over the "
                          "untrained control", "nargs": "+"})
    control: bool = field(
        default=True, metadata={"help": "Also fine-tune the untrained model (same architecture, init and tokenizer) "
                                        "as the control row every gain is measured against (--control false to skip)"})
    reference: bool = field(
        default=True, metadata={"help": "Also fine-tune the packaged pretrained MiniLM-L6-H384 as a reference row "
                                        "(--reference false to skip)"})
    reference_epochs: float = field(default=1.0, metadata={"help": "Fine-tuning epochs of the reference MiniLM"})
    reference_lr: float = field(default=1e-4, metadata={"help": "Fine-tuning learning rate of the reference MiniLM"})
    reference_seeds: list[int] = field(
        default_factory=lambda: [1],
        metadata={"help": "Seeds of the reference MiniLM (one by default: it is 20x the demo model's cost, and no "
                          "gain is computed for it)", "nargs": "+"})
    no_wandb: bool = field(
        default=False, metadata={"help": "Do not log pretraining to W&B (default: offline runs in each run folder "
                                         "when no API key is set)"})

    def budget(self) -> float:
        """Minutes per optimizer: the flag, else $DEMO_BUDGET_MINUTES, else the default."""
        if self.budget_minutes is not None:
            return self.budget_minutes
        raw = os.environ.get(BUDGET_ENV, "").strip()
        if not raw:
            return DEFAULT_BUDGET_MINUTES
        try:
            return float(raw)
        except ValueError:
            raise UserError(f"${BUDGET_ENV}={raw!r} is not a number of minutes: set e.g. {BUDGET_ENV}=1.5") from None

    def validate(self, check: ArgumentChecker) -> None:
        """Gather every argument error into ``check``."""
        for name in self.optimizers:
            check.choice("--optimizers", name, OPTIMIZERS)
        check.require(len(set(self.optimizers)) == len(self.optimizers), "--optimizers lists a name twice")
        check.choice("--precision", self.precision, PRECISIONS)
        budget = self.budget()
        check.require(budget > 0, f"the pretraining budget must be > 0 minutes (got {budget})")
        from pretraining.data.corpus import DATASETS

        for name in self.corpus:
            check.choice("--corpus", name, DATASETS)
        check.require(self.vocab_size == 0 or self.vocab_size >= 64, f"--vocab_size must be 0 or >= 64 (got {self.vocab_size})")
        check.require(0 < self.masked_lm_prob < 1, f"--masked_lm_prob must be in (0, 1) (got {self.masked_lm_prob})")
        for flag in ("seeds", "reference_seeds"):
            values = getattr(self, flag)
            check.require(bool(values) and len(set(values)) == len(values), f"--{flag} must list distinct seeds")
        for flag in ("max_documents", "max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            check.require(value is None or value > 0, f"--{flag} must be > 0 (got {value})")
        for flag in ("max_seq_length", "num_train_shards", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "train_batch_size", "print_steps", "finetune_max_seq_length",
                     "finetune_batch_size", "finetune_epochs", "finetune_lr", "reference_epochs", "reference_lr"):
            check.require(getattr(self, flag) > 0, f"--{flag} must be > 0 (got {getattr(self, flag)})")


def resolve_precision(requested: str) -> tuple[str, str]:
    """(precision, device description) for ``--precision`` (``auto``: $PRECISION, else by device)."""
    import torch

    cuda = torch.cuda.is_available()
    device = f"GPU: {torch.cuda.get_device_name(0)}" if cuda else f"CPU: {cpu_name()}, {os.cpu_count()} cores"
    precision = requested
    if requested == "auto":
        precision = os.environ.get("PRECISION", "").strip().lower() or ("fp16" if cuda else "fp32")
    if precision not in PRECISION_FLAGS:
        raise UserError(f"precision {precision!r} (from $PRECISION) is not one of: {', '.join(PRECISION_FLAGS)}")
    if precision == "fp16" and not cuda:
        raise UserError("fp16 needs a CUDA GPU and none is visible: use --precision fp32 (or bf16), or unset PRECISION")
    return precision, device


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _has_end_line(run_dir: Path) -> bool:
    return runs.load_run(run_dir).end is not None


def build_stages(args: DemoArguments, precision: str) -> tuple[list[Stage], list[Path]]:
    """The demo's stages in order, and the run folders the report reads (the control first)."""
    out = Path(args.output_dir).resolve()
    data = out / "data"
    prepare_argv = ["--output_dir", str(data), "--dataset", *args.corpus, "--masking", "dynamic",
                    "--masked_lm_prob", str(args.masked_lm_prob), "--max_seq_length", str(args.max_seq_length),
                    "--num_train_shards", str(args.num_train_shards), "--dup_factor", "1", "--num_test_shards", "1",
                    "--frac_test", "0.02", "--seed", "42"]
    if args.vocab_size:
        prepare_argv += ["--train_tokenizer", str(args.vocab_size)]
    if args.max_documents:
        prepare_argv += ["--max_documents", str(args.max_documents)]
    prepare = Stage("prepare", "prepare_dataset.py", prepare_argv, data,
                    is_complete=lambda: (data / "manifest.json").is_file())
    stages, run_dirs = [prepare], []
    hours = f"{args.budget() / 60:.6g}"
    common = ["--dataset_path", str(data), "--output_dir", str(out / "pretrain"), "--model_type", "bert-mlm",
              "--hidden_size", str(args.hidden_size), "--num_hidden_layers", str(args.num_hidden_layers),
              "--num_attention_heads", str(args.num_attention_heads), "--intermediate_size", str(args.intermediate_size),
              "--max_position_embeddings", str(max(args.max_seq_length, args.finetune_max_seq_length)),
              *RECIPE_FLAGS,  # the masking rate comes from the shards' manifest (the prepare stage's flag)
              "--total_training_time", hours, "--early_exit_time_marker", hours,
              "--train_batch_size", str(args.train_batch_size),
              "--train_micro_batch_size_per_gpu", str(args.train_batch_size),
              "--print_steps", str(args.print_steps), "--do_validation", "--validation_epochs", "1",
              "--validation_micro_batch", "64", "--num_epochs_between_checkpoints", "10", "--keep_checkpoints", "1",
              "--project_name", "budget-bert-demo", "--seed", "42", *PRECISION_FLAGS[precision]]
    if args.no_wandb:
        common.append("--no_wandb")
    jobs = [(CONTROL_JOB, ["--optimizer_type", "adamw", *OPTIMIZER_FLAGS["adamw"], "--max_steps", "0"])] \
        if args.control else []
    jobs += [(name, ["--optimizer_type", name, *OPTIMIZER_FLAGS[name]]) for name in args.optimizers]
    for name, flags in jobs:
        run_dir = out / "pretrain" / name
        pretrain = Stage(
            f"pretrain-{name}", "run_pretraining.py", [*common, "--job_name", name, *flags], run_dir, depends=[prepare],
            is_complete=lambda d=run_dir: _has_end_line(d) and (d / "pretrained" / "config.json").is_file(),
            resume_argv=lambda d=run_dir: ["--load_training_checkpoint", str(d), "--load_checkpoint_id", "latest"]
            if list_checkpoints(d / "checkpoints") else [])
        stages.append(pretrain)
        stages.append(_finetune_stage(args, precision, f"finetune-{name}", run_dir / "pretrained", run_dir, [pretrain],
                                      lr=args.finetune_lr, epochs=args.finetune_epochs, seeds=args.seeds))
        run_dirs.append(run_dir)
    if args.reference:
        from pretraining.resources import minilm_dir

        model = minilm_dir()
        run_dir = out / "reference" / "minilm"
        stage = _finetune_stage(args, precision, "finetune-minilm-reference", model, run_dir, [],
                                lr=args.reference_lr, epochs=args.reference_epochs, seeds=args.reference_seeds)
        stage.before = lambda: _write_reference_args(run_dir, model, precision)
        stages.append(stage)
        run_dirs.append(run_dir)
    return stages, run_dirs


def _finetune_stage(args: DemoArguments, precision: str, name: str, model: Path, run_dir: Path,
                    depends: list[Stage], lr: float, epochs: float, seeds: Sequence[int]) -> Stage:
    output = run_dir / runs.FINETUNE_DIR / args.task_name
    argv = ["--model_name_or_path", str(model), "--task_name", args.task_name, "--output_dir", str(output),
            "--do_train", "--do_eval", "--max_seq_length", str(args.finetune_max_seq_length),
            "--per_device_train_batch_size", str(args.finetune_batch_size), "--per_device_eval_batch_size", "128",
            "--learning_rate", str(lr), "--num_train_epochs", str(epochs),
            "--weight_decay", "0.01", "--warmup_ratio", "0.1", "--seeds", *map(str, seeds), "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "20", "--overwrite_output_dir",
            *PRECISION_FLAGS[precision]]
    for flag in ("max_train_samples", "max_eval_samples"):
        if getattr(args, flag):
            argv += [f"--{flag}", str(getattr(args, flag))]
    return Stage(name, "run_glue.py", argv, output, depends=depends,
                 is_complete=lambda: (output / runs.RESULTS_FILE).is_file())


def _write_reference_args(run_dir: Path, model: Path, precision: str) -> None:
    """args.json of the reference row, so the report names it and shows its size."""
    config = json.loads((model / "config.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runs.ARGS_FILE).write_text(json.dumps({
        "job_name": "minilm-reference", "model_name_or_path": str(model), "precision": precision,
        "hidden_size": config.get("hidden_size"), "num_hidden_layers": config.get("num_hidden_layers"),
    }, indent=1))


def _settings_section(args: DemoArguments, precision: str, device: str, manifest: dict,
                      timings: Sequence[StageTiming]) -> str:
    counts = manifest.get("counts", {}).get("train", {})
    vocabulary = (f"a {manifest.get('vocab_size', args.vocab_size):,}-token WordPiece vocabulary trained on it"
                  if args.vocab_size else "the bert-base-uncased vocabulary")
    lines = [
        "## Demo settings", "",
        f"- device: {device}; precision: {precision}",
        f"- corpus: {' + '.join(args.corpus)} ({counts.get('documents', '?')} train documents, "
        f"{counts.get('samples', '?')} sequences of up to {args.max_seq_length} tokens, dynamic masking "
        f"{args.masked_lm_prob:g}), {vocabulary}",
        f"- model: BERT L{args.num_hidden_layers}-H{args.hidden_size}, {args.num_attention_heads} heads, "
        f"FFN {args.intermediate_size}, pre-LN; batch {args.train_batch_size}",
        f"- pretraining: {args.budget():g} minutes of training time per optimizer, time-based linear LR schedule "
        f"(common: {' '.join(RECIPE_FLAGS)}; per optimizer: "
        f"{'; '.join(o + ' ' + ' '.join(OPTIMIZER_FLAGS[o]) for o in args.optimizers)})",
        f"- control: {'the same model with no pretraining step (run_pretraining.py --max_steps 0), fine-tuned alike' if args.control else 'none (--control false)'}",
        f"- fine-tuning: {args.task_name}, {args.max_train_samples or 'all'} training examples, "
        f"{args.max_eval_samples or 'all'} validation examples, sequence length {args.finetune_max_seq_length}, "
        f"batch {args.finetune_batch_size}; the demo's models {args.finetune_epochs:g} epoch(s) at LR "
        f"{args.finetune_lr:g}, seeds {' '.join(map(str, args.seeds))}"
        + (f"; the reference MiniLM-L6-H384 {args.reference_epochs:g} epoch(s) at LR {args.reference_lr:g}, "
           f"seeds {' '.join(map(str, args.reference_seeds))}" if args.reference else ""),
        "- gain vs control: mean difference of the task's main metric in points, ± the combined spread "
        "sqrt(std^2 + std_control^2); (n.s.) marks a gain no larger than that spread",
        "", "## Stage timings", "",
        "Wall-clock time, and CPU time summed over the stage's threads; a reused stage shows its earlier run.", "",
        "| stage | status | wall time | CPU time |", "|---|---|---|---|",
    ]
    lines += [f"| {t.name} | {t.status} | {runs.format_duration(t.seconds)} | {runs.format_duration(t.cpu_seconds)} |"
              for t in timings]
    total = sum(t.seconds for t in timings)
    lines.append(f"| sum | | {runs.format_duration(total)} | "
                 f"{runs.format_duration(sum(t.cpu_seconds for t in timings))} |")
    return "\n".join(lines) + "\n"


@run_main
def main(argv=None) -> list[dict]:
    """Run the demo (see the module docstring); returns the report's rows."""
    (args,) = parse_args([DemoArguments], argv)
    check = ArgumentChecker()
    args.validate(check)
    check.raise_if_any()
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    precision, device = resolve_precision(args.precision)
    stages, run_dirs = build_stages(args, precision)
    defaults = {**STAGE_ENV, **({"DS_ACCELERATOR": "cpu"} if device.startswith("CPU") else {})}
    runner = StageRunner(out, total=len(stages) + 1, env=defaults)
    runner.say(f"offline demo into {out}: {len(args.optimizers)} optimizer(s) x {args.budget():g} min of "
               f"pretraining ({device}, {precision}), then {args.task_name} fine-tuning and the report")
    try:
        with terminate_as_interrupt():
            for stage in stages:
                runner.run(stage)
    except KeyboardInterrupt:
        runner.say("interrupted: rerun the same command to continue (finished stages are reused, an interrupted "
                   "pretraining run resumes from its last checkpoint)")
        raise SystemExit(130) from None
    runner.index += 1
    runner.say(f"stage {runner.index}/{runner.total} report")
    rows, table = report.build_report(run_dirs, out=out / "results.md", plot=out / "results.png",
                                      csv_path=out / "results.csv", task=args.task_name)
    manifest_path = out / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    with open(out / "results.md", "a", encoding="utf-8") as handle:
        handle.write("\n" + _settings_section(args, precision, device, manifest, runner.timings))
    print("\n" + table, flush=True)
    runner.say(f"results: {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.png'}")
    if runner.failed:
        failed = "; ".join(f"{name} (log: {log})" for name, log in runner.failed.items())
        raise UserError(f"{len(runner.failed)} stage(s) did not finish: {failed}. Fix the cause and rerun the same "
                        "command: finished stages are reused")
    return rows


if __name__ == "__main__":
    main()
