"""Training checkpoints: atomic save, verified resume, ``latest``, keep the last good ones.

A checkpoint is a folder ``checkpoints/<id>/`` holding

* ``engine/``: the engine's own state (model, optimizer, loss scaler; DeepSpeed's
  checkpoint files under ``--deepspeed``),
* ``rng_rank<R>.pt``: each rank's random-number-generator states,
* ``state.json``: the loop's state (step, epoch, data position, elapsed training time,
  token counts, scheduler state, W&B run id, ...),
* ``checksums.json``: sha256 of every other file, checked before a resume.

It is written under ``checkpoints/.tmp-<id>/`` and renamed into place only when
complete, then ``checkpoints/latest`` (a text file naming the id) is replaced
atomically. A crash mid-save leaves the previous checkpoints and ``latest`` intact;
older checkpoints are pruned only after a new one is in place. A failed write (disk
full) deletes the partial folder and is a UserError (:mod:`pretraining.atomic`).

Resuming "the latest" checkpoint (no id, or ``latest``) falls back to the newest earlier
one that verifies when the latest is corrupt or incomplete (:func:`resume_candidates`);
an explicitly named checkpoint that is corrupt is an error.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pretraining.atomic import sha256_file, swap_folder, write_guard, write_text_atomic
from pretraining.errors import UserError

STATE = "state.json"
CHECKSUMS = "checksums.json"
LATEST = "latest"
TMP_PREFIX = ".tmp-"


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch, and its own CUDA device's) in a weights_only-loadable form.

    Only the current device's CUDA generator: a rank trains on one GPU, and a resume may see fewer GPUs per
    process than the run that saved (``get_rng_state_all`` would then fail to restore)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device (setup_distributed set it per rank)
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints before 2026-12 saved every visible GPU's state
            device = torch.cuda.current_device()
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


class CorruptCheckpoint(UserError):
    """A checkpoint whose files are missing or do not match their checksums."""


def _step(folder: Path) -> int:
    try:
        return int(json.loads((folder / STATE).read_text()).get("step", 0))
    except (OSError, ValueError, AttributeError):  # damaged state.json: sorted first, refused by verify
        return -1


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (by the step they were taken at)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: (_step(p), p.name))


def save_checkpoint(root: Path, ckpt_id: str, *, engine, state: dict, dist_info, keep: int) -> Path:
    """Write checkpoint ``ckpt_id`` under ``root`` atomically (every rank calls this); returns its folder."""
    root = Path(root)
    tmp, final = root / f"{TMP_PREFIX}{ckpt_id}", root / ckpt_id
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist_info.barrier()
    with write_guard(final, tmp):
        engine.save(tmp / "engine", dist_info.is_main)
        torch.save(rng_state(), tmp / f"rng_rank{dist_info.rank}.pt")
    dist_info.barrier()
    if dist_info.is_main:
        with write_guard(final, tmp):
            (tmp / STATE).write_text(json.dumps(state, indent=1))
            sums = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
        swap_folder(tmp, final, root / f"{TMP_PREFIX}old-{ckpt_id}")
        write_text_atomic(root / LATEST, ckpt_id)
        for stale in list_checkpoints(root)[:-keep]:
            if stale != final:
                shutil.rmtree(stale)
    dist_info.barrier()
    return final


def resolve_checkpoint(path: str | Path, ckpt_id: str | None = None) -> Path:
    """The checkpoint folder meant by ``--load_training_checkpoint PATH --load_checkpoint_id ID``.

    PATH may be a run folder (with ``checkpoints/``), a checkpoints folder, or one
    checkpoint; ID may be a checkpoint name, ``latest`` or None (= latest).
    """
    path = Path(path)
    if (path / STATE).is_file() and ckpt_id in (None, "latest", path.name):
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not root.is_dir():
        raise UserError(f"--load_training_checkpoint {path} does not exist: give the run folder "
                        "(OUTPUT_DIR/JOB_NAME) or its checkpoints/ folder")
    available = [p.name for p in list_checkpoints(root)]
    if ckpt_id in (None, "latest"):  # what ``latest`` names, else (killed while replacing it) the newest one
        latest = root / LATEST
        named = latest.read_text().strip() if latest.is_file() else None
        ckpt_id = named if named in available else (available[-1] if available else None)
    if ckpt_id is None or ckpt_id not in available:
        listing = ", ".join(available) or "none"
        raise UserError(f"checkpoint {ckpt_id!r} not found in {root} (available: {listing}); "
                        "pass one of them with --load_checkpoint_id, or latest")
    return root / ckpt_id


def resume_candidates(path: str | Path, ckpt_id: str | None = None) -> list[Path]:
    """The checkpoints a resume may use, in order of preference.

    The one :func:`resolve_checkpoint` picks; when it was picked as the latest (no id or
    ``latest``, PATH not itself a checkpoint), then every earlier one, newest first.
    """
    chosen = resolve_checkpoint(path, ckpt_id)
    if ckpt_id not in (None, "latest") or chosen == Path(path):
        return [chosen]
    ordered = list_checkpoints(chosen.parent)
    earlier = ordered[:ordered.index(chosen)] if chosen in ordered else []
    return [chosen, *reversed(earlier)]


def verify_checkpoint(folder: Path) -> None:
    """Raise CorruptCheckpoint when a file of the checkpoint is missing or does not match its checksum."""
    sums_file = folder / CHECKSUMS
    try:
        sums = json.loads(sums_file.read_text())
    except (OSError, ValueError):
        raise CorruptCheckpoint(f"checkpoint {folder} is incomplete ({CHECKSUMS} missing or unreadable): resume "
                                "from an earlier one") from None
    for name, expected in sums.items():
        file = folder / name
        if not file.is_file() or sha256_file(file) != expected:
            others = [p.name for p in list_checkpoints(folder.parent) if p != folder]
            raise CorruptCheckpoint(f"checkpoint {folder} is corrupt ({name} is missing or does not match its checksum); "
                                    f"resume from an earlier one with --load_checkpoint_id (available: {', '.join(others) or 'none'})")


def unsafe_pickle_detail(exc: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` refused (the global it met), from its long message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "not weights-only")


def load_checkpoint(folder: Path, *, engine, dist_info, expect: dict | None = None) -> dict:
    """Verify and restore a checkpoint into ``engine`` and this rank's RNGs; returns the loop state.

    ``expect``: settings that must equal the checkpoint's ``state["compatibility"]``
    (model shape, optimizer, engine...); a mismatch is a UserError naming each.
    """
    verify_checkpoint(folder)
    state = json.loads((folder / STATE).read_text())
    saved = state.get("compatibility", {})
    differ = [f"{key}: checkpoint {saved[key]!r}, this run {value!r}" for key, value in (expect or {}).items()
              if key in saved and saved[key] != value]
    if differ:
        raise UserError(f"checkpoint {folder} does not fit this run ({'; '.join(differ)}): resume with the "
                        "checkpoint's settings")
    if engine.sharded and state.get("world_size", dist_info.world_size) != dist_info.world_size:
        raise UserError(f"checkpoint {folder} was written by {state['world_size']} ranks with ZeRO-sharded "
                        f"optimizer state, this run has {dist_info.world_size}: resume with the same number of processes")
    rng_file = folder / f"rng_rank{dist_info.rank}.pt"
    try:
        engine.load(folder / "engine")
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
    except pickle.UnpicklingError as exc:  # weights_only refuses pickled code and arbitrary objects
        raise UserError(f"checkpoint {folder} was refused: it holds pickled objects or code, not only tensors and "
                        f"plain values ({unsafe_pickle_detail(exc)}); load only checkpoints written by "
                        "run_pretraining.py from a source you trust") from None
    return state
