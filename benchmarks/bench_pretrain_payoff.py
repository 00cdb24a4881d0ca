#!/usr/bin/env python
"""Does pretraining pay off? Each recipe against its own untrained control, over fine-tuning seeds.

For every variant (a corpus + vocabulary, a model, a pretraining recipe and step budget) this runs
the project's own scripts, offline:

1. ``prepare_dataset.py`` (cached per corpus/vocabulary/sequence length);
2. ``run_pretraining.py --max_steps 0``: the control, the same model initialised and exported untrained;
3. ``run_pretraining.py`` for the variant's optimizer steps (a step budget, so the result does not depend
   on how busy the machine is; the seconds it took are printed);
4. ``run_glue.py --seeds ...`` on the offline rotten_tomatoes task for both (the demo's fine-tuning recipe);

and prints one table: masked-LM eval loss against the unigram baseline, the control's and the
pretrained model's accuracy (mean ± std over seeds) and the gain with its spread, then a RESULT line.

    python benchmarks/bench_pretrain_payoff.py                       # every variant (~1 h on 2 cores)
    python benchmarks/bench_pretrain_payoff.py --variants demo long   # some of them
    python benchmarks/bench_pretrain_payoff.py --list

Outputs go to ``--output_dir`` (default ``out/payoff``); finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretraining.report.demo import OPTIMIZER_FLAGS, RECIPE_FLAGS  # noqa: E402

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
SMALL = ["--hidden_size", "128", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "512"]
#: the demo's pretraining recipe: its RECIPE_FLAGS, AdamW's LR, masking 0.3, batch 64 (a step schedule replaces
#: its time schedule in _pretrain: later flags win)
DEMO = [*RECIPE_FLAGS, *OPTIMIZER_FLAGS["adamw"], "--masked_lm_prob", "0.3", "--train_batch_size", "64",
        "--train_micro_batch_size_per_gpu", "64"]
#: the demo's recipe before this ablation
SEED_RECIPE = ["--lr", "1e-3", "--train_batch_size", "32", "--train_micro_batch_size_per_gpu", "32"]


@dataclass
class Variant:
    """One row: the data, the model and recipe flags, and the optimizer steps to pretrain for."""

    corpus: tuple = ("rotten_tomatoes-unlabelled",)
    vocab: int = 8192  # 0: the packaged bert-base-uncased vocabulary
    seq: int = 64
    flags: list = field(default_factory=lambda: [*SMALL, *DEMO])
    steps: int = 1500
    what: str = ""


VARIANTS = {
    "seed-demo": Variant(("wikipedia-offline",), 0, 128, [*SMALL, *SEED_RECIPE], 600,
                         "the demo before: Wikipedia, bert-base-uncased vocabulary, seq 128, dropout 0.1"),
    "wiki+rt-8k": Variant(("rotten_tomatoes-unlabelled", "wikipedia-offline"), 8192, 64, [*SMALL, *DEMO], 1500,
                          "+ the task's unlabelled text, an 8k vocabulary trained on the corpus, seq 64"),
    "demo": Variant(what="the demo now: in-domain text only, 8k vocabulary, seq 64, no dropout, init 0.05, "
                         "mask 0.3, lr 5e-3, batch 64"),
    "demo-4k": Variant(vocab=4096, what="the same with a 4k vocabulary"),
    "demo-bert-vocab": Variant(vocab=0, what="the same with the bert-base-uncased vocabulary"),
    "demo-mask15": Variant(flags=[*SMALL, *DEMO, "--masked_lm_prob", "0.15"], what="the same, masking 0.15"),
    "demo-init02": Variant(flags=[*SMALL, *DEMO, "--initializer_range", "0.02"], what="the same, init 0.02"),
    "long": Variant(steps=6000, what="the demo recipe for 4x the steps (~10 minutes of a 2-core CPU)"),
}


def _run(script: str, argv: list, log: Path) -> float:
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as handle:
        code = subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], stdout=handle,
                              stderr=subprocess.STDOUT, env=env).returncode
    if code:
        raise SystemExit(f"{script} failed (exit {code}); see {log}")
    return time.monotonic() - started


def _prepare(out: Path, variant: Variant) -> Path:
    name = "-".join(variant.corpus) + f"_v{variant.vocab or 'bert'}_s{variant.seq}"
    data = out / "data" / name
    if not (data / "manifest.json").is_file():
        argv = ["--output_dir", data, "--dataset", *variant.corpus, "--masking", "dynamic", "--max_seq_length",
                variant.seq, "--num_train_shards", 8, "--dup_factor", 1, "--num_test_shards", 1, "--frac_test", 0.02,
                "--seed", 42] + (["--train_tokenizer", variant.vocab] if variant.vocab else [])
        _run("prepare_dataset.py", argv, out / "logs" / f"prepare-{name}.log")
    return data


def _pretrain(out: Path, data: Path, job: str, variant: Variant, steps: int) -> tuple[Path, float]:
    run = out / "runs" / job
    if (run / "pretrained" / "config.json").is_file():
        return run, 0.0
    argv = ["--dataset_path", data, "--output_dir", out / "runs", "--job_name", job, "--model_type", "bert-mlm",
            "--max_position_embeddings", 128, "--encoder_ln_mode", "pre-ln", "--layernorm_embedding", "true",
            "--weight_decay", 0.01,
            "--adam_beta2", 0.98, "--print_steps", 50, "--do_validation", "--validation_epochs", 1,
            "--num_epochs_between_checkpoints", 1000000, "--seed", 42, "--no_wandb", *variant.flags]
    argv += ["--max_steps", steps] + (["--lr_schedule", "step", "--warmup_proportion", 0.06] if steps else [])
    return run, _run("run_pretraining.py", argv, out / "logs" / f"pretrain-{job}.log")


def _finetune(out: Path, run: Path, seeds: list[int]) -> dict:
    target = run / "finetune" / "rotten_tomatoes"
    if not (target / "all_results.json").is_file():
        argv = ["--model_name_or_path", run / "pretrained", "--task_name", "rotten_tomatoes", "--output_dir", target,
                "--do_train", "--do_eval", "--max_seq_length", 64, "--per_device_train_batch_size", 32,
                "--per_device_eval_batch_size", 128, "--learning_rate", 1e-3, "--num_train_epochs", 4,
                "--weight_decay", 0.01, "--warmup_ratio", 0.1, "--seeds", *seeds, "--save_strategy", "no",
                "--report_to", "none", "--disable_tqdm", "true", "--overwrite_output_dir",
                "--max_train_samples", 2000, "--max_eval_samples", 1000]
        _run("run_glue.py", argv, out / "logs" / f"finetune-{run.name}.log")
    return json.loads((target / "all_results.json").read_text())


def _last_eval(run: Path) -> dict:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["type"] == "eval"][-1]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="which rows (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="fine-tuning seeds")
    parser.add_argument("--output_dir", default=str(ROOT / "out" / "payoff"))
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, variant in VARIANTS.items():
            print(f"{name}: {variant.what} ({variant.steps} steps)")
        return []
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    out = Path(args.output_dir)
    rows = []
    print("| variant | steps | seconds | MLM eval loss | unigram | control acc | pretrained acc | gain (points) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        variant = VARIANTS[name]
        data = _prepare(out, variant)
        control, _ = _pretrain(out, data, f"{name}-control", variant, 0)
        pretrained, seconds = _pretrain(out, data, name, variant, variant.steps)
        c, p = _finetune(out, control, args.seeds), _finetune(out, pretrained, args.seeds)
        evaluation = _last_eval(pretrained)
        gain = 100 * (p["eval_accuracy"] - c["eval_accuracy"])
        spread = 100 * math.hypot(p["eval_accuracy_std"], c["eval_accuracy_std"])
        row = {"variant": name, "steps": variant.steps, "seconds": round(seconds),
               "eval_loss": evaluation["eval_loss"], "unigram": evaluation.get("eval_unigram_loss"),
               "control": c["eval_accuracy"], "control_std": c["eval_accuracy_std"],
               "pretrained": p["eval_accuracy"], "pretrained_std": p["eval_accuracy_std"], "gain": gain,
               "spread": spread}
        rows.append(row)
        print(f"| {name} | {variant.steps} | {row['seconds'] or 'reused'} | {row['eval_loss']:.3f} | "
              f"{row['unigram']:.3f} | {100 * row['control']:.1f} ± {100 * row['control_std']:.1f} | "
              f"{100 * row['pretrained']:.1f} ± {100 * row['pretrained_std']:.1f} | {gain:+.1f} ± {spread:.1f}"
              f"{'' if abs(gain) > spread else ' (n.s.)'} |", flush=True)
    best = max(rows, key=lambda r: r["gain"])
    print(f"RESULT best_variant={best['variant']} gain_points={best['gain']:.1f} spread_points={best['spread']:.1f} "
          f"seeds={len(args.seeds)}")
    return rows


if __name__ == "__main__":
    main()
