"""Clean image pairs made to look like the tile pairs a review reads from two dated mosaics.

Used in one place for two things: the change-score head is trained on such pairs (train/change_score.py)
and its threshold is calibrated on them (calibrate.py): a threshold chosen on clean pairs sits below the
scores of unchanged but resampled mosaic tiles. What a review's tiles go through, mildly: another
exposure per date, a sub-pixel to 2 px misregistration, the after mosaic warped from a coarser
resolution (sometimes the before one too), a nodata region along an edge, and the read at the review's
tile size. Each pair's draw depends only on (seed, copy, index): batches and order do not matter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from ..types import Chip

SHIFTS_PX, SHIFT_P = (0.0, 0.5, 1.0, 2.0), (0.3, 0.3, 0.25, 0.15)
AFTER_RESAMPLED_P, AFTER_FACTOR = 0.8, (1.2, 2.0)      # resolution coarser by this factor, warped back
BEFORE_RESAMPLED_P, BEFORE_FACTOR = 0.2, (1.2, 1.6)
BRIGHTNESS, CHANNEL_BALANCE = 0.1, 0.03                # per date: x U(1 +- 0.1), per channel x U(1 +- 0.03)
BLANKED_P = 0.3                                        # a nodata region along one edge, up to half the tile


def review_read_side(model_input_size: int) -> int:
    """The side a review reads its tiles at (review/run.py): twice the model's input size."""
    return 2 * model_input_size


def _exposure(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS) * rng.uniform(1 - CHANNEL_BALANCE, 1 + CHANNEL_BALANCE, 3)
    return np.clip(image.astype(np.float32) * gain, 1, 255).astype(np.uint8)          # (H, W, 3)


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Translated by (dx, dy) pixels, bilinear (sub-pixel)."""
    im = Image.fromarray(image)
    return np.asarray(im.transform(im.size, Image.AFFINE, (1, 0, dx, 0, 1, dy), resample=Image.BILINEAR))


def _resampled(image: np.ndarray, factor: float) -> np.ndarray:
    """Down to 1/factor and back up, bilinear: a coarser mosaic warped onto the review grid."""
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(8, round(w / factor)), max(8, round(h / factor))), Image.BILINEAR)
    return np.asarray(small.resize((w, h), Image.BILINEAR))


def _edge_region(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool, False on a rectangle along the top, bottom, left or right edge."""
    h, w = shape
    valid = np.ones((h, w), bool)
    rows, cols = rng.integers(h // 8, h // 2 + 1), rng.integers(w // 8, w + 1)
    top, left = rng.choice([0, h - rows]), rng.integers(0, w - cols + 1)
    if rng.random() < 0.5:   # along a side edge instead: the same draw transposed
        top, left, rows, cols = left % max(1, h - cols), top % max(1, w - rows), cols, rows
    valid[top:top + rows, left:left + cols] = False
    return valid


def mosaic_like(before: np.ndarray, after: np.ndarray, rng: np.random.Generator, side: int) -> tuple[Chip, Chip]:
    """(H, W, 3) uint8 before/after of one scene -> the two chips a review would read (side x side),
    pixels without data in either date blanked in both (inputs/pair.py)."""
    from ..inputs.pair import blank_outside_common

    before, after = _exposure(before, rng), _exposure(after, rng)
    shift = rng.choice(SHIFTS_PX, p=SHIFT_P)
    if shift:
        angle = rng.uniform(0, 2 * np.pi)
        after = _shift(after, shift * np.cos(angle) * rng.uniform(0.5, 1), shift * np.sin(angle) * rng.uniform(0.5, 1))
    if rng.random() < AFTER_RESAMPLED_P:
        after = _resampled(after, rng.uniform(*AFTER_FACTOR))
    if rng.random() < BEFORE_RESAMPLED_P:
        before = _resampled(before, rng.uniform(*BEFORE_FACTOR))
    valid = _edge_region(before.shape[:2], rng) if rng.random() < BLANKED_P else np.ones(before.shape[:2], bool)
    before, after = (np.asarray(Image.fromarray(x).resize((side, side), Image.BILINEAR)) for x in (before, after))
    valid = np.asarray(Image.fromarray(valid).resize((side, side), Image.NEAREST))         # (side, side)
    return blank_outside_common(Chip(before, None, valid.copy()), Chip(after, None, valid.copy()))


def read_pairs(paths: Sequence[tuple[str, str]], *, copies: int, seed: int, side: int) -> Iterator[tuple[Chip, Chip]]:
    """The (before, after) image files as read (copies=0), or `copies` mosaic-like versions of each, copy
    by copy (copy c of pair i drawn from (seed, c, i))."""
    from ..inputs.pair import read_pair

    if copies == 0:
        for before, after in paths:
            yield read_pair(before, after)
        return
    for copy in range(copies):
        for index, (before, after) in enumerate(paths):
            b, a = read_pair(before, after)
            yield mosaic_like(b.image, a.image, np.random.default_rng([seed, copy, index]), side)
