#!/usr/bin/env python
"""Pretraining step throughput: this project's model and optimizer (A) against Hugging Face's (B).

Both run the same training step (forward with MLM + NSP loss, backward, optimizer step,
zero_grad; autocast and, for fp16, a GradScaler) on the same batches, in one process:

* A variants: :class:`pretraining.model.modeling.BertForPreTraining` (pre-ln, as trained here)
  with the fast-path flags of :data:`VARIANTS`, and :func:`pretraining.train.optimizers.build_optimizer`
  (AdamW). ``default`` is what ``run_pretraining.py`` builds from ModelArguments' defaults.
* B (``hf``): ``transformers.BertForPreTraining`` with ``attn_implementation="sdpa"`` and
  ``torch.optim.AdamW`` with torch's default implementation choice.

Batches come from real HDF5 shards (``--dataset_path``, or shards built from the packaged
offline Wikipedia when no path is given), or, with ``--lengths synthetic``, from a
documented length model. The same list of batches, staged on the device, is cycled for
every variant; one timed window is one pass over that list. Variants are interleaved
window by window (so load drifts on a shared machine hit all of them alike); the
reported time is the median over windows, warm-up windows excluded; CUDA events on a GPU.

Reported per variant: sequences/s, real (non-padding) tokens/s, peak memory (GPU: max
allocated; CPU: peak RSS growth of a fresh process running that variant alone), and MFU
from the useful FLOPs of the batches:

    per real token: 6L(4d^2 + 2df) + 12 L s_eff d + 6 rho (d^2 + d V)

with s_eff = sum(len^2) / sum(len) over the batch's sequences and rho = predicted
positions / real tokens. Peak: 989 TFLOP/s (H100 SXM dense bf16/fp16) on a GPU, and the
measured matmul peak of this device (also reported, and used for MFU on the CPU, which
has no nominal figure here). The data loader (shard read + collate) is timed alone too.

The last line is machine-readable:
  RESULT device=<cpu|cuda> config=<name> speedup_vs_hf=<x> mfu=<y>
for the headline config (tiny on the CPU, base on a GPU; ``default`` vs ``hf``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pretraining.train.args import ModelArguments, OptimizerArguments  # noqa: E402
from pretraining.model.modeling import BertForPreTraining, build_config  # noqa: E402
from pretraining.train.optimizers import build_optimizer  # noqa: E402

H100_PEAK_FLOPS = 989e12  # dense bf16/fp16, H100 SXM
BERT_VOCAB = 30522


@dataclass(frozen=True)
class BenchConfig:
    """Model size and the micro-batch per device type."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    seq: int
    micro_batch: dict


CONFIGS = {
    "tiny": BenchConfig(2, 128, 2, 512, 128, {"cpu": 32, "cuda": 256}),
    "mini": BenchConfig(4, 256, 4, 1024, 128, {"cpu": 32, "cuda": 256}),
    "base": BenchConfig(12, 768, 12, 3072, 128, {"cpu": 8, "cuda": 256}),
    "large": BenchConfig(24, 1024, 16, 4096, 128, {"cpu": 4, "cuda": 128}),
}
HEADLINE = {"cpu": ("tiny", "fp32"), "cuda": ("base", "bf16")}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

