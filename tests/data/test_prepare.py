"""prepare_dataset.py end to end on real text: schema, provenance, determinism, resume, errors."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from prepare_dataset import main
from pretraining.data.corpus import offline_wikipedia
from pretraining.atomic import sha256_file
from pretraining.data.shards import list_shards, read_manifest, read_shard
from pretraining.errors import UserError
from tests.conftest import ROOT, TINY_SHARD_FLAGS

DESIGN_DTYPES = {"input_ids": "int32", "input_mask": "int8", "segment_ids": "int8",
                 "masked_lm_positions": "int32", "masked_lm_ids": "int32", "next_sentence_labels": "int8"}


def _hashes(folder) -> dict:
    return {p.name: sha256_file(p) for p in sorted(Path(folder).glob("*.hdf5"))}


def _original_tokens(rows) -> np.ndarray:
    ids = rows["input_ids"].copy()
    if "masked_lm_positions" in rows:
        for i, (positions, labels) in enumerate(zip(rows["masked_lm_positions"], rows["masked_lm_ids"])):
            ids[i, positions[positions > 0]] = labels[positions > 0]
    return ids


class DocumentIndex:
    """Every document tokenized on its own (whole text, HF tokenizer), for finding where a span comes from."""

    def __init__(self, tokenizer, texts):
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        self.lengths = np.array([len(x) for x in ids])
        self.starts = np.concatenate([[0], np.cumsum(self.lengths + 1)[:-1]])
        self.buffer = np.concatenate([np.append(np.asarray(x, np.int32), -1) for x in ids]).astype(np.int32).tobytes()

    def find_all(self, tokens) -> list[tuple[int, int]]:
        """(document, offset) of every occurrence of ``tokens`` (-1 separators stop spans crossing documents)."""
        needle, at, found = np.asarray(tokens, np.int32).tobytes(), 0, []
        while (at := self.buffer.find(needle, at)) >= 0:
            if at % 4 == 0:
                doc = int(np.searchsorted(self.starts, at // 4, side="right") - 1)
                found.append((doc, int(at // 4 - self.starts[doc])))
            at += 1
        return found


def test_schema_dtypes_and_manifest(tiny_shards):
    manifest = read_manifest(tiny_shards)
    assert manifest["max_seq_length"] == 64
    assert manifest["train_files"] == [f"train_shard_{i:05d}.hdf5" for i in range(4)]
    assert manifest["test_files"] == ["test_shard_00000.hdf5"]
    assert manifest["vocab_size"] == 30522 and manifest["do_lower_case"] is True and manifest["masking"] == "static"
    assert manifest["counts"]["train"]["documents"] + manifest["counts"]["test"]["documents"] == 300
    assert _hashes(tiny_shards) == manifest["sha256"]
    total = 0
    for path in list_shards(tiny_shards) + list_shards(tiny_shards, "test"):
        with h5py.File(path) as f:
            assert {k: f[k].dtype.name for k in f} == {k: v for k, v in DESIGN_DTYPES.items() if k != "next_sentence_labels"}
            n = f["input_ids"].shape[0]
            assert f["input_ids"].shape == f["input_mask"].shape == f["segment_ids"].shape == (n, 64)
            assert f["masked_lm_positions"].shape == f["masked_lm_ids"].shape == (n, 10)
        rows = read_shard(path)
        total += n
        lengths = rows["input_mask"].sum(axis=1)
        assert np.all(rows["input_mask"] == (np.arange(64) < lengths[:, None]))  # a prefix of ones
        assert np.all(rows["input_ids"][rows["input_mask"] == 0] == 0)  # 0-padded
        assert np.all(rows["input_ids"][:, 0] == 101)
        assert np.all(rows["input_ids"][np.arange(n), lengths - 1] == 102)
        assert np.all(rows["segment_ids"] == 0) and lengths.min() >= 3
    assert total == manifest["counts"]["train"]["samples"] + manifest["counts"]["test"]["samples"]
    # most samples are full: sentences fill a sample up to its target length
    assert np.mean([read_shard(p)["input_mask"].sum(1).mean() for p in list_shards(tiny_shards)]) > 40


def test_every_sample_is_a_span_of_one_document_and_splits_are_disjoint(tiny_shards, bert_tokenizer):
    texts = [t for t, _ in itertools.islice(offline_wikipedia(), 300)]
    index = DocumentIndex(bert_tokenizer, texts)
    samples = []
    for split in ("train", "test"):
        for path in list_shards(tiny_shards, split):
            rows = read_shard(path)
            samples += [(split, ids[1 : n - 1]) for ids, n in zip(_original_tokens(rows), rows["input_mask"].sum(1))]
    # place each sample in a document, longest first; a short span may occur in several: take a free place
    covered = [np.zeros(n, dtype=np.int64) for n in index.lengths]
    docs = {"train": set(), "test": set()}
    for split, tokens in sorted(samples, key=lambda s: -len(s[1])):
        places = index.find_all(tokens)
        assert places, f"a {split} sample of {len(tokens)} tokens is in no single document"
        doc, offset = next(((d, o) for d, o in places if not covered[d][o : o + len(tokens)].any()), places[0])
        covered[doc][offset : offset + len(tokens)] += 1
        docs[split].add(doc)
    assert not docs["train"] & docs["test"]
    assert len(docs["test"]) == 15  # every 20th document (frac_test 0.05)
    assert all(np.all(c == 1) for c in covered)  # dup_factor 1: every token exactly once, none lost


def test_dynamic_shards_hold_the_same_samples_unmasked(tiny_shards, tiny_shards_dynamic):
    manifest = read_manifest(tiny_shards_dynamic)
    assert manifest["masking"] == "dynamic"
    for static_path, dynamic_path in zip(list_shards(tiny_shards), list_shards(tiny_shards_dynamic)):
        static, dynamic = read_shard(static_path), read_shard(dynamic_path)
        assert set(dynamic) == {"input_ids", "input_mask", "segment_ids"}
        np.testing.assert_array_equal(_original_tokens(static), dynamic["input_ids"])


def test_two_workers_write_byte_identical_shards(tiny_shards, tmp_path):
    flags = list(TINY_SHARD_FLAGS)
    flags[flags.index("--num_workers") + 1] = "2"
    manifest = main(["--output_dir", str(tmp_path), *flags])
    assert _hashes(tmp_path) == _hashes(tiny_shards) == manifest["sha256"]
    assert not (tmp_path / ".work").exists()


def test_dup_factor_nsp_and_mediawiki_input(tmp_path, bert_tokenizer):
    from pretraining.data.collator import PretrainingCollator
    from pretraining.resources import mediawiki_dump

    manifest = main(["--output_dir", str(tmp_path), "--input_files", str(mediawiki_dump()), "--nsp",
                     "--num_train_shards", "2", "--dup_factor", "2", "--num_test_shards", "0", "--frac_test", "0",
                     "--max_seq_length", "64", "--num_workers", "1", "--max_documents", "25"])
    assert manifest["train_files"] == [f"train_shard_{i:05d}.hdf5" for i in range(4)] and not manifest["test_files"]
    assert manifest["counts"]["train"]["documents"] == 25
    first, copy = read_shard(tmp_path / "train_shard_00000.hdf5"), read_shard(tmp_path / "train_shard_00002.hdf5")
    assert not np.array_equal(first["input_ids"][:50], copy["input_ids"][:50])  # another packing and masking
    labels = first["next_sentence_labels"]
    assert labels.dtype == np.int8 and 0.3 < labels.mean() < 0.7
    ids, mask, segments = _original_tokens(first), first["input_mask"], first["segment_ids"]
    for i in range(len(ids)):
        n = mask[i].sum()
        seps = np.flatnonzero(ids[i, :n] == 102)
        assert seps[-1] == n - 1 and len(seps) >= 2
        a_end = seps[np.flatnonzero(seps < n - 1)[-1]] if labels[i] == 0 else seps[-2]
        assert np.all(segments[i, : a_end + 1] == 0) and np.all(segments[i, a_end + 1 : n] == 1)
    text = bert_tokenizer.decode(ids[mask.astype(bool)])
    assert "{ {" not in text and "[ [" not in text and "< ref" not in text
    collate = PretrainingCollator(len(bert_tokenizer), bert_tokenizer.mask_token_id, bert_tokenizer.all_special_ids)
    batch = collate({k: v[:8] for k, v in first.items()}, None)
    np.testing.assert_array_equal(batch["next_sentence_label"].numpy(), labels[:8])


@pytest.mark.slow
def test_rerun_is_a_noop_and_other_settings_are_refused_unless_overwrite(tiny_shards, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_shards, folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    main(["--output_dir", str(folder), *TINY_SHARD_FLAGS])
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    (folder / "train_shard_00001.hdf5").unlink()  # a lost file is made again, identical
    main(["--output_dir", str(folder), *TINY_SHARD_FLAGS])
    assert _hashes(folder) == _hashes(tiny_shards)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with pytest.raises(SystemExit) as info:
        main(["--output_dir", str(folder), *TINY_SHARD_FLAGS, "--max_seq_length", "32"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "max_seq_length" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    manifest = main(["--output_dir", str(folder), *TINY_SHARD_FLAGS, "--max_seq_length", "32", "--overwrite"])
    assert manifest["max_seq_length"] == 32 and read_shard(folder / "train_shard_00000.hdf5")["input_ids"].shape[1] == 32


def _run_until(command, condition, timeout=120.0):
    """Start ``command``; SIGKILL it as soon as ``condition()`` holds. Returns whether it was killed."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if condition():
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_runs_resume_to_identical_files(tmp_path):
    flags = ["--max_documents", "800", "--max_seq_length", "64", "--num_train_shards", "6", "--dup_factor", "3",
             "--num_test_shards", "2", "--frac_test", "0.05", "--num_workers", "1", "--seed", "3"]
    reference = main(["--output_dir", str(tmp_path / "reference"), *flags])["sha256"]
    out = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "prepare_dataset.py"), "--output_dir", str(out), *flags]

    def check_partial():
        assert not (out / "manifest.json").exists()  # only a finished dataset has one
        assert json.loads((out / ".work" / "manifest.json").read_text())["settings"]["seed"] == 3
        for path in out.glob("*.hdf5"):  # whatever carries a final name is whole and final
            assert sha256_file(path) == reference[path.name]
        with pytest.raises(UserError, match="incomplete"):
            read_manifest(out)

    # 1: killed while tokenizing (after the first chunk is stored)
    assert _run_until(command, lambda: any((out / ".work").glob("chunk_*.npz"))), "the run ended before the kill"
    check_partial()
    assert not list(out.glob("*.hdf5"))
    # 2: the rerun resumes and is killed while writing shards
    assert _run_until(command, lambda: len(list(out.glob("train_shard_*.hdf5"))) >= 2), "the run ended before the kill"
    check_partial()
    written = len(list(out.glob("*.hdf5")))
    assert 2 <= written < len(reference)
    # 3: the last rerun (in this process) completes with exactly the files of an uninterrupted run
    assert main(command[2:])["sha256"] == reference
    assert _hashes(out) == reference == read_manifest(out)["sha256"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*reference, "manifest.json", "token_counts.json"])


