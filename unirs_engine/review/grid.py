"""The common pixel grid of a review: the overlap of both mosaics, cut into tiles (no pixel read)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window, bounds as window_bounds

from ..inputs.raster import Bounds, crs_label, fmt_bounds, open_raster, parse_crs, select_bands
from .job import ReviewError, ReviewJob

_SNAP_EPS = 1e-6  # pixels: float noise must not add a grid row or column


@dataclass(frozen=True)
class ReviewPlan:
    crs: str                        # WKT of the grid CRS
    transform: tuple[float, ...]    # north-up affine (a, b, c, d, e, f) of the grid
    width: int                      # grid size in pixels
    height: int
    rows: int                       # tiles down and across
    cols: int
    total_tiles: int
    tile_px: int                    # tile side in grid pixels
    step_px: int                    # tile_px - overlap in pixels

    def window(self, index: int) -> tuple[int, int, Window]:
        """(row, col, window) of tile `index` (row-major from the top left); edge tiles clipped."""
        row, col = divmod(index, self.cols)
        top, left = row * self.step_px, col * self.step_px
        return row, col, Window(left, top, min(self.tile_px, self.width - left),
                                min(self.tile_px, self.height - top))

    def bounds(self, window: Window) -> Bounds:
        """(left, bottom, right, top) of a grid window, in the grid CRS."""
        return tuple(window_bounds(window, Affine(*self.transform)))

    def to_dict(self) -> dict:
        return asdict(self)


def _n_tiles(length: int, tile: int, step: int) -> int:
    """Tiles needed along a side: the first at 0, then every `step` until one reaches the end."""
    return 1 + math.ceil(max(0, length - tile) / step)


def _snap(low: float, high: float, origin: float, res: float) -> tuple[float, float]:
    """[low, high] widened to whole pixels of a grid through `origin`."""
    lo = origin + math.floor((low - origin) / res + _SNAP_EPS) * res
    hi = origin + math.ceil((high - origin) / res - _SNAP_EPS) * res
    return lo, hi


def plan_review(job: ReviewJob) -> ReviewPlan:
    """The grid over the overlap of job.before and job.after, and its tiles; cheap (headers only).

    Raises ReviewError for unreadable/ungeoreferenced inputs, no overlap, or more than job.max_tiles tiles."""
    try:
        with open_raster(job.before) as before, open_raster(job.after) as after:
            for path, src in ((job.before, before), (job.after, after)):
                if src.crs is None:
                    raise ReviewError(f"{path}: not georeferenced (no CRS); a review needs two "
                                      "georeferenced mosaics")
                select_bands(src, path, job.bands)  # a bad band fails here, not in the reader thread
            try:
                crs = parse_crs(job.crs, "the review grid") if job.crs else before.crs
            except ValueError as exc:
                raise ReviewError(str(exc)) from None
            res = job.resolution or _native_resolution(before, crs)
            b_left, b_bottom, b_right, b_top = transform_bounds(before.crs, crs, *before.bounds)
            a_left, a_bottom, a_right, a_top = transform_bounds(after.crs, crs, *after.bounds)
            # Default grid: before's own pixels (no resampling of before); else pixels aligned on 0, 0.
            same_grid = crs == before.crs and math.isclose(res, abs(before.transform.a))
            origin_x, origin_y = (before.bounds.left, before.bounds.top) if same_grid else (0.0, 0.0)
            lo_x, lo_y = max(b_left, a_left), max(b_bottom, a_bottom)
            hi_x, hi_y = min(b_right, a_right), min(b_top, a_top)
            if hi_x <= lo_x or hi_y <= lo_y:
                raise ReviewError(
                    f"{job.before} and {job.after} do not overlap: before extent {fmt_bounds(before.bounds)} "
                    f"in {crs_label(before.crs)}, after extent {fmt_bounds(after.bounds)} in {crs_label(after.crs)}")
            if job.extent is not None:
                e_left, e_bottom, e_right, e_top = job.extent
                lo_x, lo_y, hi_x, hi_y = max(lo_x, e_left), max(lo_y, e_bottom), min(hi_x, e_right), min(hi_y, e_top)
                if hi_x <= lo_x or hi_y <= lo_y:
                    raise ReviewError(f"the extent {fmt_bounds(job.extent)} misses the overlap of {job.before} "
                                      f"and {job.after} in {crs_label(crs)}")
            left, right = _snap(lo_x, hi_x, origin_x, res)
            bottom, top = _snap(lo_y, hi_y, origin_y, res)
            width, height = round((right - left) / res), round((top - bottom) / res)
            if width < 1 or height < 1:
                raise ReviewError(f"the overlap of {job.before} and {job.after} is under one pixel of the grid")
    except (OSError, ValueError) as exc:  # the readers' messages name the file
        raise ReviewError(str(exc)) from None

    tile_px, overlap_px = _to_pixels(job.tile_size, res, job), _to_pixels(job.overlap, res, job, tile=False)
    step_px = tile_px - overlap_px
    if step_px < 1:
        raise ReviewError(f"overlap ({job.overlap} {job.tile_units}) leaves no step between tiles of "
                          f"{tile_px} px; use a smaller overlap")
    rows, cols = _n_tiles(height, tile_px, step_px), _n_tiles(width, tile_px, step_px)
    total = rows * cols
    if total > job.max_tiles:
        raise ReviewError(
            f"reviewing {job.before} against {job.after} with {tile_px} px tiles over a {width:,} x {height:,} px "
            f"grid would make {total:,} tiles (limit {job.max_tiles:,}); use a larger tile size or raise max_tiles")
    transform = Affine(res, 0.0, left, 0.0, -res, top)
    return ReviewPlan(crs.to_wkt(), tuple(transform)[:6], width, height, rows, cols, total, tile_px, step_px)


def _native_resolution(src, crs: CRS) -> float:
    """before's pixel size, expressed in `crs` units when the grid CRS is another."""
    if crs == src.crs:
        return abs(src.transform.a)
    transform, _, _ = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
    return abs(transform.a)


def _to_pixels(size: float, res: float, job: ReviewJob, *, tile: bool = True) -> int:
    """A tile size/overlap in job.tile_units -> whole grid pixels (a tile is at least 1 px)."""
    px = round(size / res) if job.tile_units == "map" else round(size)
    return max(1, px) if tile else px
