"""argparse pieces every `unirs` command shares (cli.py and the subsystems' commands import them)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .errors import UnirsError

EXIT_ERROR = 2   # the same as argparse's usage errors


class CommandError(UnirsError, ValueError):
    """An input a command itself refuses (e.g. a batch file that is not UTF-8, a bad --option)."""


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the usage itself is one `--help` away)."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


MODEL_HELP = "UniRS/VILA-1.5 checkpoint directory (default: $UNIRS_MODEL, else the embedded demo model)"


def add_model_arguments(p, *, model_help: str = MODEL_HELP, model_required: bool = False, dtype: bool = True,
                        clue_model: str | None = None) -> None:
    """--model, --device and (dtype) --dtype, (clue_model: its help) --clue-model, declared once for every
    command that loads a model (`p`: a parser or an argument group)."""
    p.add_argument("--model", metavar="DIR", required=model_required, help=model_help)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present, else CPU)")
    if dtype:
        p.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on CUDA, fp32 on CPU)")
    if clue_model:
        p.add_argument("--clue-model", metavar="DIR", help=clue_model)


def key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE (a `--set` of a training config, an `--option` of a reader): VALUE parsed as JSON, else
    kept as the plain string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (tokens, batch size, frames, tiles)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
