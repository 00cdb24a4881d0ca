"""Atomic outputs: a file or folder carries its final name only once it is complete.

Every writer of lasting output (shards, manifests, tokenized chunks, checkpoints,
exports) builds it under a hidden temporary name beside the final one and renames it
into place (``os.replace``, atomic on POSIX file systems). So a crash at any moment
(SIGKILL, power loss) never leaves a partial file under a final name; the next run
deletes the stale temporaries and redoes that one output.

When writing fails (disk full, quota, file-size limit, I/O error, a read-only folder)
the partial temporary is deleted, the outputs written before stay untouched, and the
failure becomes a :class:`WriteFailed` (a UserError) naming the output, the cause and
the fix, instead of a traceback from deep inside h5py or torch. torch's own file
writer reports such failures as a RuntimeError without an errno (from its
``inline_container``), which counts as a write failure as well; other RuntimeErrors
(e.g. a collective failing during a DeepSpeed save) pass through unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from pretraining.errors import UserError

#: how torch's zip writer words a failed write (a RuntimeError without errno)
TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed")


class WriteFailed(UserError):
    """Writing an output failed (disk full, ...); nothing was left under its final name."""


def temporary_path(path: Path) -> Path:
    """The hidden name ``path`` is written under before the atomic rename (``.NAME.PID.tmp``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove(path: Path) -> None:
    """Delete a file or folder if it exists (a partial output)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def is_write_failure(exc: BaseException) -> bool:
    """True for what a failed write raises: an OSError (Python, h5py, numpy), or torch's writer's RuntimeError."""
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and
                                        any(words in str(exc) for words in TORCH_WRITE_FAILURES))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    lines = str(exc).strip().splitlines()
    return f"the write failed ({lines[0] if lines else type(exc).__name__})"


@contextmanager
def write_guard(final: Path, tmp: Path) -> Iterator[None]:
    """Run the code that writes ``tmp`` (to become ``final``); if it raises, delete ``tmp``.

    A write failure (:func:`is_write_failure`) becomes a WriteFailed naming ``final``;
    other exceptions pass through unchanged.
    """
    try:
        yield
    except Exception as exc:
        remove(tmp)
        if not is_write_failure(exc):
            raise
        final = Path(final)
        raise WriteFailed(
            f"could not write {final}: {_reason(exc)}. Nothing was left under that name and the files written "
            f"before are intact; free disk space in {final.parent} (or fix its quota, file-size limit or "
            "permissions), then run again: it continues from what was written") from None


@contextmanager
def atomic_file(path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file to write ``path``; when the block ends it is flushed, fsynced and renamed into place.

    On a write failure the temporary is deleted and WriteFailed raised (see :func:`write_guard`).
    """
    path = Path(path)
    tmp = temporary_path(path)
    with write_guard(path, tmp):
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path, data: dict, indent: int = 2) -> None:
    """Write ``data`` as JSON (sorted keys) to ``path`` atomically: a crash never leaves a half-written file."""
    write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=True) + "\n")


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def swap_folder(tmp: Path, final: Path, old: Path) -> None:
    """Put the complete folder ``tmp`` under the name ``final``; a previous ``final`` moves to ``old``, then goes.

    At every moment ``final`` is either the previous complete folder or the new one (``old`` holds the
    previous one during the swap, so a crash there leaves it recoverable, never a half-written ``final``).
    """
    final, old = Path(final), Path(old)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