_FAST = dict(sparse_mask_prediction=True, unpad_inputs=True, fused_qkv=True, vocab_pad_multiple=64)
#: A-variant name -> ModelArguments overrides (on top of the defaults) and "fused_optimizer"
#: (build_optimizer's use_fused; None = its own choice). "hf" is B.
VARIANTS: dict[str, dict] = {
    "default": {},
    "plain": dict(sparse_mask_prediction=False, unpad_inputs=False, fused_qkv=False, vocab_pad_multiple=1,
                  fused_optimizer=False),
    "fast": dict(_FAST, fused_optimizer=True),
    "fast-no_unpad": dict(_FAST, unpad_inputs=False, fused_optimizer=True),
    "fast-no_sparse": dict(_FAST, sparse_mask_prediction=False, fused_optimizer=True),
    "fast-no_fused_qkv": dict(_FAST, fused_qkv=False, fused_optimizer=True),
    "fast-no_fused_adamw": dict(_FAST, fused_optimizer=False),
    "fast-nested": dict(_FAST, unpadded_attention="nested", fused_optimizer=True),
    "fast-compile": dict(_FAST, torch_compile=True, fused_optimizer=True),
    "default-compile": dict(torch_compile=True),
    "default-foreach_adamw": dict(fused_optimizer=False),
    "hf": {},
}
DEFAULT_VARIANTS = {
    "cpu": "hf,default,plain,fast,fast-no_unpad,fast-no_sparse,fast-no_fused_qkv,fast-no_fused_adamw",
    "cuda": "hf,default,plain,fast,fast-no_unpad,fast-no_fused_qkv,fast-nested,fast-compile",
}


# --- batches ------------------------------------------------------------------------------


def offline_shards(folder: Path, seq: int) -> Path:
    """Statically masked shards of 500 packaged offline Wikipedia documents (prepare_dataset.py)."""
    from prepare_dataset import main as prepare

    prepare(["--output_dir", str(folder), "--dataset", "wikipedia-offline", "--max_documents", "500",
             "--max_seq_length", str(seq), "--max_predictions_per_seq", "20",
             "--num_train_shards", "2", "--dup_factor", "1", "--num_test_shards", "1", "--frac_test", "0.05",
             "--num_workers", "1", "--seed", "1"])
    return folder


def shard_rows(dataset_path: Path, seq: int, count: int) -> dict:
    """``count`` rows (input_ids, input_mask, segment_ids, masked_lm_*) from the train shards."""
    from pretraining.data.shards import list_shards, read_shard

    rows: dict[str, list] = {}
    for path in list_shards(dataset_path, "train"):
        for key, value in read_shard(path).items():
            rows.setdefault(key, []).append(value)
        if sum(len(v) for v in rows["input_ids"]) >= count:
            break
    arrays = {key: np.concatenate(values)[:count] for key, values in rows.items()}
    if arrays["input_ids"].shape[1] != seq:
        raise SystemExit(f"error: shards in {dataset_path} have sequence length {arrays['input_ids'].shape[1]}, "
                         f"the config needs {seq}: pass shards made with --max_seq_length {seq}")
    if len(arrays["input_ids"]) < count:
        raise SystemExit(f"error: {dataset_path} holds {len(arrays['input_ids'])} training rows, {count} needed")
    return arrays


def synthetic_rows(seq: int, count: int, seed: int = 0) -> dict:
    """Rows with prepare_dataset.py's length model on long documents (full-article Wikipedia).

    With probability 0.1 (``--short_seq_prob``) a sample gets a random target length in
    [2, seq]; otherwise it is full, except for the sample that ends a document: one in
    ``1 + tokens_per_document / seq`` of them, assumed here to be one in 8 (articles of about
    1,000 tokens), with a uniform length. 15% of the real tokens (at most 20) are masked.
    """
    rng = np.random.default_rng(seed)
    lengths = np.full(count, seq)
    short = rng.random(count) < 0.1
    lengths[short] = rng.integers(2, seq + 1, short.sum())
    doc_end = ~short & (rng.random(count) < 1 / 8)
    lengths[doc_end] = rng.integers(2, seq + 1, doc_end.sum())
    mask = np.arange(seq)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(1000, BERT_VOCAB, (count, seq)), 0)
    predictions = max(1, min(20, round(seq * 0.15)))
    positions = np.zeros((count, predictions), dtype=np.int64)
    for row, length in enumerate(lengths):  # never [CLS] (0) nor the final [SEP]
        k = min(predictions, max(1, round(0.15 * (length - 2))))
        positions[row, :k] = np.sort(rng.choice(np.arange(1, max(2, length - 1)), size=k, replace=False))
    labels_ids = np.where(positions > 0, rng.integers(1000, BERT_VOCAB, positions.shape), 0)
    return {"input_ids": ids, "input_mask": mask.astype(np.int8), "segment_ids": np.zeros_like(ids),
            "masked_lm_positions": positions, "masked_lm_ids": labels_ids}


