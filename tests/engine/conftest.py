"""Shared fixtures of the engine tests (these run without QGIS)."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random UniRS checkpoint in the real VILA-1.5 layout (with a trained tokenizer.model)."""
    from unirs_engine.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "unirs-tiny")
