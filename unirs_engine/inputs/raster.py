"""Read one RGB chip from any raster GDAL opens: band choice, window, decimation, stretch, mask.

Guards: a file GDAL cannot open gets a message that says why (missing, a directory, empty, not a
raster); a rotated or sheared raster is read through a north-up WarpedVRT; a read that would touch
more than `max_read_pixels` source pixels is refused before it starts."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReaderBase
from rasterio.transform import Affine, array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from ..errors import UnirsError
from ..types import Chip, GeoRef

PAD_RGB = (127, 127, 127)  # SigLIP's mean colour: what the model sees where there is no data
Bounds = tuple[float, float, float, float]
_EDGE_EPS = 1e-6           # pixels; keeps float noise in from_bounds from adding a pixel row
# Most source pixels one chip read may touch (at the overview GDAL reads from). A decimated read
# without a fitting overview reads every source pixel of the window: 10^8 pixels is a few seconds
# and a few hundred MB of RGB; 200000 x 200000 pixels would be minutes and uninterruptible.
MAX_READ_PIXELS = 100_000_000


class EmptyFileError(UnirsError, OSError):
    """A file of 0 bytes (GDAL only says it does not recognise the format)."""


def printable_path(path: str) -> str:
    """`path` as text that can be printed and encoded: undecodable bytes shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_path_text(path: str) -> None:
    """Refuse a file name GDAL (UTF-8 only) cannot be given: bytes that are not UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{printable_path(path)}: the file name is not valid UTF-8, so GDAL cannot "
                         f"open it; rename the file") from None


def open_raster(path: str | Path, **kw: Any) -> DatasetReaderBase:
    """rasterio.open, quiet about non-georeferenced files (plain PNG/JPEG are valid inputs); a file
    it cannot open is an OSError that says why."""
    path = str(path)
    check_path_text(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, **kw)
    except RasterioIOError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: str, exc: Exception) -> OSError:
    """Why GDAL could not open `path`, in words (GDAL says "not recognized" for most of these)."""
    gdal_says = " ".join(str(exc).split())
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.startswith("/vsi") or "://" in path:   # a GDAL virtual path: only GDAL knows
            return OSError(gdal_says)
        return FileNotFoundError(f"{path}: no such file")
    except OSError as err:
        return OSError(f"{path}: cannot be opened ({err.strerror})")
    if os.path.isdir(path):
        return IsADirectoryError(f"{path} is a directory, not a raster file")
    if st.st_size == 0:
        return EmptyFileError(f"{path} is empty (0 bytes)")
    if "not recognized as a supported file format" in gdal_says:
        return OSError(f"{path} is not a raster GDAL can read (no GDAL driver recognises its contents)")
    return OSError(f"{path} is not a raster GDAL can read ({gdal_says})")


def is_north_up(transform: Affine) -> bool:
    """No rotation or shear, x growing east and y growing south: what window maths assumes."""
    return transform.b == 0 and transform.d == 0 and transform.a > 0 and transform.e < 0


@contextmanager
def north_up(src: DatasetReaderBase) -> Iterator[DatasetReaderBase | WarpedVRT]:
    """`src` itself, or, when its geotransform is rotated, sheared or flipped, a north-up WarpedVRT
    of it in the same CRS (GDAL's suggested grid covering the true corners; pixels outside the
    rotated footprint are masked)."""
    if src.crs is None or is_north_up(src.transform):
        yield src
        return
    add_alpha = src.nodata is None and ColorInterp.alpha not in src.colorinterp
    with WarpedVRT(src, crs=src.crs, resampling=Resampling.bilinear, add_alpha=add_alpha) as vrt:
        yield vrt


def parse_crs(value: Any, what: str = "the bounds") -> CRS:
    """A CRS from user text (EPSG:4326, WKT, PROJ); an unknown one is named as such."""
    try:
        with rasterio.Env():   # rasterio's error handler: GDAL's own printout stays out of stderr
            return CRS.from_user_input(value)
    except CRSError:
        raise ValueError(f"unknown CRS {value!r} for {what} (give an EPSG code such as "
                         f"EPSG:4326, or WKT or PROJ text)") from None


def overview_factor(ds: DatasetReaderBase | WarpedVRT, indexes: tuple[int, ...], decimation: float) -> int:
    """Decimation factor of the level GDAL reads from for a read `decimation` times coarser than full
    resolution: the coarsest overview not coarser than asked (1: the full-resolution data)."""
    usable = [f for f in ds.overviews(indexes[0]) if f <= decimation]
    return max(usable, default=1)


def check_read_size(path: str, window_width: float, window_height: float, factor: int,
                    max_read_pixels: int | None) -> None:
    """Refuse a read of a `window_width` x `window_height` pixel area at overview `factor` that
    would touch more than `max_read_pixels` source pixels (None: no limit)."""
    if max_read_pixels is None:
        return
    pixels = window_width * window_height / factor ** 2
    if pixels <= max_read_pixels:
        return
    level = f"through its 1/{factor} overview" if factor > 1 else "at full resolution (no fitting overview)"
    raise ValueError(
        f"{path}: reading {int(window_width):,} x {int(window_height):,} pixels {level} would touch "
        f"{pixels:,.0f} source pixels, more than the limit of {max_read_pixels:,}; give bounds for a "
        f"smaller area, or build overviews (gdaladdo {path})")


def crs_label(crs: CRS | None) -> str:
    """Short human name of a CRS for messages."""
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:80]


def fmt_bounds(bounds: Any) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in bounds) + ")"


def select_bands(src: DatasetReaderBase, path: str, bands: Any = None) -> tuple[int, ...]:
    """1-based band indexes to use: the given 1 or 3, else the red/green/blue-labelled bands,
    else the first three, else band 1 (grey)."""
    if bands is None:
        interp = list(src.colorinterp)
        rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        if all(c in interp for c in rgb):
            return tuple(interp.index(c) + 1 for c in rgb)
        return (1, 2, 3) if src.count >= 3 else (1,)
    bands = tuple(int(b) for b in bands)
    if len(bands) not in (1, 3):
        raise ValueError(f"{path}: give 1 or 3 bands, got {list(bands)}")
    for b in bands:
        if not 1 <= b <= src.count:
            raise ValueError(f"{path}: band {b} does not exist; the raster has {src.count} band(s), "
                             f"numbered 1..{src.count}")
    return bands


def pixel_window(src: DatasetReaderBase, path: str, bounds: Bounds | None, bounds_crs: Any = None) -> Window:
    """Whole-pixel window of `bounds` (in `bounds_crs`, default the raster's) clipped to the raster."""
    if bounds is None:
        return Window(0, 0, src.width, src.height)
    if src.crs is None:
        raise ValueError(f"{path}: bounds were given but the raster is not georeferenced (no CRS)")
    left, bottom, right, top = (float(v) for v in bounds)
    if not (left < right and bottom < top):
        raise ValueError(f"{path}: bounds must be (left, bottom, right, top) with left < right and "
                         f"bottom < top, got {fmt_bounds(bounds)}")
    req_crs = parse_crs(bounds_crs) if bounds_crs is not None else src.crs
    if req_crs != src.crs:
        left, bottom, right, top = transform_bounds(req_crs, src.crs, left, bottom, right, top)
    win = from_bounds(left, bottom, right, top, src.transform)
    col0 = max(0, math.floor(win.col_off + _EDGE_EPS))
    row0 = max(0, math.floor(win.row_off + _EDGE_EPS))
    col1 = min(src.width, math.ceil(win.col_off + win.width - _EDGE_EPS))
    row1 = min(src.height, math.ceil(win.row_off + win.height - _EDGE_EPS))
    if col1 <= col0 or row1 <= row0:
        raise ValueError(
            f"{path}: bounds {fmt_bounds(bounds)} in {crs_label(req_crs)} do not intersect the raster "
            f"extent {fmt_bounds(src.bounds)} in {crs_label(src.crs)}")
    return Window(col0, row0, col1 - col0, row1 - row0)


def fit_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """(height, width) scaled down so the longest side is at most max_size."""
    scale = max(height, width) / max_size
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def stretch_to_uint8(data: np.ndarray, valid: np.ndarray, stretch: tuple[float, float]) -> np.ndarray:
    """(B, H, W) any dtype -> uint8. uint8 is kept; other dtypes are linearly stretched per band
    between the `stretch` percentiles of the valid pixels (a constant band becomes mid grey)."""
    if data.dtype == np.uint8:
        return data
    out = np.full(data.shape, PAD_RGB[0], np.uint8)
    for band, dst in zip(data, out):
        values = band[valid]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, stretch)
        if hi <= lo:
            continue
        scaled = np.nan_to_num((band.astype(np.float64) - lo) / (hi - lo))  # invalid NaNs -> 0, padded later
        dst[...] = np.round(np.clip(scaled, 0.0, 1.0) * 255)
    return out


