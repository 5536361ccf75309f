"""UnirsError: the root of every error that is the user's (bad input or setup, said on one line that names
the input and the problem) rather than a bug (shown with its traceback). One rule for the command line, the
worker protocol and the QGIS plugin: catch UnirsError, let anything else surface as a bug.

Stdlib only, so that the command line stays quick for commands that never load torch and the plugin's
client (no torch) can use it too."""

from __future__ import annotations


class UnirsError(Exception):
    """A refusal the user can act on. Subclasses also derive from ValueError or RuntimeError (or
    OSError), as callers of the earlier classes expect."""


def is_expected(exc: BaseException) -> bool:
    """True for a UnirsError: say its message on one line, no traceback."""
    return isinstance(exc, UnirsError)
