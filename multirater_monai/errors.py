"""Errors a user can act on, and how a bundle run shows them: the message, without a deep traceback.

A :class:`UserError` says what is wrong and where (the file, the option, the epoch and iteration), so its
message is all a user needs. MONAI's config parser wraps exceptions raised while building components
(``RuntimeError: Failed to instantiate component ...``), which buries that message under a long trace.
:func:`install_concise_errors` (the first ``initialize`` expression of every bundle config) installs an
exception hook that prints only the :class:`UserError` found in the exception chain, as
``ERROR: <message>``; any other exception keeps its full traceback, and ``MULTIRATER_TRACEBACK=1`` shows
the full traceback of every error. The exit status is 1 either way.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["UserError", "install_concise_errors", "find_user_error"]


class UserError(Exception):
    """An error whose message says what the user must change (a file, an option, the data)."""


def find_user_error(error: BaseException | None) -> UserError | None:
    """The first :class:`UserError` in ``error``'s chain of causes and contexts, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    user = find_user_error(error)
    if user is None or os.environ.get("MULTIRATER_TRACEBACK"):
        sys.__excepthook__(kind, error, trace)
        return
    print(f"\nERROR: {user}", file=sys.stderr)  # on a line of its own, after a progress bar
    print("(MULTIRATER_TRACEBACK=1 shows the full traceback)", file=sys.stderr)


def install_concise_errors() -> None:
    """Show :class:`UserError` messages without their traceback for the rest of this process."""
    sys.excepthook = _hook
