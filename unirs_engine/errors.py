"""Which errors are the user's (bad input or setup: said on one line) rather than a bug (a traceback):
one rule for the command line and the worker protocol.

Known by class name and module, so that this module imports none of them: the command line stays
quick for commands that never load torch, and the plugin's client (no torch) can use it too."""

from __future__ import annotations

# The engine's and the subsystems' refusals; each message names the input and the problem.
EXPECTED_ERRORS = ("EngineError", "CheckpointError", "ReviewError", "DataError", "EvalError", "ConfigError",
                   "RequestError", "ProtocolError")


def is_expected(exc: BaseException) -> bool:
    """True for one of UniRS's EXPECTED_ERRORS or a subclass (not, say, sqlite3's DataError)."""
    return any(cls.__name__ in EXPECTED_ERRORS and cls.__module__.startswith("unirs_engine.")
               for cls in type(exc).__mro__)
