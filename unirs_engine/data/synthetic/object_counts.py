"""Per-picture object counts of a rendered scene: count targets for the vision stage.

RSVQA comparisons ("Are there more roads than water areas?") need how many objects of each kind
a picture shows, which per-cell land-cover fractions (landcover.py) do not say. For every picture
the benchmark writes land cover for, it also writes `counts/<image stem>.npy` beside the image:
uint8 (len(COUNTED),), the scene's number of objects of each kind the questions ask about, the
numbers the question writer answers from (Scene.count). No random draws: the images stay what
they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .scene import NOUNS, Scene
from .sidecar import read_sidecar, sidecar_path, write_sidecar

COUNTED = tuple(NOUNS)
MAX_COUNT = 9  # count heads' classes: 0..MAX_COUNT objects, more counted as MAX_COUNT
FOLDER = "counts"


def counts_path(image: str | Path) -> Path:
    """Where the counts of `image` live: <image folder>/counts/<image stem>.npy."""
    return sidecar_path(image, FOLDER)


def write_counts(image: str | Path, scene: Scene) -> Path:
    """The object counts of `scene`, per kind of COUNTED, as uint8 at counts_path(image)."""
    return write_sidecar(image, FOLDER, np.array([scene.count(kind) for kind in COUNTED], np.uint8))


def read_counts(image: str | Path) -> np.ndarray | None:
    """(len(COUNTED),) int64 object counts of `image`, or None when it has none."""
    path, stored = read_sidecar(image, FOLDER)
    if stored is None:
        return None
    if stored.shape != (len(COUNTED),):
        raise ValueError(f"{path}: expected object counts of shape {(len(COUNTED),)}, got {stored.shape}")
    return stored.astype(np.int64)
