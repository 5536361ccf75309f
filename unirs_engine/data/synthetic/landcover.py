"""Per-cell land-cover fractions of a rendered scene: dense targets for the vision stage.

For every picture the benchmark writes (RSVQA images, both dates of LEVIR-CC pairs) a
`landcover/<image stem>.npy` beside the image: uint8 (len(CLASSES), GRID, GRID), the share of the
picture's pixels in each of its GRID x GRID cells that show each kind, times SCALE (rounded). A
pixel shows the kind painted last there (render.Z_ORDER); pixels of no object (grass) count for
no class, so a cell's fractions sum to at most SCALE. Every ERA video gets one beside it with a
leading frame axis, (n_frames, len(CLASSES), GRID, GRID), each frame's cells those of the frame
as the camera saw it. Computed from the objects' geometry on the rendered pixel grid, after
rendering and without random draws: the images and videos stay what they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .render import Z_ORDER, pixel_centres
from .scene import GRID, NOUNS, Scene
from .sidecar import read_sidecar, sidecar_path, write_sidecar

# The scene kinds (what questions ask about) first, then those only events and videos paint.
CLASSES = (*NOUNS, *(kind for kind in Z_ORDER if kind not in NOUNS))
SCALE = 255
FOLDER = "landcover"


def landcover_path(image: str | Path) -> Path:
    """Where the fractions of `image` live: <image folder>/landcover/<image stem>.npy."""
    return sidecar_path(image, FOLDER)


def shown_kinds(scene: Scene, size: int) -> np.ndarray:
    """(size, size) int64: per pixel of a size x size render, the index in CLASSES of the kind it
    shows, len(CLASSES) where it shows no object."""
    coords = pixel_centres(size)
    shown = np.full((size, size), len(CLASSES), np.int64)
    for obj in sorted(scene.objects, key=lambda o: Z_ORDER.index(o.kind)):  # painting order
        rs, cs, m = obj.mask(coords)
        shown[rs, cs][m] = CLASSES.index(obj.kind)
    return shown


def fractions(scene: Scene, size: int) -> np.ndarray:
    """(len(CLASSES), GRID, GRID) float32 in 0..1: per scene cell, the share of a size x size
    render's pixels that show each kind."""
    return cell_fractions(shown_kinds(scene, size))


def cell_fractions(shown: np.ndarray) -> np.ndarray:
    """(len(CLASSES), GRID, GRID) float32 in 0..1: the share of each kind among the pixels of a
    square picture's (size, size) shown_kinds in each of its GRID x GRID cells."""
    size = shown.shape[0]
    cell = np.minimum(pixel_centres(size).astype(np.int64), GRID - 1)  # (size,): the cell of each pixel row/col
    flat = (cell[:, None] * GRID + cell[None, :]) * (len(CLASSES) + 1) + shown  # (size, size)
    counts = np.bincount(flat.ravel(), minlength=GRID * GRID * (len(CLASSES) + 1))
    counts = counts.reshape(GRID, GRID, len(CLASSES) + 1)[..., :-1]           # (GRID, GRID, C)
    per_cell = np.bincount(cell, minlength=GRID)                               # (GRID,) pixels per row/col
    share = counts / (per_cell[:, None, None] * per_cell[None, :, None])
    return np.moveaxis(share, -1, 0).astype(np.float32)                        # (C, GRID, GRID)


def write_landcover(image: str | Path, scene: Scene, size: int) -> Path:
    """The fractions of `scene` rendered at `size`, as uint8 at landcover_path(image)."""
    return write_sidecar(image, FOLDER, np.round(fractions(scene, size) * SCALE).astype(np.uint8))


def write_video_landcover(video: str | Path, frames: np.ndarray) -> Path:
    """(n_frames, len(CLASSES), GRID, GRID) fractions of a video's frames, as uint8 at
    landcover_path(video)."""
    return write_sidecar(video, FOLDER, np.round(frames * SCALE).astype(np.uint8))


def read_landcover(image: str | Path) -> np.ndarray | None:
    """(len(CLASSES), GRID, GRID) float32 fractions of `image`, or None when it has none."""
    return _read(image, frames=False)


def read_video_landcover(video: str | Path) -> np.ndarray | None:
    """(n_frames, len(CLASSES), GRID, GRID) float32 fractions of each frame of `video`, or None."""
    return _read(video, frames=True)


def _read(picture: str | Path, frames: bool) -> np.ndarray | None:
    path, stored = read_sidecar(picture, FOLDER)
    if stored is None:
        return None
    cells = (len(CLASSES), GRID, GRID)
    if stored.shape[-3:] != cells or stored.ndim != 3 + frames:
        expected = f"(n_frames, {', '.join(map(str, cells))})" if frames else str(cells)
        raise ValueError(f"{path}: expected land-cover fractions of shape {expected}, got {stored.shape}")
    return stored.astype(np.float32) / SCALE
