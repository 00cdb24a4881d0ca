"""HDF5 shards (academic-budget-bert's / NVIDIA's schema) and the dataset manifest.

| key | dtype | shape |
|---|---|---|
| input_ids | int32 | [N, max_seq_length], 0-padded |
| input_mask | int8 | [N, max_seq_length] |
| segment_ids | int8 | [N, max_seq_length] |
| masked_lm_positions | int32 | [N, max_predictions_per_seq], sorted, 0 = unused |
| masked_lm_ids | int32 | [N, max_predictions_per_seq] |
| next_sentence_labels | int8 | [N] (only when NSP samples were made) |

The masked-LM keys are absent in dynamically masked shards. Files are written under
a hidden temporary name and renamed when complete, so a name matching
``*_shard_*.hdf5`` is always a whole shard; bytes are reproducible (no timestamps).
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from pretraining.atomic import write_bytes_atomic
from pretraining.errors import UserError

MANIFEST = "manifest.json"
WORK_DIR = ".work"  # an unfinished preparation's scratch folder (holds its pending manifest)
SPLITS = ("train", "test")
SCHEMA = {  # key -> (dtype, rank, second dimension: "seq" | "pred" | None)
    "input_ids": (np.int32, 2, "seq"),
    "input_mask": (np.int8, 2, "seq"),
    "segment_ids": (np.int8, 2, "seq"),
    "masked_lm_positions": (np.int32, 2, "pred"),
    "masked_lm_ids": (np.int32, 2, "pred"),
    "next_sentence_labels": (np.int8, 1, None),
}
REQUIRED = ("input_ids", "input_mask", "segment_ids")
MASKED_LM = ("masked_lm_positions", "masked_lm_ids")
_COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}


def shard_name(split: str, index: int) -> str:
    """``train_shard_00003.hdf5`` style file name."""
    return f"{split}_shard_{index:05d}.hdf5"


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_shards(dataset_path, split: str = "train") -> list[Path]:
    """The shard files of ``split`` in ``dataset_path``, sorted (numbers in natural order).

    Accepts this tool's ``train_shard_00000.hdf5`` names and academic-budget-bert's
    (any ``*.hdf5`` whose name contains the split name). Hidden files (temporary
    partial shards) are ignored.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    folder = Path(dataset_path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--dataset_path {folder} is a file, not a dataset folder: give the folder prepare_dataset.py "
                        "wrote (it holds train_shard_*.hdf5 and manifest.json)")
    if not folder.is_dir():
        raise UserError(f"dataset folder {folder} does not exist; create it with prepare_dataset.py or fix --dataset_path")
    shards = [p for p in folder.iterdir()
              if p.suffix == ".hdf5" and split in p.name and not p.name.startswith(".") and p.is_file()]
    if not shards:
        raise UserError(f"no {split} shards (*{split}*.hdf5) in {folder}; prepare them with prepare_dataset.py")
    return sorted(shards, key=_natural_key)


def _check_shapes(path: Path, arrays: dict) -> None:
    problems = [f"missing key {k!r}" for k in REQUIRED if k not in arrays]
    if sum(k in arrays for k in MASKED_LM) == 1:
        problems.append("masked_lm_positions and masked_lm_ids must both be present or both absent")
    if problems:
        raise UserError(f"{path} is not a pretraining shard: {'; '.join(problems)}")
    n, seq = arrays["input_ids"].shape if arrays["input_ids"].ndim == 2 else (None, None)
    pred = arrays["masked_lm_positions"].shape[-1] if "masked_lm_positions" in arrays else None
    width = {"seq": seq, "pred": pred}
    for key, array in arrays.items():
        dtype, rank, second = SCHEMA[key]
        expected = (n,) if rank == 1 else (n, width[second])
        if array.ndim != rank or array.shape[0] != n or (rank == 2 and array.shape[1] != expected[1]):
            problems.append(f"{key} has shape {array.shape}, expected {tuple('N' if d is None else d for d in expected)}")
        if not np.issubdtype(array.dtype, np.integer):
            problems.append(f"{key} has dtype {array.dtype}, expected {np.dtype(dtype).name}")
    if problems:
        raise UserError(f"{path} has a wrong schema: {'; '.join(problems)}")


