"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random UniRS checkpoint in the real VILA-1.5 layout, with a trained tokenizer.model
    (gibberish answers, real loading and routing)."""
    from unirs_engine.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "unirs-tiny")
