"""prepare_dataset.py's pipeline: corpus -> tokenized, masked HDF5 shards + manifest.json.

Stage 1 (tokenize): the main process reads documents in corpus order and assigns
each to a split and shard (every ``1/frac_test``-th document to the test set, then
round-robin over the split's shards); workers clean, sentence-split and tokenize
chunks of documents into ``output_dir/.work``. Stage 2 (build): one worker task per
shard packs, shuffles and masks its documents and writes its file(s) atomically.

Every random choice is seeded by ``--seed`` and the file it belongs to, so the
output is byte-identical whatever ``--num_workers`` is, and a killed run resumes:
complete chunks and shards are kept, the rest is redone. The settings go first to
``.work/manifest.json`` (so a rerun with other settings is refused); ``manifest.json``
with every file's sha256 appears only when all shards are written.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from pretraining.atomic import WriteFailed, write_json_atomic
from pretraining.cli import ArgumentChecker, asdict
from pretraining.errors import UserError
from pretraining.outputs import check_output_folder
from pretraining.data import corpus
from pretraining.data.build import SampleSettings, ShardTask, build_shard
from pretraining.data.chunkstore import SPLIT_CODES, ChunkStore, make_key, tokenize_chunk
from pretraining.data.parallel import Workers
from pretraining.data.prepare_args import PrepareArguments, apply_defaults, log as _log
from pretraining.data.shards import (
    MANIFEST, SPLITS, WORK_DIR, differing_settings, list_shards, load_manifest_file, shard_name,
)
from pretraining.data.tokenization import TokenizerInfo, UnknownTokens, load_tokenizer
from pretraining.data.tokenization import document_sentences
from pretraining.data.unigram import COUNTS_FILE, write_counts
from pretraining.data.vocab import TOKENIZER_DIR, trained_tokenizer, training_settings

TOKENIZED_MARKER = "tokenized.json"
MAX_DOCS_PER_CHUNK = 1000
# Arguments that do not change the output (everything else must match to resume).
RUNTIME_ONLY = ("output_dir", "num_workers", "overwrite", "cache_dir", "max_unk_fraction")
WORKER_MODULES = ("pretraining.data.build", "pretraining.data.chunkstore", "tokenizers", "h5py")


@dataclass
class PrepareResult:
    """What a run produced: the manifest, and seconds per stage.

    ``timings``: wall-clock ``tokenize`` and ``build`` stages and ``total`` (tokenizer
    loading included), ``main_cpu`` (CPU seconds of this process during the two
    stages), ``tokens``.
    """

    manifest: dict
    timings: dict


def _progress(iterable, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, mininterval=2.0, **kwargs)


# --- the output folder ----------------------------------------------------------

def _settings(args: PrepareArguments, tokenizer: Optional[TokenizerInfo], files: list[Path]) -> dict:
    """What the output depends on; without ``tokenizer``, all but :data:`TOKENIZER_SETTINGS`."""
    settings = {k: v for k, v in asdict(args).items() if k not in RUNTIME_ONLY + TOKENIZER_SETTINGS}
    names = list(args.dataset or [])
    settings["dataset"] = (names[0] if len(names) == 1 else names) if names else None  # one name stays a string
    settings["input_files"] = [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in files]
    if tokenizer is not None:
        settings["tokenizer_sha256"] = tokenizer.sha256
        settings["do_lower_case"] = tokenizer.do_lower_case
    return settings


def _our_files(out: Path) -> list[Path]:
    found = [out / name for name in (MANIFEST, COUNTS_FILE) if (out / name).exists()]
    for split in SPLITS:
        try:
            found += list_shards(out, split)
        except UserError:
            pass
    return found


#: settings that come from the tokenizer, known only once it is loaded (or trained)
TOKENIZER_SETTINGS = ("tokenizer_sha256", "do_lower_case")


def _refuse_other_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """UserError when ``out`` holds a (finished or pending) dataset made with other settings, unless ``overwrite``.

    Keys absent from ``settings`` are not compared (the tokenizer's, before it exists).
    """
    if overwrite:
        return
    for path in (out / MANIFEST, out / WORK_DIR / MANIFEST):
        manifest = load_manifest_file(path)
        old = (manifest or {}).get("settings") or {}
        ignored = set() if "tokenizer_sha256" in settings else set(TOKENIZER_SETTINGS)
        differ = differing_settings(old, settings, ignored)
        if manifest is not None and differ:
            raise UserError(f"{out} holds a dataset made with other settings (differing: {', '.join(differ)}); "
                            f"use another --output_dir, or --overwrite to replace it")


def _prepare_output_dir(out: Path, settings: dict, overwrite: bool) -> Optional[dict]:
    """Check ``out`` against ``settings``; returns the manifest of a finished identical run, if any."""
    existing = _our_files(out)
    _refuse_other_settings(out, settings, overwrite)
    if existing and not (out / MANIFEST).exists() and not (out / WORK_DIR).is_dir() and not overwrite:
        raise UserError(f"{out} already holds shard files without a manifest.json; use an empty --output_dir "
                        f"or --overwrite to delete them")
    if overwrite:
        for path in existing:
            path.unlink()
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)
        return None
    for stale in out.glob(".*.tmp"):  # half-written files of a killed run
        stale.unlink()
    finished = load_manifest_file(out / MANIFEST)
    if finished is not None:
        if all((out / record["name"]).is_file() for record in finished.get("files", [])):
            shutil.rmtree(out / WORK_DIR, ignore_errors=True)  # a run killed after its manifest, before this
            return finished
        (out / MANIFEST).unlink()  # files went missing: make them again
    return None


# --- stage 1: read, assign, tokenize ----------------------------------------------

def _assign(start: int, count: int, args: PrepareArguments, phase: float, seen: dict) -> np.ndarray:
    """Destination keys of documents ``start .. start + count`` (corpus order)."""
    test = _is_test(np.arange(start, start + count, dtype=np.float64), args, phase)
    keys = np.empty(count, dtype=np.int64)
    for split, selected, shards in (("test", test, args.num_test_shards), ("train", ~test, args.num_train_shards)):
        rank = seen[split] + np.cumsum(selected) - 1
        keys[selected] = make_key(split, rank[selected] % max(shards, 1))
        seen[split] += int(selected.sum())
    return keys


def docs_per_chunk(max_documents: Optional[int]) -> int:
    """Documents per tokenizing task: 1000, fewer for small runs so several workers get work.

    Depends on the settings only (a resumed run must cut the same chunks); the
    output does not depend on it at all.
    """
    if max_documents is None:
        return MAX_DOCS_PER_CHUNK
    return min(MAX_DOCS_PER_CHUNK, max(32, -(-max_documents // 8)))


def _documents(args: PrepareArguments, files: list[Path], skipped: dict | None = None) -> Iterator:
    """The corpus's non-empty documents in order (the first --max_documents of them); the empty ones (blank text,
    in any format) are counted in ``skipped["empty"]`` when given."""
    documents = corpus.iter_documents(list(args.dataset or []), [str(f) for f in files],
                                      args.dataset_config, args.cache_dir)

    def non_empty(documents):
        for document in documents:
            if document[0] and not document[0].isspace():
                yield document
            elif skipped is not None:
                skipped["empty"] = skipped.get("empty", 0) + 1

    documents = non_empty(documents)
    if args.max_documents is not None:
        documents = itertools.islice(documents, args.max_documents)
    return documents


def _split_phase(args: PrepareArguments) -> float:
    return float(np.random.default_rng(args.seed).random())


def _is_test(index: np.ndarray, args: PrepareArguments, phase: float) -> np.ndarray:
    """Which documents (by corpus index) go to the test set: every 1/frac_test-th, from a seeded phase."""
    return np.floor((index + 1) * args.frac_test + phase) > np.floor(index * args.frac_test + phase)


def _train_texts(args: PrepareArguments, files: list[Path]) -> Iterator[str]:
    """The cleaned text of the train documents (test documents left out), for --train_tokenizer."""
    phase = _split_phase(args)
    train = (d for i, d in enumerate(_documents(args, files))
             if not _is_test(np.float64(i), args, phase))
    for text, is_wikitext in itertools.islice(train, args.train_tokenizer_max_documents):
        yield "\n".join(document_sentences(text, is_wikitext))


def _tokenizer_source(args: PrepareArguments, files: list[Path], out: Path) -> Optional[str]:
    """--tokenizer_name, or the folder of the tokenizer trained on this corpus (--train_tokenizer)."""
    if not args.train_tokenizer:
        return args.tokenizer_name
    source = {"dataset": list(args.dataset or []), "dataset_config": args.dataset_config,
              "input_files": [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in files],
              "max_documents": args.max_documents, "frac_test": args.frac_test, "seed": args.seed,
              "max_train_documents": args.train_tokenizer_max_documents}
    lowercase = True if args.do_lower_case is None else args.do_lower_case
    settings = training_settings(args.train_tokenizer, lowercase, source)
    return str(trained_tokenizer(out, settings, _train_texts(args, files), args.overwrite, _log))


def own_shards(args: PrepareArguments, split: str) -> list[int]:
    """The indices of the ``split`` shards this run writes: all of them, or those of its --part K/M."""
    count = args.num_train_shards if split == "train" else args.num_test_shards
    part = args.part_of()
    return list(range(count)) if part is None else [s for s in range(count) if s % part[1] == part[0]]


def _chunks(documents: Iterator, args: PrepareArguments, store: ChunkStore, tokenizer: TokenizerInfo,
            counts: dict) -> Iterator[tuple]:
    """Tokenize tasks for the chunks not already in ``store`` (with --part: only the part's documents)."""
    phase = _split_phase(args)
    seen = {"train": 0, "test": 0}
    per_chunk = docs_per_chunk(args.max_documents)
    own = np.array([make_key(split, s) for split in SPLITS for s in own_shards(args, split)], dtype=np.int64)
    for chunk in itertools.count():
        batch = list(itertools.islice(documents, per_chunk))
        if not batch:
            return
        keys = _assign(chunk * per_chunk, len(batch), args, phase, seen)
        if args.part is not None:  # the assignment counted every document; this part tokenizes its own
            mine = np.isin(keys, own)
            batch, keys = [d for d, m in zip(batch, mine) if m], keys[mine]
        counts["chunks"] = chunk + 1
        counts["documents"] = dict(seen)
        if not store.is_complete(chunk):
            yield str(store.folder), store.dtype.name, tokenizer.json, tokenizer.unk_token_id, chunk, batch, keys


def _tokenize_corpus(args: PrepareArguments, files: list[Path], tokenizer: TokenizerInfo, store: ChunkStore,
                     workers: Workers) -> dict:
    marker = store.folder / TOKENIZED_MARKER
    if marker.is_file():
        return json.loads(marker.read_text())
    counts: dict = {"chunks": 0, "documents": {"train": 0, "test": 0}}
    skipped: dict = {}
    tasks = _chunks(_documents(args, files, skipped), args, store, tokenizer, counts)
    unknown = UnknownTokens(args.max_unk_fraction, tokenizer.name)
    with _progress(None, desc="tokenize", unit="doc") as progress:
        for _, n_docs, n_tokens, n_unknown in workers.run(tokenize_chunk, tasks):
            progress.update(n_docs)
            unknown.add(n_tokens, n_unknown)
    unknown.check(final=True)
    if skipped.get("empty"):
        _log(f"notice: {skipped['empty']} empty document(s) (blank or null text) skipped")
    if counts["chunks"] == 0:
        source = ", ".join([*(args.dataset or []), *map(str, files)])
        raise UserError(f"no documents found in {source}; check the input is not empty")
    write_json_atomic(marker, counts)
    return counts


def _shard_statistics(store: ChunkStore, num_chunks: int, args: PrepareArguments) -> dict:
    totals: dict[int, list[int]] = {}
    for chunk in range(num_chunks):
        for key, (docs, tokens) in store.summary(chunk).items():
            entry = totals.setdefault(key, [0, 0])
            entry[0] += docs
            entry[1] += tokens
    stats = {}
    for split in SPLITS:
        shards = own_shards(args, split)
        per_shard = [totals.get(int(make_key(split, s)), [0, 0]) for s in shards]
        empty = [s for s, (_, tokens) in zip(shards, per_shard) if tokens == 0]
        if empty:
            raise UserError(
                f"{len(empty)} of {len(shards)} {split} shards would be empty: the corpus has too few documents "
                f"({sum(d for d, _ in per_shard)} {split} documents); lower --num_{split}_shards"
                + (" or raise --frac_test" if split == "test" else "") + " or use more documents"
            )
        stats[split] = {"documents": sum(d for d, _ in per_shard), "tokens": sum(t for _, t in per_shard)}
    return stats


# --- stage 2: build shards ----------------------------------------------------------

def _shard_tasks(args: PrepareArguments, out: Path, store: ChunkStore, num_chunks: int) -> list[ShardTask]:
    tasks = []
    for split, shards, dups in (("train", args.num_train_shards, args.dup_factor), ("test", args.num_test_shards, 1)):
        for shard in own_shards(args, split):
            files = tuple((dup, str(out / shard_name(split, dup * shards + shard))) for dup in range(dups))
            tasks.append(ShardTask(str(store.folder), store.dtype.name, num_chunks, split, shard, files))
    return tasks


def _sample_settings(args: PrepareArguments, tokenizer: TokenizerInfo) -> SampleSettings:
    return SampleSettings(
        seed=args.seed, max_seq_length=args.max_seq_length, short_seq_prob=args.short_seq_prob, nsp=args.nsp,
        static_masking=args.masking == "static", masked_lm_prob=args.masked_lm_prob,
        max_predictions_per_seq=args.max_predictions_per_seq, vocab_size=tokenizer.vocab_size,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        mask_token_id=tokenizer.mask_token_id, special_token_ids=tokenizer.special_token_ids,
    )


def _manifest(args: PrepareArguments, settings: dict, tokenizer: TokenizerInfo) -> dict:
    return {
        "format": "budget-bert-hdf5-shards",
        "version": 1,
        "settings": settings,
        "args": asdict(args),
        "tokenizer": TOKENIZER_DIR if args.train_tokenizer else tokenizer.name,  # relative: the dataset's own
        "vocab_size": tokenizer.vocab_size,
        "do_lower_case": tokenizer.do_lower_case,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "mask_token_id": tokenizer.mask_token_id,
        "special_token_ids": list(tokenizer.special_token_ids),
        "max_seq_length": args.max_seq_length,
        "max_predictions_per_seq": args.max_predictions_per_seq,
        "masked_lm_prob": args.masked_lm_prob,
        "masking": args.masking,
        "nsp": args.nsp,
        "seed": args.seed,
        "dup_factor": args.dup_factor,
    }


def _build_shards(args: PrepareArguments, out: Path, tokenizer: TokenizerInfo, store: ChunkStore,
                  num_chunks: int, workers: Workers) -> tuple[list[dict], np.ndarray]:
    """Write every shard; returns the file records (sorted) and the train documents' token counts."""
    tasks = _shard_tasks(args, out, store, num_chunks)
    sample_settings = _sample_settings(args, tokenizer)
    records, counts = [], np.zeros(tokenizer.vocab_size, dtype=np.int64)
    with _progress(None, desc="shards", unit="file", total=sum(len(t.files) for t in tasks)) as progress:
        for result in workers.run(build_shard, ((task, sample_settings) for task in tasks)):
            records.extend(result.records)
            if result.token_counts is not None:
                counts += result.token_counts
            progress.update(len(result.records))
    return sorted(records, key=lambda r: (SPLIT_CODES[r["split"]], r["name"])), counts


def prepare(args: PrepareArguments) -> PrepareResult:
    """Run the whole pipeline (resuming a killed run into the same folder); with --merge, join parts."""
    if args.merge:
        from pretraining.data.merge import merge_parts

        return PrepareResult(merge_parts(args.merge, args.output_dir), {})
    args = apply_defaults(args)
    check = ArgumentChecker()
    args.validate(check)
    check.raise_if_any()
    started = time.perf_counter()
    files = corpus.expand_input_files(args.input_files) if args.input_files else []
    out = check_output_folder(args.output_dir, flag="--output_dir", inputs=[*(args.input_files or []), *files])
    created = not out.exists()
    with Workers(args.workers, preload=WORKER_MODULES) as workers:  # they start while the tokenizer loads
        out.mkdir(parents=True, exist_ok=True)
        _refuse_other_settings(out, _settings(args, None, files), args.overwrite)  # before a tokenizer is trained
        tokenizer = load_tokenizer(_tokenizer_source(args, files, out), args.do_lower_case, args.cache_dir)
        settings = _settings(args, tokenizer, files)
        finished = _prepare_output_dir(out, settings, args.overwrite)
        if finished is not None:
            _log(f"{out} already holds this dataset (manifest.json complete); nothing to do")
            return PrepareResult(finished, {"total": time.perf_counter() - started})
        manifest = _manifest(args, settings, tokenizer)
        store = ChunkStore(out / WORK_DIR, tokenizer.token_dtype)
        store.folder.mkdir(exist_ok=True)
        write_json_atomic(store.folder / MANIFEST, manifest)
        for stale in store.folder.glob(".*.tmp*"):
            stale.unlink()
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            counts = _tokenize_corpus(args, files, tokenizer, store, workers)
            stats = _shard_statistics(store, counts["chunks"], args)
        except WriteFailed:  # disk full: the chunks written so far are kept, the rerun resumes
            raise
        except UserError:  # bad input or flags: the fix changes the settings, so nothing here can be resumed
            shutil.rmtree(store.folder, ignore_errors=True)
            if created and not any(out.iterdir()):  # and a folder this command made is not left behind empty
                out.rmdir()
            raise
        t1 = time.perf_counter()
        records, token_counts = _build_shards(args, out, tokenizer, store, counts["chunks"], workers)
        t2, cpu2 = time.perf_counter(), time.process_time()

    for split in SPLITS:
        stats.setdefault(split, {"documents": 0, "tokens": 0})
        stats[split]["samples"] = sum(r["samples"] for r in records if r["split"] == split)
    manifest.update(
        files=records,
        sha256={r["name"]: r["sha256"] for r in records},
        counts=stats,
        train_files=[r["name"] for r in records if r["split"] == "train"],
        test_files=[r["name"] for r in records if r["split"] == "test"],
        token_counts=COUNTS_FILE,
    )
    write_counts(out, token_counts, source="train documents")
    write_json_atomic(out / MANIFEST, manifest)
    shutil.rmtree(store.folder, ignore_errors=True)
    total_tokens = stats["train"]["tokens"] + stats["test"]["tokens"]
    _log(f"wrote {len(records)} shards ({stats['train']['samples']} train / {stats['test']['samples']} test samples, "
         f"{total_tokens} tokens) to {out} in {t2 - started:.1f}s")
    return PrepareResult(manifest, {"tokenize": t1 - t0, "build": t2 - t1, "total": t2 - started,
                                    "main_cpu": cpu2 - cpu0, "tokens": total_tokens})
