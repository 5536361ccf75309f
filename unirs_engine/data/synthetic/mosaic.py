"""Two large dated GeoTIFF mosaics of one area, in which a known set of tiles changed.

Each tile of the mosaic is a scene; a `change_fraction` of tiles get a change event between the
dates; the ground truth (tile, bounds, event, captions) goes to a sidecar JSON. The after mosaic can
be in another CRS / resolution (rasterio.warp.reproject) and have a nodata hole. Everything is
written window by window, so a 32k x 32k mosaic never needs to fit in memory.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from .captions import change_captions
from .events import make_pair, random_event
from .render import finish, geotiff_profile, illumination, random_georef, render
from .scene import make_scene

BEFORE_DATE, AFTER_DATE = "2019-06-01", "2023-06-01"
GROUND_TRUTH = "changes.json"
CHUNK = 1024          # pixels per side of the windows reprojected at a time


def write_mosaic_pair(out_dir: str | Path, *, size: int = 2048, seed: int = 0, tile: int = 256,
                      change_fraction: float = 0.2, after_crs: str | None = None,
                      after_res_factor: float = 1.0, nodata_hole: bool = False) -> tuple[Path, Path]:
    """Write before/after mosaics (size x size pixels before) and GROUND_TRUTH into `out_dir`."""
    if tile < 32 or tile % 16:
        raise ValueError(f"tile must be a multiple of 16 and >= 32, got {tile}")
    if size < tile:
        raise ValueError(f"size ({size}) must be at least one tile ({tile})")
    if not 0 <= change_fraction <= 1 or after_res_factor <= 0:
        raise ValueError("change_fraction must be in [0, 1] and after_res_factor > 0")
    try:   # a bad CRS fails before any work
        warp_crs = CRS.from_user_input(after_crs) if after_crs else None
    except CRSError as exc:
        raise ValueError(f"after_crs {after_crs!r} is not a CRS ({exc})") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    crs, transform = random_georef(rng, size)
    before_path, after_path = out / f"before_{BEFORE_DATE}.tif", out / f"after_{AFTER_DATE}.tif"
    warp = after_crs is not None or after_res_factor != 1.0
    before_part, after_part = _part(before_path), _part(after_path)
    grid_part = out / f".after-grid-{os.getpid()}.tif.part" if warp else after_part

    n_tiles = math.ceil(size / tile)
    changed = set(rng.choice(n_tiles * n_tiles, round(change_fraction * n_tiles * n_tiles), replace=False).tolist())
    hole = _hole_window(rng, size) if nodata_hole else None
    gains = illumination(rng), illumination(rng)    # one acquisition per date
    profile = geotiff_profile(size, size, crs, transform, BIGTIFF="IF_SAFER")
    try:
        with rasterio.open(before_part, "w", **profile) as before, \
                rasterio.open(grid_part, "w", **profile, nodata=0 if (warp or hole) else None) as after:
            truth = _write_tiles(before, after, seed, size, tile, changed, gains, hole)
        _finalise(before_part, BEFORE_DATE)
        if warp:
            _reproject(grid_part, after_part, warp_crs, after_res_factor)
            grid_part.unlink()
        _finalise(after_part, AFTER_DATE)
        with rasterio.open(after_part) as a:
            after_info = {"crs": a.crs.to_string(), "transform": list(a.transform)[:6], "width": a.width,
                          "height": a.height}
        os.replace(before_part, before_path)
        os.replace(after_part, after_path)
    except BaseException:
        for p in (before_part, after_part, grid_part):
            p.unlink(missing_ok=True)
        raise
    _write_truth(out / GROUND_TRUTH, {
        "before": before_path.name, "after": after_path.name,
        "dates": {"before": BEFORE_DATE, "after": AFTER_DATE}, "seed": seed,
        "crs": crs, "transform": list(transform)[:6], "size": size, "tile": tile, "tiles_per_side": n_tiles,
        "change_fraction": change_fraction, "after_grid": after_info, "after_res_factor": after_res_factor,
        "nodata_hole": None if hole is None else {
            "window": [hole.col_off, hole.row_off, hole.width, hole.height],
            "bounds": list(rasterio.windows.bounds(hole, transform))},
        "changed": truth,
    })
    return before_path, after_path


def _part(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


def _hole_window(rng: np.random.Generator, size: int) -> Window:
    side = max(1, size // 4)
    r, c = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    return Window(c, r, side, side)


def _write_tiles(before, after, seed: int, size: int, tile: int, changed: set[int], gains, hole) -> list[dict]:
    """Render and write each tile (row by row); the changed ones' ground truth."""
    n_tiles = math.ceil(size / tile)
    truth = []
    for k in range(n_tiles * n_tiles):
        row, col = divmod(k, n_tiles)
        rng = np.random.default_rng([seed, 8, k])
        if k in changed:
            scene, change = make_pair(rng, random_event(rng))
            later = change.after
        else:
            scene = later = make_scene(rng)
        window = Window(col * tile, row * tile, min(tile, size - col * tile), min(tile, size - row * tile))
        h, w = window.height, window.width
        img_before = finish(render(scene, tile), rng, gain=gains[0])[:h, :w]   # (h, w, 3)
        img_after = finish(render(later, tile), rng, gain=gains[1])[:h, :w]
        if hole is not None:
            img_after = img_after.copy()
            img_after[_overlap(window, hole)] = 0
        before.write(np.moveaxis(img_before, -1, 0), window=window)            # (3, h, w)
        after.write(np.moveaxis(img_after, -1, 0), window=window)
        if k in changed:
            truth.append({"row": row, "col": col, "window": [window.col_off, window.row_off, w, h],
                          "bounds": list(rasterio.windows.bounds(window, before.transform)),
                          "event": change.event, "captions": change_captions(change, rng)})
    return truth