def make_batches(rows: dict, micro_batch: int, count: int, device: torch.device, seed: int = 0) -> list[dict]:
    """Model inputs for ``count`` micro-batches, on ``device`` (NSP labels random when the rows have none)."""
    from pretraining.data.collator import PretrainingCollator

    collate = PretrainingCollator(vocab_size=BERT_VOCAB, mask_token_id=103, special_token_ids=[0, 100, 101, 102, 103])
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(count):
        part = {key: value[i * micro_batch:(i + 1) * micro_batch] for key, value in rows.items()}
        batch = collate(part)
        if "next_sentence_label" not in batch:
            batch["next_sentence_label"] = torch.from_numpy(rng.integers(0, 2, micro_batch))
        batches.append({key: value.to(device, non_blocking=True) for key, value in batch.items()})
    return batches


def useful_flops(batch: dict, cfg: BenchConfig) -> float:
    """Training FLOPs of the real work in one batch (forward + backward; see the module docstring)."""
    lengths = batch["attention_mask"].sum(1).double()
    tokens = float(lengths.sum())
    predicted = float((batch["labels"] != -100).sum())
    L, d, f = cfg.layers, cfg.hidden, cfg.intermediate
    dense = tokens * 6 * L * (4 * d * d + 2 * d * f)
    attention = 12 * L * d * float((lengths * lengths).sum())
    head = 6 * predicted * (d * d + d * BERT_VOCAB)
    return dense + attention + head


# --- the two training steps ----------------------------------------------------------------


def model_arguments(cfg: BenchConfig, overrides: dict) -> ModelArguments:
    """ModelArguments for ``cfg`` (MLM + NSP unless ``overrides`` say otherwise), defaults plus ``overrides``."""
    return ModelArguments(**{"model_type": "bert-mlm-nsp", "vocab_size": BERT_VOCAB, "hidden_size": cfg.hidden,
                             "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
                             "intermediate_size": cfg.intermediate, "max_position_embeddings": 512, **overrides})


def build_variant(name: str, cfg: BenchConfig, device: torch.device):
    """(model, optimizer) of variant ``name`` on ``device``, with the same seed for every variant."""
    torch.manual_seed(0)
    optimizer_args = OptimizerArguments(optimizer_type="adamw", lr=1e-4, weight_decay=0.01)
    if name == "hf":
        import transformers

        config = transformers.BertConfig(vocab_size=BERT_VOCAB, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                                         num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate)
        with device:
            model = transformers.BertForPreTraining._from_config(config, attn_implementation="sdpa").train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=optimizer_args.lr, weight_decay=optimizer_args.weight_decay)
        return model, optimizer
    overrides = dict(VARIANTS[name])
    use_fused = overrides.pop("fused_optimizer", None)
    with device:
        model = BertForPreTraining(build_config(model_arguments(cfg, overrides))).train()
    return model, build_optimizer(model, optimizer_args, use_fused=use_fused)


class Trainer:
    """One variant's training step on the device, with autocast and (fp16) loss scaling."""

    def __init__(self, name: str, cfg: BenchConfig, device: torch.device, precision: str):
        self.name = name
        self.model, self.optimizer = build_variant(name, cfg, device)
        self.device_type = device.type
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(self, batch: dict) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            loss = self.model(**batch).loss
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def window(self, batches: list[dict], clock=time.perf_counter) -> float:
        """Seconds for one pass over ``batches`` (CUDA events on a GPU, else ``clock``)."""
        if self.device_type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for batch in batches:
                self.step(batch)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        began = clock()
        for batch in batches:
            loss = self.step(batch)
        loss.item()
        return clock() - began


# --- measurements ---------------------------------------------------------------------------