def read_rgb(
    ds: DatasetReaderBase | WarpedVRT,
    indexes: tuple[int, ...],
    *,
    window: Window | None = None,
    out_shape: tuple[int, int] | None = None,
    resampling: Resampling = Resampling.average,
    stretch: tuple[float, float] = (2, 98),
) -> tuple[np.ndarray, np.ndarray]:
    """Read `indexes` of `ds` (a dataset or WarpedVRT) as an `(H, W, 3)` uint8 RGB image and an
    `(H, W)` valid mask; invalid pixels (mask, nodata, NaN) are set to PAD_RGB."""
    shape = None if out_shape is None else (len(indexes), *out_shape)
    data = ds.read(indexes, window=window, out_shape=shape, resampling=resampling)            # (B, H, W)
    masks = ds.read_masks(indexes, window=window, out_shape=shape, resampling=resampling)     # (B, H, W)
    valid = (masks > 0).all(axis=0)                                                            # (H, W)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)  # NaN is no-data even when the nodata value is another
    bands = stretch_to_uint8(data, valid, stretch)
    if len(indexes) == 1:
        bands = np.repeat(bands, 3, axis=0)                                                    # grey -> (3, H, W)
    image = np.ascontiguousarray(np.moveaxis(bands, 0, -1))                                    # (H, W, 3)
    image[~valid] = PAD_RGB
    return image, valid