def _overlap(window: Window, hole: Window) -> tuple[slice, slice]:
    """Rows/cols of `window`'s array that fall in `hole`."""
    r0, r1 = max(window.row_off, hole.row_off), min(window.row_off + window.height, hole.row_off + hole.height)
    c0, c1 = max(window.col_off, hole.col_off), min(window.col_off + window.width, hole.col_off + hole.width)
    if r1 <= r0 or c1 <= c0:
        return slice(0, 0), slice(0, 0)
    return slice(r0 - window.row_off, r1 - window.row_off), slice(c0 - window.col_off, c1 - window.col_off)


def _reproject(src_path: Path, dst_path: Path, dst_crs: CRS | None, res_factor: float) -> None:
    """Warp `src_path` to `dst_crs` at its default resolution x `res_factor`, CHUNK x CHUNK at a time."""
    with rasterio.open(src_path) as src:
        crs = dst_crs or src.crs
        default, _, _ = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        res = (abs(default.a) * res_factor, abs(default.e) * res_factor)
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height,
                                                               *src.bounds, resolution=res)
        profile = geotiff_profile(width, height, crs, transform, nodata=0, BIGTIFF="IF_SAFER")
        with rasterio.open(dst_path, "w", **profile) as dst:
            for row in range(0, height, CHUNK):
                for col in range(0, width, CHUNK):
                    window = Window(col, row, min(CHUNK, width - col), min(CHUNK, height - row))
                    block = np.zeros((3, window.height, window.width), np.uint8)   # (3, h, w)
                    reproject(source=rasterio.band(src, [1, 2, 3]), destination=block,
                              src_nodata=0, dst_transform=dst.window_transform(window), dst_crs=crs,
                              dst_nodata=0, resampling=Resampling.bilinear)
                    dst.write(block, window=window)


def _finalise(path: Path, date: str) -> None:
    """The acquisition date as TIFF tags, and internal overviews (average) down to about 256 pixels."""
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME=date.replace("-", ":") + " 12:00:00", ACQUISITION_DATE=date)
        factors, f = [], 2
        while max(dst.width, dst.height) / f >= 256:
            factors.append(f)
            f *= 2
        if factors:
            dst.build_overviews(factors, Resampling.average)
            dst.update_tags(ns="rio_overview", resampling="average")


def _write_truth(path: Path, data: dict[str, Any]) -> None:
    tmp = _part(path)
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
