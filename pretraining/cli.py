"""Argument parsing shared by every script.

Each script describes its flags as dataclasses (one per argument group, each field
with ``metadata={"help": ...}``) and parses them with :func:`parse_args`, which uses
``transformers.HfArgumentParser``. A single ``.json`` argument is read as a file of
arguments. Validation collects every problem first and raises one
:class:`~pretraining.errors.UserError` naming each (:class:`ArgumentChecker`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from pretraining.errors import UserError


class ArgumentChecker:
    """Collect argument errors, then raise them all at once.

    >>> check = ArgumentChecker()
    >>> check.require(lr > 0, "--lr must be > 0 (got -1)")
    >>> check.raise_if_any()
    """

    def __init__(self) -> None:
        self.errors: list[str] = []

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.errors.append(message)

    def add(self, problem: str | None) -> None:
        """Add one problem (None: no problem), as the rule's owner reported it."""
        if problem:
            self.errors.append(problem)

    def extend(self, problems: Iterable[str]) -> None:
        """Add problems found by a rule's owner (e.g. :func:`pretraining.model.modeling.config_problems`)."""
        self.errors.extend(problems)

    def choice(self, flag: str, value: Any, valid: Iterable[Any]) -> None:
        valid = list(valid)
        if value not in valid:
            self.errors.append(f"{flag} {value!r} is not one of: {', '.join(map(str, valid))}")

    def raise_if_any(self) -> None:
        if self.errors:
            lines = "\n".join(f"  - {e}" for e in self.errors)
            raise UserError(f"invalid arguments ({len(self.errors)}):\n{lines}")


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None):
    """Parse ``argv`` (default ``sys.argv[1:]``) into instances of ``dataclass_types``.

    ``script.py args.json`` reads the flags from a JSON object instead. Unknown flags
    are an error that names them. Returns a tuple, one instance per type.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    for action in parser._actions:  # argparse formats help with %: a literal "0.1%" would break --help
        if action.help and "%" in action.help:
            action.help = action.help.replace("%", "%%")
    argv, launcher_rank = _launcher_local_rank(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        path = Path(argv[0])
        if not path.is_file():
            raise UserError(f"argument file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"argument file {path} is not valid JSON: {exc}") from None
        if launcher_rank is not None:
            data = {**data, "local_rank": launcher_rank}
        return parser.parse_dict(data, allow_extra_keys=False)
    if launcher_rank is not None:
        argv = [f"--local_rank={launcher_rank}", *argv]
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as exc:  # HfArgumentParser reports leftover flags this way
        raise UserError(str(exc)) from None


def _launcher_local_rank(argv: list[str]) -> tuple[list[str], int | None]:
    """``argv`` without the ``--local_rank=N`` the deepspeed launcher puts first, and N (None when absent).

    ``deepspeed run_pretraining.py args.json`` runs ``run_pretraining.py --local_rank=0 args.json``: without this,
    the JSON file would not be the single argument and parsing would fail."""
    if argv and argv[0].startswith("--local_rank="):
        value = argv[0].split("=", 1)[1]
        if value.lstrip("-").isdigit():
            return argv[1:], int(value)
    return argv, None


def asdict(*instances) -> dict:
    """Merge argument dataclasses into one JSON-serialisable dict (for args.json)."""
    merged: dict = {}
    for inst in instances:
        for key, value in dataclasses.asdict(inst).items():
            merged[key] = value if isinstance(value, (int, float, str, bool, list, dict, type(None))) else str(value)
    return merged
