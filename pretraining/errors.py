"""User-facing errors: one clear message, no traceback from deep inside."""

from __future__ import annotations

import errno
import functools
import signal
import sys


class UserError(Exception):
    """A problem the user can fix (bad flag, missing path, corrupt input).

    Scripts catch it at the top (see :func:`run_main`), print ``error: <message>``
    to stderr and exit with code 2. The message names the problem and the fix.
    """


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (so both stop a script the same way)."""

    signum = signal.SIGTERM


def _terminate(signum, frame):
    raise Interrupted()


def os_error_message(exc: OSError) -> str:
    """An OSError as one line naming the path, the cause and the usual fix."""
    path = exc.filename if exc.filename is not None else "a path"
    fixes = {errno.EACCES: "check its permissions, or pick a folder you can write", errno.EPERM:
             "check its permissions, or pick a folder you can write", errno.ENOSPC: "free disk space",
             errno.EROFS: "pick a writable file system", errno.EISDIR: "it is a folder: give a file path",
             errno.ENOTDIR: "a part of the path is a file, not a folder: pick another path",
             errno.EEXIST: "it exists already: pick another path", errno.ENOENT: "check the path"}
    fix = fixes.get(exc.errno, "check the path and try again")
    return f"{path}: {exc.strerror or type(exc).__name__}; {fix}"


def run_main(main=None, *, interrupted: str = "nothing was left half-written"):
    """Decorate a script's ``main(argv=None)`` so that it ends with one message and an exit code, never a traceback:

    * a UserError: ``error: <message>`` on stderr, exit 2;
    * an OSError that escaped (a path that is a file, a folder not writable, ...): ``error:`` naming the path, the
      cause and the fix, exit 2;
    * Ctrl-C (SIGINT) or SIGTERM: ``interrupted (SIGINT): <interrupted>``, exit 130 / 143; SIGTERM is turned into
      the same interrupt while ``main`` runs (main thread only). ``interrupted`` says what is safe (e.g. prepare's
      shards are atomic: "rerun the same command to resume").

    Inside tests call ``main.__wrapped__`` (or catch ``SystemExit``) as you prefer.
    """
    if main is None:
        return functools.partial(run_main, interrupted=interrupted)

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            previous = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:  # not the main thread
            previous = None
        try:
            return main(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except OSError as exc:
            print(f"error: {os_error_message(exc)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            print(f"\ninterrupted ({signal.Signals(signum).name}): {interrupted}", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
