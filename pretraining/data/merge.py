"""Join the folders of ``prepare_dataset.py --part K/M`` runs into one dataset (``--merge``).

Each part wrote the shards whose index modulo M is K, with its own manifest and token counts; the
shards' bytes depend only on the seed and their own documents, so the joined folder is what one
run without ``--part`` writes. The merge checks that the parts are the M parts of one preparation
(same settings, same tokenizer, each part once), links (or, across file systems, copies) every
shard into ``--output_dir`` under a temporary name, checks its sha256 against the part's manifest
and renames it into place, then writes the summed token counts and, last, one manifest.json. A
merge that was stopped resumes: shards already in place with the right hash are kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from pretraining.atomic import remove, sha256_file, temporary_path, write_json_atomic
from pretraining.data.chunkstore import SPLIT_CODES
from pretraining.data.prepare_args import log, parse_part
from pretraining.data.shards import MANIFEST, SPLITS, differing_settings, load_manifest_file, read_manifest
from pretraining.data.unigram import COUNTS_FILE, read_counts, write_counts
from pretraining.errors import UserError

#: settings that may differ between the parts: the part itself; the corpus files' paths (other machines may
#: mount them elsewhere; their sizes must agree)
PART_SETTINGS = ("part", "input_files")


def _read_parts(folders: Sequence[str]) -> list[tuple[tuple[int, int], Path, dict]]:
    parts = []
    for name in folders:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise UserError(f"--merge {name}: no such folder")
        manifest = read_manifest(folder)  # a UserError for an unfinished preparation
        if manifest is None:
            raise UserError(f"--merge {name}: no manifest.json there, so not a finished prepare_dataset.py --part run; "
                            "run (or resume) that part first")
        part = parse_part(manifest.get("settings", {}).get("part") or "")
        if part is None:
            raise UserError(f"--merge {name}: that dataset was prepared whole (no --part K/M); only the folders of "
                            "--part runs are merged")
        parts.append((part, folder, manifest))
    counts = {m for (_, m), _, _ in parts}
    if len(counts) > 1:
        raise UserError(f"--merge: the folders are parts of different splits ({', '.join(f'{k}/{m}' for (k, m), _, _ in parts)}); "
                        "give the M folders of one --part K/M preparation")
    total = counts.pop()
    given: dict[int, Path] = {}
    for (k, _), folder, _ in parts:
        if k in given:
            raise UserError(f"--merge: part {k}/{total} is given twice ({given[k]} and {folder})")
        given[k] = folder
    missing = [f"{k}/{total}" for k in range(total) if k not in given]
    if missing:
        raise UserError(f"--merge: part(s) {', '.join(missing)} missing: give the folder of every part")
    return sorted(parts, key=lambda p: p[0][0])


def _check_same_preparation(parts) -> None:
    (_, first, reference) = parts[0]
    ref = reference["settings"]
    for _, folder, manifest in parts[1:]:
        settings = manifest["settings"]
        differ = differing_settings(ref, settings, PART_SETTINGS)
        sizes = [[f.get("bytes") for f in s.get("input_files") or []] for s in (ref, settings)]
        if sizes[0] != sizes[1]:
            differ.append("input_files (their sizes)")
        if differ:
            raise UserError(f"--merge: {folder} and {first} were prepared with different settings "
                            f"(differing: {', '.join(differ)}); prepare every part with the same flags but --part")


def _place(source: Path, target: Path, sha256: str) -> None:
    """Link (or copy) ``source`` to ``target`` under a temporary name, check its hash, rename it into place."""
    if target.is_file() and sha256_file(target) == sha256:
        return  # placed by an earlier, stopped merge
    tmp = temporary_path(target)
    remove(tmp)
    try:
        os.link(source, tmp)
    except OSError:  # another file system (or no hard links): copy
        shutil.copyfile(source, tmp)
    if sha256_file(tmp) != sha256:
        remove(tmp)
        raise UserError(f"{source} does not match the sha256 in its part's manifest (damaged since it was written): "
                        "prepare that part again (delete its folder, rerun its --part command)")
    os.replace(tmp, target)


def merge_parts(folders: Sequence[str], output_dir) -> dict:
    """Join the ``--part`` runs in ``folders`` into ``output_dir``; returns the joined manifest."""
    if output_dir is None:
        raise UserError("--merge needs --output_dir: the folder of the joined dataset")
    out = Path(output_dir).expanduser()
    parts = _read_parts(folders)
    _check_same_preparation(parts)
    if any(out.resolve() == folder.resolve() for _, folder, _ in parts):
        raise UserError(f"--output_dir {out} is one of the parts: merge into a new folder")
    hashes = {r["name"]: r["sha256"] for _, _, m in parts for r in m["files"]}
    done = load_manifest_file(out / MANIFEST)
    if done is not None:
        if done.get("sha256") == hashes and all((out / name).is_file() for name in hashes):
            log(f"{out} already holds these parts merged (manifest.json complete); nothing to do")
            return done
        raise UserError(f"{out} already holds another dataset (its manifest.json): merge into an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # half-placed shards of a stopped merge
        stale.unlink()

    records, token_counts = [], None
    for _, folder, manifest in parts:
        for record in manifest["files"]:
            _place(folder / record["name"], out / record["name"], record["sha256"])
            records.append(record)
        counts = read_counts(folder)
        if counts is not None:
            token_counts = counts if token_counts is None else token_counts + counts
    records.sort(key=lambda r: (SPLIT_CODES[r["split"]], r["name"]))

    merged = dict(parts[0][2])
    merged["settings"] = {**merged["settings"], "part": None}
    merged["args"] = {**merged["args"], "part": None, "output_dir": str(out)}
    merged["counts"] = {split: {key: sum(m["counts"].get(split, {}).get(key, 0) for _, _, m in parts)
                                for key in ("documents", "tokens", "samples")} for split in SPLITS}
    merged.update(files=records, sha256=hashes,
                  train_files=[r["name"] for r in records if r["split"] == "train"],
                  test_files=[r["name"] for r in records if r["split"] == "test"])
    if token_counts is not None:
        write_counts(out, np.asarray(token_counts), source="train documents")
        merged["token_counts"] = COUNTS_FILE
    write_json_atomic(out / MANIFEST, merged)
    log(f"merged {len(parts)} parts: {len(records)} shards ({merged['counts']['train']['samples']} train / "
        f"{merged['counts']['test']['samples']} test samples) in {out}")
    return merged