@pytest.mark.slow
def test_parts_prepared_apart_and_merged_are_the_one_run(tiny_shards, tmp_path, capsys):
    """Three --part runs (as on three machines) and --merge give the bytes and manifest of one whole run."""
    parts = [tmp_path / f"part{k}" for k in range(3)]
    for k in (2, 0, 1):
        manifest = main(["--output_dir", str(parts[k]), *TINY_SHARD_FLAGS, "--part", f"{k}/3"])
        shards = [int(r["name"].split("_")[-1].split(".")[0]) for r in manifest["files"] if r["split"] == "train"]
        assert shards and all(s % 4 % 3 == k for s in shards)  # its own train shards only (4 shards x dup 1)
    whole = read_manifest(tiny_shards)
    with pytest.raises(SystemExit):
        main(["--merge", str(parts[0]), str(parts[2]), "--output_dir", str(tmp_path / "bad")])
    assert "part(s) 1/3 missing" in capsys.readouterr().err
    merged = main(["--merge", *map(str, reversed(parts)), "--output_dir", str(tmp_path / "merged")])
    assert _hashes(tmp_path / "merged") == _hashes(tiny_shards)
    assert (tmp_path / "merged" / "token_counts.json").read_bytes() == (tiny_shards / "token_counts.json").read_bytes()
    assert merged == {**whole, "args": {**whole["args"], "output_dir": str(tmp_path / "merged")}}
    assert main(["--merge", *map(str, parts), "--output_dir", str(tmp_path / "merged")]) == merged  # done: no-op
    # a part of another preparation is refused
    other = tmp_path / "other1"
    main(["--output_dir", str(other), *TINY_SHARD_FLAGS, "--part", "1/3", "--masking", "dynamic"])
    with pytest.raises(SystemExit):
        main(["--merge", str(parts[0]), str(other), str(parts[2]), "--output_dir", str(tmp_path / "bad")])
    assert "different settings (differing: masking)" in capsys.readouterr().err
    # a shard damaged since its part wrote it is refused, and nothing lands under its final name
    damaged = next(parts[1].glob("train_shard_*.hdf5"))
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(SystemExit):
        main(["--merge", *map(str, parts), "--output_dir", str(tmp_path / "again")])
    assert f"{damaged} does not match the sha256" in capsys.readouterr().err
    assert not (tmp_path / "again" / damaged.name).exists() and not (tmp_path / "again" / "manifest.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--input_files", "{tmp}/missing.txt"], "input file .*missing.txt does not exist"),
    (["--input_files", "{tmp}/empty.txt"], "no documents found in .*empty.txt"),
    (["--input_files", "{tmp}/dump.xml.bz2"], "cannot read .*dump.xml.bz2"),
    (["--dataset", "wikipedia-de"], "--dataset 'wikipedia-de' is not one of: wikipedia, wikipedia-offline"),
    (["--tokenizer_name", "{tmp}/no_tokenizer"], "tokenizer .*no_tokenizer.* not found"),
    (["--max_seq_length", "4", "--masked_lm_prob", "2", "--max_predictions_per_seq", "2"],
     "invalid arguments \\(2\\).*max_seq_length must be >= 8.*masked_lm_prob must be in"),
    (["--num_train_shards", "5000", "--max_documents", "50"], "train shards would be empty.*lower --num_train_shards"),
    (["--part", "3/3"], "--part must be K/M with 0 <= K < M"),
    (["--part", "0/9", "--num_train_shards", "4"], "9 parts need at least that many train shards"),
    (["--part", "0/2", "--train_tokenizer", "1000"], "would train a vocabulary per part"),
    (["--merge", "{tmp}/nowhere"], "--merge .*nowhere: no such folder"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, flags, message):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    (tmp_path / "dump.xml.bz2").write_bytes(b"BZh9 but not really bzip2")
    (tmp_path / "no_tokenizer").mkdir()
    argv = ["--output_dir", str(tmp_path / "out"), "--num_workers", "1", *[f.format(tmp=tmp_path) for f in flags]]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / ".work").exists()  # nothing left that would block the corrected command
    assert re.search(message, err[err.index("error: "):], re.S), err  # (progress bars may come first)


