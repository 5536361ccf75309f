"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def unirs_home(tmp_path_factory) -> Path:
    """Per-user data (managed engine environment, worker logs) in a temp folder, never the tester's."""
    home = tmp_path_factory.mktemp("unirs-home")
    os.environ["UNIRS_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random UniRS checkpoint in the real VILA-1.5 layout, with a trained tokenizer.model
    (gibberish answers, real loading and routing)."""
    from unirs_engine.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "unirs-tiny")
