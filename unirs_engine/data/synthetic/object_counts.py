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

COUNTED = tuple(NOUNS)
FOLDER = "counts"


def counts_path(image: str | Path) -> Path:
    """Where the counts of `image` live: <image folder>/counts/<image stem>.npy."""
    image = Path(image)
    return image.parent / FOLDER / f"{image.stem}.npy"


def write_counts(image: str | Path, scene: Scene) -> Path:
    """The object counts of `scene`, per kind of COUNTED, as uint8 at counts_path(image)."""
    path = counts_path(image)
    path.parent.mkdir(exist_ok=True)
    np.save(path, np.array([scene.count(kind) for kind in COUNTED], np.uint8))
    return path


def read_counts(image: str | Path) -> np.ndarray | None:
    """(len(COUNTED),) int64 object counts of `image`, or None when it has none."""
    path = counts_path(image)
    if not path.is_file():
        return None
    stored = np.load(path)
    if stored.shape != (len(COUNTED),):
        raise ValueError(f"{path}: expected object counts of shape {(len(COUNTED),)}, got {stored.shape}")
    return stored.astype(np.int64)