@pytest.mark.slow
def test_script_exit_code_and_message_in_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "prepare_dataset.py"), "--output_dir", str(tmp_path),
                             "--input_files", str(tmp_path / "nothing.jsonl")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: input file {tmp_path / 'nothing.jsonl'} does not exist; "
                                                  f"check --input_files"]


def test_flags_parse_with_academic_budget_bert_style_booleans(tmp_path):
    from pretraining.cli import parse_args
    from pretraining.data.prepare_args import PrepareArguments

    (args,) = parse_args([PrepareArguments], ["--output_dir", "out", "--do_lower_case", "--nsp", "--input_files",
                                              "a.txt", "b.jsonl", "--dup_factor", "3"])
    assert args.do_lower_case is True and args.nsp is True and args.input_files == ["a.txt", "b.jsonl"]
    (args,) = parse_args([PrepareArguments], ["--output_dir", "out", "--do_lower_case", "false"])
    assert args.do_lower_case is False and args.dataset is None and args.num_train_shards == 256
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"output_dir": "out", "dataset": "wikipedia", "dataset_config": "20231101.simple"}))
    (args,) = parse_args([PrepareArguments], [str(config)])
    assert (args.dataset, args.dataset_config, args.dup_factor) == (["wikipedia"], "20231101.simple", 10)
