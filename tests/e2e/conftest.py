"""End-to-end fixtures: the plugin zip from `pb_tool zip`, unzipped into a fresh QGIS profile and
enabled with /usr/bin/qgis_process.bin (Debian's qgis_process wrapper is broken on bookworm)."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.plugin_zip import build_plugin_zip

QGIS_PROCESS = "/usr/bin/qgis_process.bin"
REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def fresh_profile(work: Path, **extra_env: str) -> dict[str, str]:
    """A fresh QGIS profile in `work` with the plugin from `pb_tool zip` unzipped and enabled; returns
    the environment for qgis_process.bin runs against it. Nothing from this venv leaks in (no
    PYTHONPATH): QGIS uses the deployed copy only. Per-user data (UNIRS_HOME) lives in `work` too."""
    plugins = work / "config" / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(build_plugin_zip(work / "build")) as zf:
        zf.extractall(plugins)
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(work), "LC_ALL": "C.UTF-8", "QT_QPA_PLATFORM": "offscreen",
        "QGIS_CUSTOM_CONFIG_PATH": str(work / "config"), "TMPDIR": str(work), "UNIRS_HOME": str(work / "unirs-home"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false",
        **extra_env,
    }
    enabled = qgis_process(["plugins", "enable", "unirs"], env)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    return env


@pytest.fixture(scope="session")
def qgis_profile(tmp_path_factory, tiny_checkpoint) -> dict[str, str]:
    """qgis_process.bin environment: zipped plugin, engine = this venv's python with the tiny model."""
    return fresh_profile(tmp_path_factory.mktemp("e2e"), UNIRS_ENGINE_PYTHON=str(VENV_PYTHON),
                         UNIRS_MODEL=str(tiny_checkpoint))


def qgis_process(args: list[str], env: dict[str, str], timeout: int = 300,
                 cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)
