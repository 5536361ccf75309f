"""Shared fixtures of the QGIS tests: real QGIS 3.22 (pytest-qgis), a tiny real checkpoint reached
through a real subprocess worker, and the UniRS Processing provider."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the worker: the machine is shared
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


@pytest.fixture(scope="session")
def engine_env(tiny_checkpoint):
    """Point the plugin's engine at the tiny checkpoint, run by the repo venv's python in a worker
    subprocess; the shared worker is stopped at the end of the session."""
    from unirs_qgis import engine_link

    patch = pytest.MonkeyPatch()
    patch.setenv("UNIRS_MODEL", str(tiny_checkpoint))
    patch.setenv("UNIRS_ENGINE_PYTHON", str(VENV_PYTHON))
    yield tiny_checkpoint
    engine_link.shutdown_client()
    patch.undo()


@pytest.fixture(scope="session")
def processing_ready(qgis_processing):
    """QGIS's Processing framework initialised (pytest-qgis); returns `processing.run`."""
    import processing

    return processing.run


@pytest.fixture()
def unirs_provider(processing_ready, engine_env):
    """The UniRS provider registered for one test (cheap; the engine worker stays up between tests)."""
    from qgis.core import QgsApplication

    from unirs_qgis.provider import UniRSProvider

    registry = QgsApplication.processingRegistry()
    provider = UniRSProvider()
    assert registry.addProvider(provider)
    yield provider
    registry.removeProvider(provider)  # deletes it