def matmul_peak(device: torch.device, dtype: torch.dtype | None, clock=time.perf_counter) -> float:
    """Best FLOP/s of a square matrix product on ``device`` in ``dtype`` (fp32 when None), timed by ``clock``."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    best = 0.0
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = clock()
        for _ in range(5):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 5 * 2 * n**3 / (clock() - began))
    return best


def time_variants(names: list[str], cfg: BenchConfig, device: torch.device, precision: str, batches: list[dict],
                  windows: int, warmup: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Window times per variant, interleaved; ``warmup`` windows per variant are dropped.

    A variant that runs out of device memory is dropped (no times) and the others go on.
    """
    trainers = {name: Trainer(name, cfg, device, precision) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + windows):
        for name in list(trainers):
            try:
                elapsed = trainers[name].window(batches, clock)
            except torch.OutOfMemoryError:
                print(f"{name}: out of memory at micro-batch {len(batches[0]['input_ids'])}; left out")
                del trainers[name]
                gc.collect()
                torch.cuda.empty_cache()
                continue
            if round_ >= warmup:
                times[name].append(elapsed)
    del trainers
    gc.collect()
    return times


def cuda_peak_memory(name: str, cfg: BenchConfig, device: torch.device, precision: str, batches: list[dict]) -> float:
    """Peak allocated GiB over two steps of ``name`` alone."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(name, cfg, device, precision)
    for batch in batches[:2]:
        trainer.step(batch)
    torch.cuda.synchronize()
    del trainer
    return torch.cuda.max_memory_allocated(device) / 2**30


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_peak_memory(name: str, config: str, precision: str, batch_file: Path) -> float:
    """Peak RSS growth (GiB) of a fresh process that builds ``name`` and trains two steps."""
    command = [sys.executable, __file__, "--memory_probe", name, "--configs", config, "--precisions", precision,
               "--batch_file", str(batch_file), "--device", "cpu"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return float(out)


def memory_probe(args) -> None:
    """Child process of :func:`cpu_peak_memory`: prints the RSS growth in GiB."""
    cfg = CONFIGS[args.configs]
    batches = torch.load(args.batch_file, weights_only=True)
    trainer = Trainer(args.memory_probe, cfg, torch.device("cpu"), args.precisions)
    before = _rss_kib("VmRSS")
    for batch in batches[:2]:
        trainer.step(batch)
    print((_rss_kib("VmHWM") - before) / 2**20)


def loader_throughput(dataset_path: Path | None, micro_batch: int, seconds: float = 3.0) -> float | None:
    """Samples/s of the project's shard loader + collator alone (None without shards)."""
    if dataset_path is None:
        return None
    from pretraining.data.collator import PretrainingCollator
    from pretraining.data.loader import ShardLoader
    from pretraining.data.shards import list_shards, read_shard

    collate = PretrainingCollator(vocab_size=BERT_VOCAB, mask_token_id=103, special_token_ids=[0, 100, 101, 102, 103])
    loader = ShardLoader(list_shards(dataset_path, "train"), read=read_shard, collate=collate, micro_batch=micro_batch,
                         grad_accum=1, rank=0, world_size=1, loader_type="per_device", seed=0, prefetch=True)
    samples, began, epoch = 0, time.perf_counter(), 0
    try:
        while time.perf_counter() - began < seconds:
            for step in loader.epoch(epoch):
                samples += sum(len(b["input_ids"]) for b in step)
            epoch += 1
    finally:
        loader.close()
    return samples / (time.perf_counter() - began)


# --- the run --------------------------------------------------------------------------------


