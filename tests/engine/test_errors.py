"""errors.py: one rule for what the command line and the worker say on one line instead of a traceback."""

import sqlite3

from unirs_engine.engine import InputError, PromptTooLong
from unirs_engine.errors import is_expected
from unirs_engine.review.job import ReviewError
from unirs_engine.worker.protocol import RequestError


def test_our_refusals_and_their_subclasses_are_expected():
    for exc in (InputError("x"), PromptTooLong("x"), ReviewError("x"), RequestError("x")):
        assert is_expected(exc), type(exc)


def test_a_namesake_from_elsewhere_and_a_plain_bug_are_not():
    assert not is_expected(sqlite3.DataError("x"))   # same class name as ours, another library's
    assert not is_expected(ValueError("x")) and not is_expected(KeyError("x"))
