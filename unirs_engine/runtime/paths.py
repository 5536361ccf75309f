"""Per-user folders, outside the plugin folder (which every plugin update replaces).

`UNIRS_HOME` overrides the data folder; tests and CI point it at a temporary folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PLUGIN_ROOT = Path(__file__).resolve().parents[2]  # holds unirs_engine/ (the deployed plugin folder)


def unirs_home() -> Path:
    """UNIRS_HOME, else the platform's per-user data folder + /unirs (as platformdirs names it)."""
    if os.environ.get("UNIRS_HOME"):
        return Path(os.environ["UNIRS_HOME"]).expanduser().resolve()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "unirs"


def cache_dir() -> Path:
    """The worker's working folder and logs: UNIRS_HOME/cache, else the platform's cache folder."""
    if os.environ.get("UNIRS_HOME"):
        path = unirs_home() / "cache"
    elif os.name == "nt":
        path = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "unirs" / "cache"
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unirs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_repository_checkout() -> bool:
    """True when the plugin runs from a git checkout of the project (not from an installed zip)."""
    return (PLUGIN_ROOT / ".git").exists() and (PLUGIN_ROOT / "pyproject.toml").is_file()


def venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
