"""Target files the benchmark writes beside a picture: <picture folder>/<kind folder>/<picture stem>.npy.

Land cover (landcover.py) and object counts (object_counts.py) are both kept this way, so a reader
finds a picture's targets from the picture's path alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sidecar_path(picture: str | Path, folder: str) -> Path:
    """<picture folder>/<folder>/<picture stem>.npy."""
    picture = Path(picture)
    return picture.parent / folder / f"{picture.stem}.npy"


def write_sidecar(picture: str | Path, folder: str, values: np.ndarray) -> Path:
    """`values` saved at sidecar_path(picture, folder), the folder made when missing."""
    path = sidecar_path(picture, folder)
    path.parent.mkdir(exist_ok=True)
    np.save(path, values)
    return path


def read_sidecar(picture: str | Path, folder: str) -> tuple[Path, np.ndarray | None]:
    """The path and stored array of the picture's `folder` targets (None when it has none)."""
    path = sidecar_path(picture, folder)
    return path, np.load(path) if path.is_file() else None
