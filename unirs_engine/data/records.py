"""Reading dataset record files: errors that name the file and the record, the one place that raises or
skips them (on_error), and the JSON and file checks every reader uses."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import UnirsError

ON_ERROR = ("raise", "skip")


class DataError(UnirsError, ValueError):
    """A dataset file or record that cannot be read; the message names the file and the record."""

    def __init__(self, file: str | Path, problem: str, record: Any = None):
        where = f"{file}" if record is None else f"{file}: record {record}"
        super().__init__(f"{where}: {problem}")
        self.file, self.record, self.problem = str(file), record, problem


class SkippedRecordWarning(UserWarning):
    """Issued once per record that a reader skipped with on_error="skip"."""


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def report(error: DataError, on_error: str) -> None:
    """Raise `error`, or (on_error="skip") warn that its record was skipped — never silently."""
    if on_error == "raise":
        raise error
    warnings.warn(f"skipped: {error}", SkippedRecordWarning, stacklevel=3)


def read_json(path: str | Path) -> Any:
    """JSON of `path`; a missing or malformed file is a DataError naming it (and the line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def require_file(path: Path, source: str | Path, record: Any, what: str) -> str:
    """`path` as a string when it is a file, else a DataError about `record` of `source`."""
    if not path.is_file():
        raise DataError(source, f"{what} not found: {path}", record)
    return str(path)
