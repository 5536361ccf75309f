"""The JSON-lines files resumable runs append to (eval predictions, training clues): read back what a
previous run finished. A killed run may leave its last line unfinished; it is cut off (with a warning)
so the run redoes that record, while a bad line anywhere else is an error: the file is not ours."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable


def read_finished(path: str | Path, key: Callable[[dict], Any],
                  bad_line: Callable[[str, Exception], Exception]) -> dict:
    """{key(record): record} of the complete lines of `path` ({} when it does not exist). `key` raises
    KeyError/TypeError for a record that is not one; `bad_line("FILE:LINE", why)` makes the error raised
    for such a line before the last."""
    path = Path(path)
    if not path.exists():
        return {}
    records, good = {}, 0                   # good: bytes of complete records
    lines = path.read_bytes().splitlines(keepends=True)
    for n, line in enumerate(lines, 1):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("no end of line")
            record = json.loads(line)
            records[key(record)] = record
        except (ValueError, KeyError, TypeError) as exc:
            if n < len(lines):
                raise bad_line(f"{path}:{n}", exc) from exc
            warnings.warn(f"{path}:{n}: dropped an unfinished last line (a killed run?); it is done again",
                          RuntimeWarning, stacklevel=3)
            with path.open("r+b") as f:
                f.truncate(good)
            break
        good += len(line)
    return records
