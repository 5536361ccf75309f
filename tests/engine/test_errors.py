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


def test_every_error_class_of_the_engine_derives_from_unirs_error():
    """One root: the command line's one handler, the worker and the plugin catch UnirsError only (warnings
    are not errors)."""
    import importlib
    import inspect
    import pkgutil

    import unirs_engine
    from unirs_engine.errors import UnirsError

    found = {}
    for info in pkgutil.walk_packages(unirs_engine.__path__, "unirs_engine."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and not issubclass(cls, Warning) and cls.__module__ == info.name:
                found[f"{info.name}.{name}"] = cls
    assert len(found) >= 20   # the walk reached the subsystems
    assert [name for name, cls in found.items() if not issubclass(cls, UnirsError)] == []
