"""User-facing errors: one clear message, no traceback from deep inside."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad flag, missing path, corrupt input).

    Scripts catch it at the top (see :func:`run_main`), print ``error: <message>``
    to stderr and exit with code 2. The message names the problem and the fix.
    """


def run_main(main):
    """Decorate a script's ``main(argv=None)`` so UserErrors exit cleanly.

    Inside tests call ``main.__wrapped__`` (or catch ``SystemExit``) as you prefer:
    the wrapper raises ``SystemExit(2)`` after printing the message.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper
