#!/usr/bin/env python
"""prepare_dataset.py at the size users have: a synthetic Wikipedia-like corpus of ``--gigabytes`` of text.

1. Writes the corpus as jsonl and as parquet (field ``text``): documents sampled from the packaged
   Wikipedia lead sections, each perturbed (sentences resampled and reordered, ~10% of the words
   swapped for other corpus words, a numbered title) so that no two are identical.
2. Measures the raw fast tokenizer (one thread) on a sample of that corpus: the ceiling per core.
3. Runs the real ``prepare_dataset.py`` in a subprocess with the seed's layout (static masking,
   256 x 10 train shards + 128 test shards; ``--quick`` scales the shard counts down 8x), once per
   format, sampling every 0.5 s the resident memory of its main process and of each worker, and the
   size of its ``.work`` chunk store.

Prints a table and one ``RESULT`` line per format: corpus bytes, tokens, wall time, tokens/s per core
against the raw tokenizer, peak RSS of the main process and of the largest worker, peak ``.work``
disk, files written.

    python benchmarks/bench_prepare_scale.py --quick          # 0.2 GB (a few minutes on 2 cores)
    python benchmarks/bench_prepare_scale.py --gigabytes 2    # the issue's full size
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretraining.data.corpus import offline_wikipedia  # noqa: E402
from pretraining.data.tokenization import encode_batch, load_tokenizer, rust_tokenizer  # noqa: E402

GIB = 1 << 30
SENTENCE = re.compile(r"(?<=[.!?])\s+")


def synthetic_documents(target_bytes: int, seed: int = 0):
    """Wikipedia-like documents until ``target_bytes`` of text: resampled packaged leads, none identical."""
    rng = random.Random(seed)
    leads = [text for text, _ in offline_wikipedia()]
    sentences = [SENTENCE.split(text) for text in leads]
    words = [word for text in leads[:2000] for word in text.split()]
    written, number = 0, 0
    while written < target_bytes:
        base = sentences[rng.randrange(len(sentences))]
        extra = sentences[rng.randrange(len(sentences))]
        picked = base + rng.sample(extra, k=min(len(extra), rng.randint(0, 3)))
        rng.shuffle(picked)
        tokens = " ".join(picked).split()
        for _ in range(max(1, len(tokens) // 10)):
            tokens[rng.randrange(len(tokens))] = words[rng.randrange(len(words))]
        number += 1
        text = f"Article {number}\n\n" + " ".join(tokens)
        written += len(text.encode("utf-8"))
        yield text


def write_corpus(folder: Path, gigabytes: float) -> dict:
    """corpus.jsonl and corpus.parquet with the same documents; reused when present at this size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    jsonl, parquet, info_path = folder / "corpus.jsonl", folder / "corpus.parquet", folder / "corpus.json"
    if info_path.is_file() and json.loads(info_path.read_text()).get("gigabytes") == gigabytes:
        return json.loads(info_path.read_text())
    started, documents, text_bytes, batch = time.monotonic(), 0, 0, []
    with open(jsonl, "w", encoding="utf-8") as out, pq.ParquetWriter(parquet, pa.schema([("text", pa.string())]),
                                                                     compression="zstd") as writer:
        for text in synthetic_documents(int(gigabytes * GIB)):
            out.write(json.dumps({"text": text}) + "\n")
            batch.append(text)
            documents += 1
            text_bytes += len(text.encode("utf-8"))
            if len(batch) == 20_000:
                writer.write_table(pa.table({"text": batch}))
                batch = []
        if batch:
            writer.write_table(pa.table({"text": batch}))
    info = {"gigabytes": gigabytes, "documents": documents, "text_bytes": text_bytes,
            "jsonl_bytes": jsonl.stat().st_size, "parquet_bytes": parquet.stat().st_size,
            "seconds": round(time.monotonic() - started, 1)}
    info_path.write_text(json.dumps(info, indent=1))
    return info


def raw_tokenizer_speed(jsonl: Path, sample_bytes: int = 32 << 20, repeats: int = 3) -> float:
    """Tokens/s of the raw fast tokenizer, one thread, on the first ``sample_bytes`` of the corpus (CPU time;
    the best of ``repeats``: one pass varied from 377k to 530k tokens/s on the same VM)."""
    texts, size = [], 0
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(line)
            if size >= sample_bytes:
                break
    tokenizer = rust_tokenizer(load_tokenizer(None).json)
    best = 0.0
    for _ in range(repeats):
        cpu = time.process_time()
        tokens = sum(len(e.ids) for e in encode_batch(tokenizer, texts))
        best = max(best, tokens / (time.process_time() - cpu))
    return best


