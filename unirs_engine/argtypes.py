"""argparse pieces every `unirs` command shares (cli.py and the subsystems' commands import them)."""

from __future__ import annotations

import argparse

EXIT_ERROR = 2   # the same as argparse's usage errors


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the usage itself is one `--help` away)."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (tokens, batch size, frames, tiles)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