@contextmanager
def _open_shard(path: Path) -> Iterator[dict]:
    """The shard's datasets by key; an unreadable file or a failed read inside the block is a UserError."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            unknown = sorted(set(f.keys()) - set(SCHEMA))
            if unknown:
                raise UserError(f"{path} has unexpected keys {unknown}; expected a subset of {list(SCHEMA)}")
            yield {key: f[key] for key in SCHEMA if key in f}
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read shard {path}: {exc} (truncated or corrupt file? rerun prepare_dataset.py)") from None


def check_shard(path) -> dict[str, int]:
    """Validate a shard's schema from its metadata alone (no data is read): ``{"samples": N, "seq_length": L}``.

    Fast enough to check every shard before training starts; a missing, truncated,
    unreadable or wrong-schema file raises a UserError naming the file.
    """
    path = Path(path)
    with _open_shard(path) as datasets:
        _check_shapes(path, datasets)
        rows, length = datasets["input_ids"].shape
    return {"samples": int(rows), "seq_length": int(length)}


def read_shard(path, vocab_size: Optional[int] = None) -> dict[str, np.ndarray]:
    """Load a whole shard into memory, validated, with the schema dtypes (SCHEMA, the README's shard table).

    Integer arrays of another width (some older shards) are converted. A missing,
    truncated, corrupt or wrong-schema file raises a UserError naming the file, and so
    does (given ``vocab_size``) a token id the model's embedding does not have.
    """
    path = Path(path)
    with _open_shard(path) as datasets:
        arrays = {key: dataset[()] for key, dataset in datasets.items()}
    _check_shapes(path, arrays)
    if vocab_size is not None:
        ids = [arrays[key] for key in ("input_ids", "masked_lm_ids") if key in arrays and arrays[key].size]
        highest = max((int(a.max()) for a in ids), default=0)
        if highest >= vocab_size:
            raise UserError(f"{path} holds token id {highest}, outside the model's vocabulary of {vocab_size}: the "
                            "shards were made with a larger tokenizer; prepare them with the model's tokenizer, or "
                            f"set --vocab_size {highest + 1} or more (with that tokenizer as --tokenizer_name)")
    return {key: array.astype(SCHEMA[key][0], copy=False) for key, array in arrays.items()}


def shard_image(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an HDF5 shard holding ``arrays`` (schema keys), built in memory.

    The same bytes h5py writes to a file; building them in memory keeps h5py away from
    the disk, so a failing write (disk full) is a plain OSError, not HDF5 errors at exit.
    """
    import h5py

    with h5py.File("shard", "w", driver="core", backing_store=False, libver="earliest", track_order=False) as f:
        for key in SCHEMA:
            if key in arrays:
                data = np.ascontiguousarray(arrays[key], dtype=SCHEMA[key][0])
                options = _COMPRESSION if data.size else {}
                f.create_dataset(key, data=data, track_times=False, **options)
        f.flush()
        return f.id.get_file_image()


def write_shard(path, arrays: dict[str, np.ndarray]) -> str:
    """Write ``arrays`` (schema keys) as an HDF5 shard, atomically (:mod:`pretraining.atomic`); returns its sha256."""
    path = Path(path)
    _check_shapes(path, arrays)
    image = shard_image(arrays)
    write_bytes_atomic(path, image)
    return hashlib.sha256(image).hexdigest()


def load_manifest_file(path) -> Optional[dict]:
    """A manifest JSON file as written, or None when absent."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); delete it or rerun prepare_dataset.py with --overwrite") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a manifest (expected a JSON object)")
    return data


def differing_settings(old: dict, new: dict, ignore=()) -> list[str]:
    """The keys (sorted) whose values differ between two manifests' ``settings``, ``ignore`` left out."""
    return sorted(k for k in (set(old) | set(new)) - set(ignore) if old.get(k) != new.get(k))


def read_manifest(dataset_path) -> Optional[dict]:
    """The manifest of a finished dataset, or None for shards without one (academic-budget-bert's).

    prepare_dataset.py writes ``manifest.json`` only once every shard is complete;
    a folder whose preparation was interrupted raises a UserError.
    """
    folder = Path(dataset_path).expanduser()
    manifest = load_manifest_file(folder / MANIFEST)
    if manifest is None and (folder / WORK_DIR).is_dir():
        raise UserError(
            f"the dataset in {folder} is incomplete (prepare_dataset.py was interrupted); "
            f"rerun the same prepare_dataset.py command to finish it"
        )
    return manifest
