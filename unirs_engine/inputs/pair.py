"""Read a before/after pair onto one pixel grid, so the Change Extraction module compares like with like."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from ..types import Chip, valid_in_all
from .raster import (MAX_READ_PIXELS, PAD_RGB, Bounds, check_read_size, crs_label, fmt_bounds, open_raster,
                     overview_factor, read_chip, read_rgb, select_bands)


def read_pair(
    before: str | Path,
    after: str | Path,
    *,
    bounds: Bounds | None = None,
    bounds_crs: Any = None,
    bands: Any = None,
    bands_after: Any = None,
    max_size: int = 1024,
    max_read_pixels: int | None = MAX_READ_PIXELS,
) -> tuple[Chip, Chip]:
    """Read `before` like read_chip, then `after` resampled onto exactly the before chip's grid.

    Georeferenced rasters are aligned on the ground (any CRS/resolution, via WarpedVRT, from the
    after's overview that fits the grid); two non-georeferenced images are aligned pixel for pixel.
    `bands_after` defaults to `bands`. Each read touches at most `max_read_pixels` source pixels.
    Both GeoRefs describe the before grid."""
    before, after = str(before), str(after)
    first = read_chip(before, bands=bands, bounds=bounds, bounds_crs=bounds_crs, max_size=max_size,
                      max_read_pixels=max_read_pixels)
    grid = first.georef
    with open_raster(after) as src:
        indexes = select_bands(src, after, bands if bands_after is None else bands_after)
        if (grid.crs is None) != (src.crs is None):
            geo, plain = (before, after) if src.crs is None else (after, before)
            raise ValueError(f"cannot align {before} and {after}: {geo} is georeferenced, {plain} is not")
        if src.crs is None:
            # Plain images of the same scene (e.g. LEVIR-CC PNGs): stretch after to before's size.
            image, valid = read_rgb(src, indexes, out_shape=(grid.height, grid.width),
                                    resampling=Resampling.bilinear)
        else:
            grid_crs = CRS.from_wkt(grid.crs)
            _check_overlap(before, grid.bounds, grid_crs, after, src.bounds, src.crs)
            level = _overview_level(src, after, indexes, grid, grid_crs, max_read_pixels)
            with open_raster(after, overview_level=level) if level is not None else nullcontext(src) as source:
                # Without nodata or alpha the warper needs an added alpha band to mark pixels outside `after`.
                add_alpha = source.nodata is None and ColorInterp.alpha not in source.colorinterp
                with WarpedVRT(source, crs=grid_crs, transform=Affine(*grid.transform), width=grid.width,
                               height=grid.height, resampling=Resampling.bilinear, add_alpha=add_alpha) as vrt:
                    image, valid = read_rgb(vrt, indexes)                 # (H, W, 3), (H, W) of the before grid
    second = Chip(image, replace(grid, source=after, bands=indexes), valid)
    return blank_outside_common(first, second)


def blank_outside_common(before: Chip, after: Chip) -> tuple[Chip, Chip]:
    """Both chips with every pixel that lacks data in either date padded grey in both, and valid =
    the common mask: otherwise a nodata hole in one date (pad grey against ground) reads as change."""
    if before.valid is None and after.valid is None:
        return before, after
    common = valid_in_all((before, after))                                   # (H, W)
    if common.all():                                                         # nothing to blank (no copy)
        return before, after
    chips = []
    for chip in (before, after):
        image = chip.image.copy()
        image[~common] = PAD_RGB                                             # (H, W, 3)
        chips.append(replace(chip, image=image, valid=common))
    return chips[0], chips[1]


def _overview_level(src, path: str, indexes: tuple[int, ...], grid, grid_crs: CRS,
                    max_read_pixels: int | None) -> int | None:
    """The overview level of `src` to warp from onto `grid` (None: full resolution), after checking
    that the warp touches at most `max_read_pixels` source pixels. The warper reads its source at
    the resolution it is given, so picking the overview is up to us (gdalwarp does the same)."""
    left, bottom, right, top = transform_bounds(grid_crs, src.crs, *grid.bounds)
    s_left, s_bottom, s_right, s_top = src.bounds
    res_x, res_y = src.res
    width = max(0.0, min(right, s_right) - max(left, s_left)) / res_x    # after pixels under the grid
    height = max(0.0, min(top, s_top) - max(bottom, s_bottom)) / res_y
    decimation = min(width / grid.width, height / grid.height)
    factor = overview_factor(src, indexes, decimation)
    check_read_size(path, width, height, factor, max_read_pixels)
    return src.overviews(indexes[0]).index(factor) if factor > 1 else None


def _check_overlap(before: str, grid_bounds: Bounds, grid_crs: CRS, after: str, after_bounds: Bounds,
                   after_crs: CRS) -> None:
    left, bottom, right, top = transform_bounds(after_crs, grid_crs, *after_bounds)
    g_left, g_bottom, g_right, g_top = grid_bounds
    if right <= g_left or left >= g_right or top <= g_bottom or bottom >= g_top:
        raise ValueError(
            f"{before} and {after} do not overlap: before extent {fmt_bounds(grid_bounds)} in "
            f"{crs_label(grid_crs)}, after extent {fmt_bounds(after_bounds)} in {crs_label(after_crs)}")