def bench(args, config: str, precision: str, device: torch.device, dataset_path: Path | None, peak: dict) -> list[dict]:
    """Measure every variant on one config and precision; returns one result row per variant."""
    cfg = CONFIGS[config]
    micro_batch = args.micro_batch or cfg.micro_batch[device.type]
    count = micro_batch * args.batches
    rows = synthetic_rows(cfg.seq, count) if dataset_path is None else shard_rows(dataset_path, cfg.seq, count)
    batches = make_batches(rows, micro_batch, args.batches, device)
    flops = sum(useful_flops(b, cfg) for b in batches)
    tokens = float(sum(b["attention_mask"].sum() for b in batches))
    names = args.variants.split(",")
    measured = {"all": names, "none": []}.get(args.memory, args.memory.split(","))
    times = time_variants(names, cfg, device, precision, batches, args.windows, args.warmup, CLOCKS[args.timer])
    results = []
    with tempfile.TemporaryDirectory() as folder:
        batch_file = Path(folder) / "batches.pt"
        if device.type == "cpu" and measured:
            torch.save(batches, batch_file)
        for name in names:
            if not times[name]:
                continue
            seconds = statistics.median(times[name])
            memory = None
            if name in measured:
                memory = (cuda_peak_memory(name, cfg, device, precision, batches) if device.type == "cuda"
                          else cpu_peak_memory(name, config, precision, batch_file))
            results.append(dict(config=config, precision=precision, variant=name, micro_batch=micro_batch,
                                seq_per_s=micro_batch * args.batches / seconds, tokens_per_s=tokens / seconds,
                                step_ms=1e3 * seconds / args.batches, memory_gib=memory,
                                mfu=flops / seconds / peak["nominal"] if peak["nominal"] else None,
                                of_matmul_peak=flops / seconds / peak[precision],
                                spread=(min(times[name]) / seconds, max(times[name]) / seconds)))
    hf = next((r for r in results if r["variant"] == "hf"), None)
    for row in results:
        row["vs_hf"] = hf["step_ms"] / row["step_ms"] if hf else None
    fill = tokens / (count * cfg.seq)
    print(f"\n## {config} (L={cfg.layers} d={cfg.hidden} f={cfg.intermediate}, seq {cfg.seq}, micro-batch "
          f"{micro_batch}), {precision}, {device.type}; real-token fill {fill:.1%}, {args.batches} batches per window, "
          f"median of {args.windows} windows" + (", CPU-time clock" if args.timer == "cpu" and device.type == "cpu" else ""))
    print("| variant | step ms | seq/s | real tok/s | vs hf | MFU | of matmul peak | peak mem GiB | min..max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['memory_gib']:.2f}" if r["memory_gib"] is not None else "-"
        print(f"| {r['variant']} | {r['step_ms']:.1f} | {r['seq_per_s']:.0f} | {r['tokens_per_s']:.0f} | "
              f"{r['vs_hf']:.2f}x | {mfu} | {r['of_matmul_peak']:.1%} | {mem} | "
              f"{r['spread'][0]:.2f}..{r['spread'][1]:.2f} |")
    return results


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--configs", default=None, help=f"comma list of {', '.join(CONFIGS)} "
                                                        "(default: tiny,mini on the CPU, base,large on a GPU)")
    parser.add_argument("--precisions", default=None, help="comma list of fp32, bf16, fp16 (default: fp32,bf16 on "
                                                           "the CPU, bf16,fp16 on a GPU)")
    parser.add_argument("--variants", default=None, help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--dataset_path", default=None, help="shards of the config's sequence length (default: built "
                                                             "from the packaged offline Wikipedia)")
    parser.add_argument("--lengths", default="real", choices=["real", "synthetic"],
                        help="real: shard rows; synthetic: the full-article length model (no data packages needed)")
    parser.add_argument("--micro_batch", type=int, default=None, help="override the config's micro-batch")
    parser.add_argument("--batches", type=int, default=8, help="micro-batches per timed window")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed windows per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--timer", default="wall", choices=sorted(CLOCKS),
                        help="CPU only: wall (elapsed time) or cpu (this process's CPU time: steadier on a shared "
                             "machine; use with --threads 1)")
    parser.add_argument("--memory", default=None,
                        help="variants whose peak memory is measured: comma list, all or none (default: all on a "
                             "GPU; hf,default on the CPU, where each costs a fresh process)")
    parser.add_argument("--dry_run", action="store_true", help="tiny sizes, one short window: checks the plumbing")
    parser.add_argument("--json", default=None, help="also write all result rows to this JSON file")
    parser.add_argument("--memory_probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch_file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.batches, args.windows, args.warmup, args.micro_batch = 2, 1, 0, args.micro_batch or 4
        args.configs, args.variants = args.configs or "tiny", args.variants or "hf,default,fast"
    return args


def main(argv=None) -> dict:
    """Run the benchmark; returns the headline numbers."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args)
        return {}
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    kind = device.type
    args.configs = args.configs or ("tiny,mini" if kind == "cpu" else "base,large")
    args.precisions = args.precisions or ("fp32,bf16" if kind == "cpu" else "bf16,fp16")
    args.variants = args.variants or DEFAULT_VARIANTS[kind]
    args.memory = args.memory or ("all" if kind == "cuda" else "hf,default")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    unknown += [c for c in args.configs.split(",") if c not in CONFIGS]
    unknown += [p for p in args.precisions.split(",") if p not in PRECISIONS]
    if unknown:
        raise SystemExit(f"error: unknown {', '.join(unknown)}; variants: {', '.join(VARIANTS)}; configs: "
                         f"{', '.join(CONFIGS)}; precisions: {', '.join(PRECISIONS)}")
    name = torch.cuda.get_device_name(device) if kind == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# bench_pretrain: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"lengths={args.lengths}")
    clock = CLOCKS[args.timer] if kind == "cpu" else time.perf_counter
    peak = {p: matmul_peak(device, PRECISIONS[p], clock) for p in args.precisions.split(",")}
    peak["nominal"] = H100_PEAK_FLOPS if kind == "cuda" else None
    print("measured matmul peak: " + ", ".join(f"{p} {peak[p] / 1e12:.2f} TFLOP/s" for p in args.precisions.split(",")))
    all_rows, loader_rates = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for config in args.configs.split(","):
            cfg = CONFIGS[config]
            dataset_path = dataset_for(args, cfg.seq, Path(scratch))
            for precision in args.precisions.split(","):
                all_rows += bench(args, config, precision, device, dataset_path, peak)
            micro_batch = args.micro_batch or cfg.micro_batch[kind]
            loader_rates[config] = loader_throughput(dataset_path, micro_batch)
    for config, rate in loader_rates.items():
        best = max((r["seq_per_s"] for r in all_rows if r["config"] == config), default=0.0)
        if rate is not None:
            print(f"data loader ({config}): {rate:.0f} samples/s = {rate / best:.1f}x the fastest training step")
    if args.json:
        Path(args.json).write_text(json.dumps(all_rows, indent=1))
    head = headline(all_rows, kind)
    if head is None or head["vs_hf"] is None:
        print(f"RESULT device={kind} config={all_rows[0]['config']} speedup_vs_hf=nan mfu=nan")
        return {}
    mfu = head["mfu"] if head["mfu"] is not None else head["of_matmul_peak"]
    print(f"RESULT device={kind} config={head['config']} speedup_vs_hf={head['vs_hf']:.2f} mfu={mfu:.3f}")
    return head


def dataset_for(args, seq: int, scratch: Path) -> Path | None:
    """Shards to read batches from: --dataset_path, else offline shards built once per length; None if synthetic."""
    if args.lengths == "synthetic":
        return None
    if args.dataset_path:
        return Path(args.dataset_path)
    folder = scratch / f"shards{seq}"
    return folder if folder.exists() else offline_shards(folder, seq)


def headline(rows: list[dict], kind: str) -> dict | None:
    """The row of the RESULT line: ``default`` (else the first A variant) on the headline config and precision."""
    config, precision = HEADLINE[kind]
    configs = [r["config"] for r in rows]
    config = config if config in configs else configs[0]
    precisions = [r["precision"] for r in rows if r["config"] == config]
    precision = precision if precision in precisions else precisions[0]
    candidates = [r for r in rows if r["config"] == config and r["precision"] == precision and r["variant"] != "hf"]
    return next((r for r in candidates if r["variant"] == "default"), candidates[0] if candidates else None)


if __name__ == "__main__":
    main()
