"""The seed's experiment as a study in miniature, offline: ``python -m pretraining.demo --output_dir demo_output``.

Stages, each a real run of the project's scripts in a subprocess (the venv's python),
with its output in ``OUTPUT_DIR/logs/<stage>.log``:

1. ``prepare_dataset.py``: the fine-tuning task's own unlabelled training text (``--corpus``, default
   ``rotten_tomatoes-unlabelled``) with a WordPiece vocabulary trained on it -> dynamic-masking shards;
2. :mod:`pretraining.report.study` into ``OUTPUT_DIR/study``: per optimizer (adamw, adam, lamb, adafactor and the modern
   muon by default) a coarse LR grid, each run ``--max_steps`` optimizer steps (a step budget: the results do not
   depend on the machine's load); the LR with the lowest held-out MLM loss rerun with every pretraining seed; the
   untrained control with each seed; every model fine-tuned on the offline ``rotten_tomatoes`` task at the
   fine-tuning LR its arm chose on a dev split carved out of the training examples;
3. ``run_glue.py`` on the packaged pretrained MiniLM as a reference row;
4. ``results.md``, ``results.csv``, ``results.png``: the study's table and plots, the reference, the settings and
   the stage timings, and the table printed.

Rerunning reuses finished stages and finished runs inside the study (an interrupted pretraining run resumes from its
last checkpoint), and redoes a stage whose settings changed. A failed stage does not stop the others; the demo
exits non-zero naming the failed stages and their logs.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from pretraining.report import runs
from pretraining.cli import ArgumentChecker, parse_args
from pretraining.errors import UserError, run_main
from pretraining.report.stages import Stage, StageRunner, StageTiming, terminate_as_interrupt

OPTIMIZERS = ("adamw", "adam", "lamb", "adafactor", "muon")
#: each optimizer's LR grid in the demo: 3 values spaced 3x, centred on the best of the 200-step sweep measured on
#: 2026-12-03 (RESULTS.md; extended once when the best lies on an edge); others: the study's default grid
DEMO_GRIDS = {"adamw": "3.33e-4,1e-3,3e-3", "adam": "9e-3,2.7e-2,8.1e-2", "lamb": "3.33e-3,1e-2,3e-2",
              "adafactor": "1e-3,3e-3,9e-3", "muon": "3e-3,9e-3,2.7e-2"}
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: the pretraining recipe of every run, from the ablation in benchmarks/RESULTS.md ("Pretraining that pays off"): no
#: dropout (a budget this short cannot overfit), a larger init scale (a shorter plateau at the unigram level), pre-LN
#: with the embedding LayerNorm (the export is transformers' RobertaPreLayerNorm), a linear schedule over the steps;
#: weight decay 0.1, since the encoder's weight growth is what makes short pretraining a worse fine-tuning start
#: (RESULTS.md, "Why short CPU pretraining transfers negatively": 0.1 instead of 0.01 grows the encoder less)
RECIPE_FLAGS = ["--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--initializer_range", "0.05",
                "--encoder_ln_mode", "pre-ln", "--layernorm_embedding", "true", "--weight_decay", "0.1",
                "--adam_beta2", "0.98", "--curve", "linear", "--warmup_proportion", "0.06"]
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
    max_steps: int = field(default=200, metadata={
        "help": "Pretraining budget of every run in optimizer steps (a step budget: the results do not depend on "
                "the machine's load)"})
    optimizers: list[str] = field(
        default_factory=lambda: list(OPTIMIZERS),
        metadata={"help": f"Optimizers of the study (default: {', '.join(OPTIMIZERS)}; any of "
                          "pretraining.report.study.DEFAULT_LR)", "nargs": "+"})
    grid_points: int = field(default=3, metadata={
        "help": "LR grid size per optimizer, extended once when the best is on an edge (3: the demo's grids, "
                "centred on a measured sweep; other sizes: the study's default grids)"})
    parallel: int = field(default=2, metadata={"help": "Study runs at once (the cores are split between them)"})
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
        "help": "Fine-tuning epochs of the study's models (with 2, the barely pretrained models stay at the majority "
                "class)"})
    finetune_lr_grid: list[float] = field(
        default_factory=lambda: [3e-4, 1e-3, 3e-3],
        metadata={"help": "Fine-tuning LRs each optimizer's first-seed model (and the control's) chooses from on a "
                          "dev split carved out of the training examples; its other seeds use the choice",
                  "nargs": "+"})
    finetune_batch_size: int = field(default=32, metadata={"help": "Fine-tuning batch size (every model)"})
    seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "Pretraining seeds (initialisation and data order) of every optimizer and the control; "
                          "the table shows mean ± std over them", "nargs": "+"})
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

    def validate(self, check: ArgumentChecker) -> None:
        """Gather every argument error into ``check``."""
        from pretraining.report.study import DEFAULT_LR

        for name in self.optimizers:
            check.choice("--optimizers", name, list(DEFAULT_LR))
        check.require(len(set(self.optimizers)) == len(self.optimizers), "--optimizers lists a name twice")
        check.choice("--precision", self.precision, PRECISIONS)
        check.require(self.max_steps > 0, f"--max_steps must be > 0 (got {self.max_steps})")
        check.require(self.grid_points > 0 and self.parallel > 0, "--grid_points and --parallel must be > 0")
        check.require(bool(self.finetune_lr_grid) and min(self.finetune_lr_grid) > 0,
                      "--finetune_lr_grid must list values > 0")
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
                     "finetune_batch_size", "finetune_epochs", "reference_epochs", "reference_lr"):
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
    study_dir = out / "study"
    pretrain_flags = [
        "--model_type", "bert-mlm", "--hidden_size", str(args.hidden_size),
        "--num_hidden_layers", str(args.num_hidden_layers), "--num_attention_heads", str(args.num_attention_heads),
        "--intermediate_size", str(args.intermediate_size),
        "--max_position_embeddings", str(max(args.max_seq_length, args.finetune_max_seq_length)),
        *RECIPE_FLAGS,  # the masking rate comes from the shards' manifest (the prepare stage's flag)
        "--train_batch_size", str(args.train_batch_size), "--train_micro_batch_size_per_gpu", str(args.train_batch_size),
        "--print_steps", str(args.print_steps), "--validation_epochs", "1", "--validation_micro_batch", "64",
        "--num_epochs_between_checkpoints", "10", "--keep_checkpoints", "1", "--project_name", "budget-bert-demo",
        *(["--no_wandb"] if args.no_wandb else [])]
    finetune_flags = _finetune_recipe(args, args.finetune_epochs)
    study_argv = ["-m", "pretraining.report.study", "--output_dir", str(study_dir), "--dataset_path", str(data),
                  "--optimizers", *args.optimizers, "--precisions", precision, "--grid_points", str(args.grid_points),
                  *(["--lr_grid", *[f"{o}={DEMO_GRIDS[o]}" for o in args.optimizers if o in DEMO_GRIDS]]
                    if args.grid_points == 3 else []),
                  "--max_steps", str(args.max_steps), "--seeds", *map(str, args.seeds),
                  "--control", str(args.control).lower(), "--parallel", str(args.parallel),
                  "--finetune_task", args.task_name, "--finetune_lr_grid", *[f"{v:g}" for v in args.finetune_lr_grid],
                  "--finetune_lr_per_model", "false", "--finetune_args", " ".join(finetune_flags),
                  "--", *pretrain_flags]
    study = Stage("study", "", study_argv, study_dir, depends=[prepare],
                  is_complete=lambda: (study_dir / "study.md").is_file() and not _study_failed(study_dir))
    stages, run_dirs = [prepare, study], []
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


def _study_failed(study_dir: Path) -> bool:
    return "## Failed runs" in (study_dir / "study.md").read_text(errors="replace")


def _finetune_recipe(args: DemoArguments, epochs: float) -> list[str]:
    """run_glue.py's fine-tuning flags shared by the study's models and the reference row."""
    flags = ["--max_seq_length", str(args.finetune_max_seq_length), "--per_device_train_batch_size",
             str(args.finetune_batch_size), "--per_device_eval_batch_size", "128", "--num_train_epochs", str(epochs),
             "--weight_decay", "0.01", "--warmup_ratio", "0.1", "--logging_steps", "20"]
    for flag in ("max_train_samples", "max_eval_samples"):
        if getattr(args, flag):
            flags += [f"--{flag}", str(getattr(args, flag))]
    return flags


def _finetune_stage(args: DemoArguments, precision: str, name: str, model: Path, run_dir: Path,
                    depends: list[Stage], lr: float, epochs: float, seeds: Sequence[int]) -> Stage:
    output = run_dir / runs.FINETUNE_DIR / args.task_name
    argv = ["--model_name_or_path", str(model), "--task_name", args.task_name, "--output_dir", str(output),
            "--do_train", "--do_eval", *_finetune_recipe(args, epochs), "--learning_rate", str(lr),
            "--seeds", *map(str, seeds), "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--overwrite_output_dir", *PRECISION_FLAGS[precision]]
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
        f"- pretraining: {args.max_steps} optimizer steps per run, step-based linear LR schedule (common: "
        f"{' '.join(RECIPE_FLAGS)}); LR grid of {args.grid_points} values per optimizer spaced 3x (centred on the "
        "2026-12-03 sweep, extended once at an edge), chosen on held-out MLM loss with seed "
        f"{args.seeds[0]}, then seeds {' '.join(map(str, args.seeds))}",
        f"- control: {'the same model with no pretraining step (run_pretraining.py --max_steps 0), each seed, fine-tuned alike' if args.control else 'none (--control false)'}",
        f"- fine-tuning: {args.task_name}, {args.max_train_samples or 'all'} training examples, "
        f"{args.max_eval_samples or 'all'} validation examples, sequence length {args.finetune_max_seq_length}, "
        f"batch {args.finetune_batch_size}; the study's models {args.finetune_epochs:g} epoch(s), fine-tuning seed 1, "
        f"LR chosen from {', '.join(f'{v:g}' for v in args.finetune_lr_grid)} by each arm's first-seed model on a dev "
        "split (20% of the training examples)"
        + (f"; the reference MiniLM-L6-H384 {args.reference_epochs:g} epoch(s) at LR {args.reference_lr:g}, "
           f"seeds {' '.join(map(str, args.reference_seeds))}" if args.reference else ""),

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


def write_results(args: DemoArguments, out: Path, reference_dirs: Sequence[Path], precision: str, device: str,
                  timings: Sequence[StageTiming]) -> str:
    """results.md (the study's table, the reference row, the settings, the stage timings), results.csv and
    results.png (the study's); returns the markdown."""
    import shutil

    from pretraining.atomic import write_text_atomic

    study_dir = out / "study"
    parts = [(study_dir / "study.md").read_text() if (study_dir / "study.md").is_file() else
             "# Optimizer study\n\nThe study stage did not finish: see logs/study.log.\n"]
    for name in ("csv", "png"):
        if (study_dir / f"study.{name}").is_file():
            shutil.copyfile(study_dir / f"study.{name}", out / f"results.{name}")
    for run_dir in reference_dirs:
        results_path = run_dir / runs.FINETUNE_DIR / args.task_name / runs.RESULTS_FILE
        if results_path.is_file():
            results = json.loads(results_path.read_text())
            parts.append(f"Reference: the packaged pretrained MiniLM-L6-H384 (another architecture and pretraining, "
                         f"no gain computed) reaches {100 * results.get('eval_accuracy', float('nan')):.1f} "
                         f"({args.task_name} accuracy, seeds {' '.join(map(str, args.reference_seeds))}).\n")
    manifest_path = out / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    parts.append(_settings_section(args, precision, device, manifest, timings))
    text = "\n".join(parts)
    write_text_atomic(out / "results.md", text)
    return text


@run_main
def main(argv=None) -> str:
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
    runner.say(f"offline demo into {out}: a study of {len(args.optimizers)} optimizer(s) x {args.grid_points} LRs x "
               f"{args.max_steps} steps, {len(args.seeds)} seeds ({device}, {precision}), then {args.task_name} "
               "fine-tuning and the report")
    try:
        with terminate_as_interrupt():
            for stage in stages:
                runner.run(stage)
    except KeyboardInterrupt:
        runner.say("interrupted: rerun the same command to continue (finished stages and runs are reused, an "
                   "interrupted pretraining run resumes from its last checkpoint)")
        raise SystemExit(130) from None
    runner.index += 1
    runner.say(f"stage {runner.index}/{runner.total} report")
    table = write_results(args, out, run_dirs, precision, device, runner.timings)
    print("\n" + table, flush=True)
    runner.say(f"results: {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.png'}")
    if runner.failed:
        failed = "; ".join(f"{name} (log: {log})" for name, log in runner.failed.items())
        raise UserError(f"{len(runner.failed)} stage(s) did not finish: {failed}. Fix the cause and rerun the same "
                        "command: finished stages are reused")
    return table


if __name__ == "__main__":
    main()
