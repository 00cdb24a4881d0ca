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
    """SIGTERM (or a deferred SIGINT), raised where Ctrl-C raises KeyboardInterrupt: both stop a script alike."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


def _terminate(signum, frame):
    raise Interrupted(signum)


class DeferredInterrupts:
    """While active, SIGINT and SIGTERM are noted instead of raised, and :func:`raise_if_interrupted` raises them at
    the next safe point (between units of work). Raised from inside native code (a tokenizer calling back into
    Python), a KeyboardInterrupt aborts the process (SIGABRT, no message); a noted one cannot. A second signal raises
    at once. The signal state is the process's own, so the active instance is kept in :data:`_ACTIVE`."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "DeferredInterrupts":
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._note)
        except ValueError:  # not the main thread
            return self
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def _note(self, signum, frame) -> None:
        if self.received is not None:
            raise Interrupted(signum)
        self.received = signum

    def raise_if_received(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)


_ACTIVE: list[DeferredInterrupts] = []


def raise_if_interrupted() -> None:
    """At a safe point: raise the SIGINT/SIGTERM a :class:`DeferredInterrupts` noted (a no-op outside one)."""
    for deferred in _ACTIVE:
        deferred.raise_if_received()


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


def run_main(main=None, *, interrupted: str = "nothing was left half-written", defer_interrupts: bool = False):
    """Decorate a script's ``main(argv=None)`` so that it ends with one message and an exit code, never a traceback:

    * a UserError: ``error: <message>`` on stderr, exit 2;
    * an OSError that escaped (a path that is a file, a folder not writable, ...): ``error:`` naming the path, the
      cause and the fix, exit 2;
    * Ctrl-C (SIGINT) or SIGTERM: ``interrupted (SIGINT): <interrupted>``, exit 130 / 143; SIGTERM is turned into
      the same interrupt while ``main`` runs (main thread only). ``interrupted`` says what is safe (e.g. prepare's
      shards are atomic: "rerun the same command to resume"). With ``defer_interrupts`` the signals are acted on
      at the script's safe points only (:class:`DeferredInterrupts`).

    Inside tests call ``main.__wrapped__`` (or catch ``SystemExit``) as you prefer.
    """
    if main is None:
        return functools.partial(run_main, interrupted=interrupted, defer_interrupts=defer_interrupts)

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            previous = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:  # not the main thread
            previous = None
        try:
            if defer_interrupts:
                with DeferredInterrupts() as deferred:
                    result = main(argv)
                    deferred.raise_if_received()  # noted after the last safe point: still a stop the user asked for
                    return result
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
