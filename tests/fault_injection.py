"""Run a script with one fault armed, for the reliability tests (tests/train/test_faults.py).

    python -m tests.fault_injection '{"target": "os:replace", "match": "latest", "action": "kill"}' \\
        run_pretraining.py --dataset_path ... --output_dir ...

The JSON object arms one fault:

* ``target``: the function to wrap, ``module:attribute`` or ``module:Class.attribute``
  (wrap the name the caller looks up: ``os:replace`` is seen by every module);
* ``match``: only calls whose arguments' ``repr`` contains this text count (default: all);
* ``nth``: the matching call that triggers (1-based, default 1);
* ``action``: ``kill`` (SIGKILL this process just before that call), ``kill_after``
  (SIGKILL just after it returns), or ``fsize:BYTES`` (from that call on, the kernel
  refuses to grow any file past BYTES: writes fail with EFBIG as on a full disk; the
  code under test sees the real error of its real writer: Python, numpy, torch).

Nothing here is imported by the project: the faults are injected from outside.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import resource
import runpy
import signal
import sys


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _limit_file_size(size: int) -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of killing the process.
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def arm(target: str, action: str, match: str = "", nth: int = 1) -> None:
    """Wrap ``target`` so that its ``nth`` call matching ``match`` triggers ``action``."""
    module_name, _, attribute = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    seen = [0]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        triggered = False
        if match in repr(args) + repr(kwargs):
            seen[0] += 1
            triggered = seen[0] == nth
        if triggered and action == "kill":
            _kill()
        if triggered and action.startswith("fsize:"):
            _limit_file_size(int(action.split(":", 1)[1]))
        result = original(*args, **kwargs)
        if triggered and action == "kill_after":
            _kill()
        return result

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> None:
    """``argv``: the fault's JSON, the script, then the script's arguments."""
    fault, script, *args = argv
    arm(**json.loads(fault))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