def read_chip(
    path: str | Path,
    *,
    bands: Any = None,
    bounds: Bounds | None = None,
    bounds_crs: Any = None,
    max_size: int = 1024,
    stretch: tuple[float, float] = (2, 98),
    max_read_pixels: int | None = MAX_READ_PIXELS,
) -> Chip:
    """Read an RGB chip of `path` (whole raster or `bounds`), longest side <= max_size.

    Downsampling is a decimated GDAL read (overviews when present); only the window is read, and
    never more than `max_read_pixels` source pixels (None: no limit). A rotated or sheared raster
    is read north-up, so bounds and the chip's footprint are true on the ground."""
    path = str(path)
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    if not 0 <= stretch[0] < stretch[1] <= 100:
        raise ValueError(f"stretch must be two percentiles 0 <= low < high <= 100, got {stretch}")
    with open_raster(path) as src, north_up(src) as view:
        indexes = select_bands(src, path, bands)
        window = pixel_window(view, path, bounds, bounds_crs)
        height, width = fit_shape(int(window.height), int(window.width), max_size)
        factor = overview_factor(view, indexes, min(window.width / width, window.height / height))
        check_read_size(path, window.width, window.height, factor, max_read_pixels)
        image, valid = read_rgb(view, indexes, window=window, out_shape=(height, width), stretch=stretch)
        if view.crs is None:
            georef = GeoRef(path, None, None, None, width, height, indexes)
        else:
            transform = view.window_transform(window) * Affine.scale(window.width / width, window.height / height)
            georef = GeoRef(path, view.crs.to_wkt(), tuple(array_bounds(height, width, transform)),
                            tuple(transform)[:6], width, height, indexes)
    return Chip(image, georef, valid)


def raster_info(path: str | Path) -> dict[str, Any]:
    """JSON-ready summary of a raster (for the CLI `info` command)."""
    with open_raster(path) as src, north_up(src) as view:
        return {
            "path": str(path),
            "driver": src.driver,
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtypes": list(src.dtypes),
            "crs": None if src.crs is None else crs_label(src.crs),
            "bounds": list(view.bounds),   # of the true corners, also when the raster is rotated
            "res": list(src.res),
            "nodata": "nan" if src.nodata is not None and math.isnan(src.nodata) else src.nodata,
            "colorinterp": [c.name for c in src.colorinterp],
            "overviews": src.overviews(1) if src.count else [],
        }
