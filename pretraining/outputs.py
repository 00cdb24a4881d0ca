"""The one guard of output folders: every script checks where it will write before it writes anything.

An output folder is refused when it

* is a file (or a path through a file),
* is an input of the same command, lies inside one, or holds one (an ``--overwrite`` there would delete the input;
  a dataset written into its own corpus folder reads its manifest as a corpus file on the next run),
* is not empty, where the script replaces a folder whole (``empty=True``), unless the user passed the overwrite flag,
* cannot be written (the nearest existing folder above it is not writable).

Nothing is created by the check: a refused command leaves no empty folder behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from pretraining.errors import UserError


def check_output_folder(out: str | Path, *, flag: str, inputs: Iterable[str | Path] = (), empty: bool = False,
                        overwrite_flag: str | None = None) -> Path:
    """``out`` as a Path once it passes every rule above; else one UserError naming the rule and the fix."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a folder: give a folder path (it is created if missing)")
    resolved = out.resolve()
    for source in inputs:
        src = Path(source).expanduser().resolve()
        if resolved == src or src in resolved.parents:
            where = "is" if resolved == src else "is inside"
            raise UserError(f"{flag} {out} {where} the input {source}: writing there could overwrite or mix with the "
                            "input; pick a folder outside it")
        if resolved in src.parents:
            raise UserError(f"{flag} {out} holds the input {source}: writing (or --overwrite) there could delete or "
                            "mix with it; pick another folder, or move the input out of it")
    if empty and out.is_dir() and any(out.iterdir()):
        hint = f", or pass {overwrite_flag} to replace it" if overwrite_flag else ""
        raise UserError(f"{flag} {out} is not empty: pick a new folder{hint}")
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {out}: {existing} is a file, not a folder: pick another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: {existing} is not writable (permission denied): pick a folder you can write "
                        "or fix its permissions")
    return out


def check_output_file(path: str | Path, *, flag: str) -> Path:
    """A file to write: refused when it is a folder or its folder cannot be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file path (e.g. {path / 'report.md'})")
    check_output_folder(path.parent if str(path.parent) else Path("."), flag=flag)
    return path
