"""Per-cell land-cover fractions of a rendered scene: dense targets for the vision stage.

For every picture the benchmark writes (RSVQA images, both dates of LEVIR-CC pairs) a
`landcover/<image stem>.npy` beside the image: uint8 (len(CLASSES), GRID, GRID), the share of the
picture's pixels in each scene cell that show each kind, times SCALE (rounded). A pixel shows the
kind painted last there (render.Z_ORDER); pixels of no object (grass) count for no class, so a
cell's fractions sum to at most SCALE. Computed from the objects' geometry on the rendered pixel
grid, after rendering and without random draws: the images stay what they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .render import Z_ORDER, pixel_centres
from .scene import GRID, NOUNS, Scene

# The scene kinds (what questions ask about) first, then those only events and videos paint.
CLASSES = (*NOUNS, *(kind for kind in Z_ORDER if kind not in NOUNS))
SCALE = 255
FOLDER = "landcover"


def landcover_path(image: str | Path) -> Path:
    """Where the fractions of `image` live: <image folder>/landcover/<image stem>.npy."""
    image = Path(image)
    return image.parent / FOLDER / f"{image.stem}.npy"


def fractions(scene: Scene, size: int) -> np.ndarray:
    """(len(CLASSES), GRID, GRID) float32 in 0..1: per scene cell, the share of a size x size
    render's pixels that show each kind."""
    coords = pixel_centres(size)
    shown = np.full((size, size), len(CLASSES), np.int64)      # (size, size): class index, or "none"
    for obj in sorted(scene.objects, key=lambda o: Z_ORDER.index(o.kind)):  # painting order
        rs, cs, m = obj.mask(coords)
        shown[rs, cs][m] = CLASSES.index(obj.kind)
    cell = np.minimum(coords.astype(np.int64), GRID - 1)       # (size,): the cell of each pixel row/col
    flat = (cell[:, None] * GRID + cell[None, :]) * (len(CLASSES) + 1) + shown  # (size, size)
    counts = np.bincount(flat.ravel(), minlength=GRID * GRID * (len(CLASSES) + 1))
    counts = counts.reshape(GRID, GRID, len(CLASSES) + 1)[..., :-1]           # (GRID, GRID, C)
    per_cell = np.bincount(cell, minlength=GRID)                               # (GRID,) pixels per row/col
    share = counts / (per_cell[:, None, None] * per_cell[None, :, None])
    return np.moveaxis(share, -1, 0).astype(np.float32)                        # (C, GRID, GRID)


def write_landcover(image: str | Path, scene: Scene, size: int) -> Path:
    """The fractions of `scene` rendered at `size`, as uint8 at landcover_path(image)."""
    path = landcover_path(image)
    path.parent.mkdir(exist_ok=True)
    np.save(path, np.round(fractions(scene, size) * SCALE).astype(np.uint8))
    return path


def read_landcover(image: str | Path) -> np.ndarray | None:
    """(len(CLASSES), GRID, GRID) float32 fractions of `image`, or None when it has none."""
    path = landcover_path(image)
    if not path.is_file():
        return None
    stored = np.load(path)
    if stored.shape != (len(CLASSES), GRID, GRID):
        raise ValueError(f"{path}: expected land-cover fractions of shape {(len(CLASSES), GRID, GRID)}, "
                         f"got {stored.shape}")
    return stored.astype(np.float32) / SCALE
