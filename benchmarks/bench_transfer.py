"""Why short CPU pretraining is a worse fine-tuning start than random init: interventions on one export.

    python benchmarks/bench_transfer.py --data demo_output/data --out out/transfer [--steps 1500]

1. Pretrains the demo's model (AdamW, LR 5e-3, the demo recipe) for ``--steps`` steps on the demo's shards, and
   exports the same model untrained (the control, same init seed).
2. Builds variants by moving tensors between the two exports (same architecture, same key names):
   ``pretrained``, ``control``, ``embeddings-only`` (pretrained embeddings, untrained encoder), ``encoder-only``
   (untrained embeddings, pretrained encoder), ``rescaled`` (pretrained, every encoder matrix rescaled to its
   untrained RMS: tests weight growth).
3. Fine-tunes each with ``run_glue.py --learning_rate_grid`` (its own LR, chosen on a dev split of the training
   examples) and fine-tuning seeds 1 2 3, and measures the representations the classifier starts from: the mean
   pairwise cosine similarity of the final [CLS] vectors and of the mean-pooled vectors over 256 validation
   sentences (1.0: every sentence looks the same), and the weight RMS of the encoder's matrices.

Prints a table; every figure comes from real runs of the project's scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = ["--hidden_size", "128", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size",
          "512", "--max_position_embeddings", "64", "--hidden_dropout_prob", "0", "--attention_probs_dropout_prob",
          "0", "--initializer_range", "0.05", "--encoder_ln_mode", "pre-ln", "--layernorm_embedding", "true",
          "--weight_decay", "0.01", "--adam_beta2", "0.98", "--warmup_proportion", "0.06", "--lr_schedule", "step",
          "--train_batch_size", "64", "--train_micro_batch_size_per_gpu", "64", "--print_steps", "100",
          "--no_wandb", "--seed", "1", "--optimizer_type", "adamw", "--lr", "5e-3"]
FINETUNE = ["--task_name", "rotten_tomatoes", "--do_train", "--do_eval", "--max_seq_length", "64",
            "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "128", "--num_train_epochs", "4",
            "--weight_decay", "0.01", "--warmup_ratio", "0.1", "--max_train_samples", "2000", "--max_eval_samples",
            "1000", "--seeds", "1", "2", "3", "--learning_rate_grid", "3e-4", "1e-3", "3e-3", "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true", "--overwrite_output_dir"]


def run(args: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        code = subprocess.call([sys.executable, *args], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{args[0]} failed (exit {code}); see {log}")


def pretrain(data: Path, out: Path, steps: int, extra: list[str]) -> tuple[Path, Path]:
    runs = out / "runs"
    for job, budget in (("control", "0"), ("pretrained", str(steps))):
        if not (runs / job / "pretrained" / "config.json").is_file():
            run(["run_pretraining.py", "--dataset_path", str(data), "--output_dir", str(runs), "--job_name", job,
                 "--max_steps", budget, "--do_validation", "--overwrite_output_dir", *RECIPE, *extra,
                 *(["--lr_schedule", "constant_step"] if budget == "0" else [])], out / f"{job}.log")
    return runs / "control" / "pretrained", runs / "pretrained" / "pretrained"


def variants(control: Path, pretrained: Path, out: Path) -> dict[str, Path]:
    import torch
    from safetensors.torch import load_file, save_file

    base, trained = load_file(control / "model.safetensors"), load_file(pretrained / "model.safetensors")
    assert base.keys() == trained.keys()

    def encoder(key: str) -> bool:
        return ".encoder." in key or key.startswith("encoder.")

    def rescale(key: str) -> torch.Tensor:
        t = trained[key]
        if encoder(key) and t.dim() == 2:
            return t * (base[key].pow(2).mean().sqrt() / t.pow(2).mean().sqrt())
        return t

    built = {"control": control, "pretrained": pretrained}
    recipes = {
        "embeddings-only": lambda k: trained[k] if "embeddings" in k else base[k],
        "encoder-only": lambda k: base[k] if "embeddings" in k else trained[k],
        "rescaled": rescale,
    }
    for name, pick in recipes.items():
        folder = out / "variants" / name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(pretrained, folder)
        save_file({k: pick(k).contiguous() for k in base}, folder / "model.safetensors", metadata={"format": "pt"})
        built[name] = folder
    return built


def representation_stats(model_dir: Path, texts: list[str]) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    cls, mean = hidden[:, 0], (hidden * mask).sum(1) / mask.sum(1)

    def cosine(x):
        x = torch.nn.functional.normalize(x, dim=-1)
        sim = x @ x.T
        n = len(x)
        return float((sim.sum() - n) / (n * (n - 1)))

    rms = [float(p.pow(2).mean().sqrt()) for n, p in model.named_parameters() if "encoder" in n and p.dim() == 2]
    return {"cls_cosine": cosine(cls), "mean_cosine": cosine(mean), "encoder_rms": sum(rms) / len(rms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the demo's shards (demo_output/data)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "transfer")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--pretrain_args", default="", help="more run_pretraining.py flags (e.g. \"--weight_decay 0.1\")")
    parser.add_argument("--variants", nargs="+", default=None, help="only these variants (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    control, pretrained = pretrain(args.data.resolve(), args.out, args.steps, args.pretrain_args.split())
    models = variants(control, pretrained, args.out)
    models = {k: v for k, v in models.items() if args.variants is None or k in args.variants}
    from pretraining.finetune.glue import load_rotten_tomatoes

    texts = list(load_rotten_tomatoes().evals[""]["sentence1"][:256])
    rows = []
    for name, folder in models.items():
        output = args.out / "finetune" / name
        if not (output / "all_results.json").is_file():
            run(["run_glue.py", "--model_name_or_path", str(folder), "--output_dir", str(output), *FINETUNE],
                args.out / f"finetune-{name}.log")
        results = json.loads((output / "all_results.json").read_text())
        rows.append({"variant": name, "lr": results["learning_rate"], "acc": 100 * results["eval_accuracy"],
                     "std": 100 * results["eval_accuracy_std"], "dev": results["lr_selection"]["scores"],
                     **representation_stats(folder, texts)})
    control_row = next(r for r in rows if r["variant"] == "control")
    print(f"\n{args.steps} AdamW steps {args.pretrain_args}; fine-tuning: its own LR of 3e-4/1e-3/3e-3 on a dev split, seeds 1 2 3\n")
    print("| variant | fine-tuning LR | accuracy | vs control | [CLS] cosine | mean-pool cosine | encoder RMS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        spread = math.sqrt(r["std"] ** 2 + control_row["std"] ** 2)
        print(f"| {r['variant']} | {r['lr']:g} | {r['acc']:.1f} ± {r['std']:.1f} | "
              f"{r['acc'] - control_row['acc']:+.1f} ± {spread:.1f} | {r['cls_cosine']:.3f} | {r['mean_cosine']:.3f} | "
              f"{r['encoder_rms']:.4f} |")
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