def hub_path_memory(parquet: Path, cache: Path) -> dict:
    """The ``--dataset wikipedia`` code path (``datasets`` Arrow table -> :func:`iter_dataset_texts`) over the
    corpus loaded as a local parquet dataset with the Hub's ``text`` column: this process's RSS growth while
    every document is iterated (bounded if nothing is materialised in Python lists)."""
    import datasets
    import psutil

    from pretraining.data.corpus import iter_dataset_texts

    def anonymous() -> int:  # RSS less the memory-mapped Arrow file pages (page cache the kernel can drop)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return psutil.Process().memory_info().rss

    dataset = datasets.load_dataset("parquet", data_files=str(parquet), split="train", cache_dir=str(cache))
    rss = psutil.Process().memory_info
    before, anon_before = rss().rss, anonymous()
    peak, anon_peak, documents = before, anon_before, 0
    for documents, _ in enumerate(iter_dataset_texts(dataset), 1):
        if documents % 10_000 == 0:
            peak, anon_peak = max(peak, rss().rss), max(anon_peak, anonymous())
    return {"documents": documents, "rss_before": before, "rss_peak": peak, "anon_before": anon_before,
            "anon_peak": anon_peak}


def _tree_size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


class Sampler(threading.Thread):
    """Every ``interval`` s: RSS of the process and of each child, and the size of ``work``; the peaks."""

    def __init__(self, pid: int, work: Path, interval: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.process, self.work, self.interval = psutil.Process(pid), work, interval
        self.main_rss = self.worker_rss = self.work_bytes = 0
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.done.is_set():
            try:
                self.main_rss = max(self.main_rss, self.process.memory_info().rss)
                for child in self.process.children(recursive=True):
                    try:
                        self.worker_rss = max(self.worker_rss, child.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            if self.work.exists():
                self.work_bytes = max(self.work_bytes, _tree_size(self.work))
            self.done.wait(self.interval)


def prepare_argv(source: Path, out: Path, args) -> list[str]:
    """prepare_dataset.py with the seed's layout (shard counts / 8 with --quick)."""
    scale = 8 if args.quick else 1
    return [sys.executable, str(ROOT / "prepare_dataset.py"), "--input_files", str(source), "--output_dir", str(out),
            "--max_seq_length", "128", "--masking", "static", "--num_train_shards", str(256 // scale),
            "--dup_factor", "10", "--num_test_shards", str(128 // scale), "--num_workers", str(args.num_workers),
            "--seed", "42"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _hashes(out: Path) -> dict:
    from pretraining.atomic import sha256_file

    return {p.name: sha256_file(p) for p in sorted(out.glob("*.hdf5"))}


def killed_and_resumed(source: Path, out: Path, args, reference: dict, kill_after: list[float]) -> list[dict]:
    """Kill prepare_dataset.py (SIGKILL, the whole process group) after each of ``kill_after`` seconds, rerun
    it to completion, and compare every shard's sha256 with the uninterrupted run's ``reference``."""
    import signal

    results = []
    for seconds in kill_after:
        shutil.rmtree(out, ignore_errors=True)
        with open(out.with_suffix(".log"), "w") as handle:
            process = subprocess.Popen(prepare_argv(source, out, args), stdout=handle, stderr=subprocess.STDOUT,
                                       cwd=ROOT, env=_env(), start_new_session=True)
            try:
                process.wait(timeout=seconds)
                killed = False
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                killed = True
            started = time.monotonic()
            code = subprocess.run(prepare_argv(source, out, args), stdout=handle, stderr=subprocess.STDOUT,
                                  cwd=ROOT, env=_env()).returncode
        hashes = _hashes(out) if code == 0 else {}
        results.append({"kill_after_s": seconds, "killed": killed, "resume_s": time.monotonic() - started,
                        "exit": code, "identical": hashes == reference and bool(hashes)})
    return results


def run_pipeline(source: Path, out: Path, args) -> dict:
    """prepare_dataset.py on ``source`` into ``out`` (fresh), measured."""
    shutil.rmtree(out, ignore_errors=True)
    argv = prepare_argv(source, out, args)
    log = out.with_suffix(".log")
    started = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
        sampler = Sampler(process.pid, out / ".work")
        sampler.start()
        code = process.wait()
        sampler.done.set()
        sampler.join()
    wall = time.monotonic() - started
    if code:
        raise SystemExit(f"prepare_dataset.py failed (exit {code}); see {log}")
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest.get("counts", {})
    tokens = sum(int(split.get("tokens", 0)) for split in counts.values())  # the corpus's, before duplication
    files = sum(1 for path in out.rglob("*") if path.is_file())
    return {"hashes": _hashes(out), "wall_s": wall, "tokens": tokens, "main_rss": sampler.main_rss,
            "worker_rss": sampler.worker_rss,
            "work_bytes": sampler.work_bytes, "files": files, "out_bytes": _tree_size(out), "counts": counts}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.0, help="corpus size in GiB of text (default 2)")
    parser.add_argument("--quick", action="store_true", help="0.2 GiB and shard counts / 8")
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"], choices=["jsonl", "parquet"])
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output_dir", default=str(ROOT / "out" / "prepare_scale"))
    parser.add_argument("--keep", action="store_true", help="keep the shards (default: delete after measuring)")
    parser.add_argument("--parts", nargs="+", default=["hub", "pipeline"], choices=["hub", "pipeline", "resume"],
                        help="hub: iterate the corpus as a datasets Arrow table (the --dataset wikipedia path); "
                             "pipeline: prepare_dataset.py per format; resume (with pipeline): jsonl killed at "
                             "--kill_after seconds and rerun, compared byte for byte")
    parser.add_argument("--kill_after", nargs="+", type=float, default=[20.0, 45.0, 70.0],
                        help="seconds after launch to SIGKILL the preparation (the resume part)")
    args = parser.parse_args(argv)
    if args.quick:
        args.gigabytes = 0.2
    root = Path(args.output_dir) / f"{args.gigabytes:g}gb"
    corpus = write_corpus(root, args.gigabytes)
    print(f"corpus: {corpus['documents']:,} documents, {corpus['text_bytes'] / GIB:.2f} GiB of text "
          f"(jsonl {corpus['jsonl_bytes'] / GIB:.2f} GiB, parquet {corpus['parquet_bytes'] / GIB:.2f} GiB), "
          f"written in {corpus['seconds']} s", flush=True)
    if "hub" in args.parts:
        hub = hub_path_memory(root / "corpus.parquet", root / "hf_cache")
        grew = (hub["rss_peak"] - hub["rss_before"]) / GIB
        anon = (hub["anon_peak"] - hub["anon_before"]) / GIB
        print(f"hub path: {hub['documents']:,} documents iterated; RSS {hub['rss_before'] / GIB:.2f} GiB after "
              f"loading, peak {hub['rss_peak'] / GIB:.2f} GiB (+{grew:.2f} GiB, of which anonymous memory "
              f"+{anon:.2f} GiB; the rest is the memory-mapped Arrow file)", flush=True)
        print(f"RESULT part=hub documents={hub['documents']} rss_before_bytes={hub['rss_before']} "
              f"rss_peak_bytes={hub['rss_peak']} anon_before_bytes={hub['anon_before']} "
              f"anon_peak_bytes={hub['anon_peak']}")
        shutil.rmtree(root / "hf_cache", ignore_errors=True)
    if "pipeline" not in args.parts:
        return []
    raw = raw_tokenizer_speed(root / "corpus.jsonl")
    print(f"raw tokenizer: {raw:,.0f} tokens/s on one core (CPU time, best of 3 on a 32 MiB sample)", flush=True)
    rows = []
    print("| format | corpus GiB | tokens | wall | tokens/s per core | vs raw tokenizer | main RSS | largest worker "
          "RSS | .work peak | files |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for fmt in args.formats:
        result = run_pipeline(root / f"corpus.{fmt}", root / f"shards-{fmt}", args)
        per_core = result["tokens"] / result["wall_s"] / args.num_workers
        row = {"format": fmt, "corpus_bytes": corpus["text_bytes"], **result, "tokens_per_s_per_core": per_core,
               "fraction_of_tokenizer": per_core / raw, "workers": args.num_workers}
        rows.append(row)
        print(f"| {fmt} | {corpus['text_bytes'] / GIB:.2f} | {result['tokens']:,} | {result['wall_s']:.0f} s | "
              f"{per_core:,.0f} | {per_core / raw:.2f} | {result['main_rss'] / GIB:.2f} GiB | "
              f"{result['worker_rss'] / GIB:.2f} GiB | {result['work_bytes'] / GIB:.2f} GiB | {result['files']} |",
              flush=True)
        if fmt == "jsonl" and "resume" in args.parts:
            for r in killed_and_resumed(root / "corpus.jsonl", root / "shards-resume", args, result["hashes"],
                                        args.kill_after):
                print(f"killed after {r['kill_after_s']:g} s (killed: {r['killed']}), resumed in {r['resume_s']:.0f} s:"
                      f" {'byte-identical' if r['identical'] else 'DIFFERENT'} (exit {r['exit']})", flush=True)
                print(f"RESULT part=resume kill_after_s={r['kill_after_s']:g} killed={r['killed']} "
                      f"identical={r['identical']} resume_s={r['resume_s']:.1f}")
            shutil.rmtree(root / "shards-resume", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root / f"shards-{fmt}", ignore_errors=True)
    for row in rows:
        print(f"RESULT format={row['format']} corpus_bytes={row['corpus_bytes']} tokens={row['tokens']} "
              f"wall_s={row['wall_s']:.1f} workers={row['workers']} tokens_per_s_per_core={row['tokens_per_s_per_core']:.0f} "
              f"raw_tokenizer_per_core={raw:.0f} fraction_of_tokenizer={row['fraction_of_tokenizer']:.3f} "
              f"main_rss_bytes={row['main_rss']} worker_rss_bytes={row['worker_rss']} "
              f"work_peak_bytes={row['work_bytes']} files={row['files']}")
    return rows


if __name__ == "__main__":
    main()
