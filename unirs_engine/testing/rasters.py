"""Write small, real test/sample rasters with rasterio and GDAL (GeoTIFF, COG, VRT, PNG...),
and a small video with PyAV.

Used by the engine and QGIS test suites and by demo scripts. Every writer returns the path it
wrote. Data arrays are band-first, `(bands, H, W)`, like rasterio's. The default grid is a
10 m UTM 33N grid (EPSG:32633) with its top-left corner at (500000, 4500000).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine, from_origin

UTM33 = "EPSG:32633"
ORIGIN = (500_000.0, 4_500_000.0)  # (x of the left edge, y of the top edge) in UTM33 metres
RES = 10.0


def grid(origin: tuple[float, float] = ORIGIN, res: float = RES) -> Affine:
    """North-up affine with square pixels of `res` and top-left corner `origin`."""
    return from_origin(origin[0], origin[1], res, res)


def pattern(height: int, width: int, count: int = 3, *, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """A textured picture, `(count, H, W)`: per-band gradients plus noise, spread over the dtype's
    typical range (uint8 0..255, uint16 0..4000 like reflectance, floats 0..1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    bands = []
    for _ in range(count):
        angle = rng.uniform(0, np.pi)
        ramp = xx * np.cos(angle) + yy * np.sin(angle)
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
        bands.append(np.clip(0.8 * ramp + 0.2 * rng.random((height, width)), 0, 1))
    unit = np.stack(bands)                                                # (count, H, W) in 0..1
    top = {"uint8": 255, "uint16": 4000, "int16": 4000}.get(dtype)
    if top is None:
        return unit.astype(dtype)
    return np.round(unit * top).astype(dtype)


def write_raster(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM33,
    transform: Affine | None = None,
    nodata: float | None = None,
    colorinterp: list[ColorInterp] | None = None,
    driver: str = "GTiff",
    **creation_options,
) -> Path:
    """Write `data` `(bands, H, W)` (or `(H, W)`) as a raster; `crs=None` writes no georeference."""
    data = data[None] if data.ndim == 2 else data
    count, height, width = data.shape
    profile = dict(driver=driver, width=width, height=height, count=count, dtype=data.dtype.name,
                   nodata=nodata, **creation_options)
    if crs is not None:
        profile.update(crs=crs, transform=transform or grid())
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # crs=None is on purpose
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if colorinterp is not None:
                dst.colorinterp = colorinterp
    return path


def write_cog(path: str | Path, data: np.ndarray, **kw) -> Path:
    """A Cloud Optimized GeoTIFF (GDAL "COG" driver: tiled, with internal overviews when large)."""
    return write_raster(path, data, driver="COG", blocksize=256, overviews="AUTO", **kw)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """A plain, non-georeferenced RGB PNG from an `(H, W, 3)` uint8 array."""
    return write_raster(path, np.moveaxis(rgb, -1, 0), crs=None, driver="PNG")


def write_vrt_mosaic(path: str | Path, tiles: list[str | Path]) -> Path:
    """A VRT mosaic of `tiles` (same CRS and resolution) built by gdal.BuildVRT."""
    from osgeo import gdal

    gdal.UseExceptions()
    vrt = gdal.BuildVRT(str(path), [str(t) for t in tiles])
    vrt.FlushCache()
    vrt = None  # closing writes the .vrt file
    return Path(path)


def write_two_tile_mosaic(folder: str | Path, *, tile: int = 64, seed: int = 0) -> tuple[Path, list[Path]]:
    """Two side-by-side uint8 RGB GeoTIFF tiles and their VRT mosaic (2*tile wide, tile high).

    The mosaic's pixels equal `pattern(tile, 2 * tile, seed=seed)`."""
    folder = Path(folder)
    whole = pattern(tile, 2 * tile, seed=seed)                            # (3, tile, 2*tile)
    tiles = []
    for i in range(2):
        origin = (ORIGIN[0] + i * tile * RES, ORIGIN[1])
        tiles.append(write_raster(folder / f"tile_{i}.tif", whole[:, :, i * tile:(i + 1) * tile],
                                  transform=grid(origin)))
    return write_vrt_mosaic(folder / "mosaic.vrt", tiles), tiles


def write_uint16_bgrn(path: str | Path, *, size: int = 64, seed: int = 0) -> Path:
    """A 16-bit 4-band raster ordered blue, green, red, NIR (colorinterp red/green/blue on bands 3,2,1)."""
    ci = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    return write_raster(path, pattern(size, size, 4, dtype="uint16", seed=seed), colorinterp=ci,
                        photometric="MINISBLACK")


def write_float_with_holes(path: str | Path, *, size: int = 64, nodata: float = -9999.0, seed: int = 0) -> Path:
    """A 3-band float32 raster in 0..1 with NaN in the top-left quarter and `nodata` in the
    bottom-right quarter (both must be treated as invalid)."""
    data = pattern(size, size, 3, dtype="float32", seed=seed)
    half = size // 2
    data[:, :half, :half] = np.nan
    data[:, half:, half:] = nodata
    return write_raster(path, data, nodata=nodata)


def write_big_mosaic(folder: str | Path, *, size: int = 20_000, tile: int = 256, seed: int = 0) -> Path:
    """A `size` x `size` VRT made of two small tiles at opposite corners: huge extent, tiny files.

    Reading it whole at full resolution would need size*size*3 bytes; a window over one corner
    tile must only touch that tile."""
    folder = Path(folder)
    corners = [(0, 0), (size - tile, size - tile)]                        # (col, row) of each tile
    tiles = []
    for i, (col, row) in enumerate(corners):
        origin = (ORIGIN[0] + col * RES, ORIGIN[1] - row * RES)
        tiles.append(write_raster(folder / f"corner_{i}.tif", pattern(tile, tile, seed=seed + i),
                                  transform=grid(origin), tiled=True, blockxsize=256, blockysize=256))
    return write_vrt_mosaic(folder / "big.vrt", tiles)


def write_big_sparse_geotiff(path: str | Path, *, size: int = 20_000, tile: int = 256, seed: int = 0) -> Path:
    """A `size` x `size` tiled, sparse RGB GeoTIFF: only the top-left block holds data, so the
    file stays a few kB (unwritten blocks read as 0)."""
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=UTM33,
                   transform=grid(), tiled=True, blockxsize=tile, blockysize=tile, sparse_ok=True,
                   compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pattern(tile, tile, seed=seed), window=((0, tile), (0, tile)))
    return Path(path)


def ground_scene(x: np.ndarray, y: np.ndarray, square: tuple[float, float, float, float] | None) -> np.ndarray:
    """The same landscape at any ground coordinates (UTM33 metres), `(3, *x.shape)` uint8: a dark
    smooth texture, plus a bright white square `(left, bottom, right, top)` when given."""
    rgb = np.stack([60 + 40 * np.sin(x / 90.0 + k) * np.cos(y / 130.0 - k) for k in range(3)])
    if square is not None:
        left, bottom, right, top = square
        inside = (x >= left) & (x < right) & (y > bottom) & (y <= top)
        rgb[:, inside] = 250
    return np.round(rgb).astype("uint8")


def write_scene(path: str | Path, *, crs: str, transform: Affine, width: int, height: int,
                square: tuple[float, float, float, float] | None = None) -> Path:
    """`ground_scene` sampled at the pixel centres of any grid, in any CRS."""
    from rasterio.warp import transform as transform_points

    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = transform * (cols.ravel(), rows.ravel())
    if rasterio.crs.CRS.from_user_input(crs) != rasterio.crs.CRS.from_user_input(UTM33):
        xs, ys = transform_points(crs, UTM33, xs, ys)
    x = np.asarray(xs).reshape(height, width)
    y = np.asarray(ys).reshape(height, width)
    return write_raster(path, ground_scene(x, y, square), crs=crs, transform=transform)


# A 100 m square, 20..30 px right and 30..40 px down from the corner of the default 64 px grid.
SQUARE = (ORIGIN[0] + 200.0, ORIGIN[1] - 400.0, ORIGIN[0] + 300.0, ORIGIN[1] - 300.0)


def write_pair(folder: str | Path, *, size: int = 64, square_in_before: bool = True,
               after_crs: str = "EPSG:3857", after_res: float = 9.0) -> tuple[Path, Path]:
    """A before/after pair of the same ground in different CRSs and resolutions.

    before: `size` x `size` px, 10 m, UTM33, from ORIGIN. after: `after_crs` at `after_res`,
    covering the before footprint except its left 10 % (so that strip has no after data).
    `SQUARE` is bright in the after image, and in the before image when `square_in_before`."""
    from rasterio.warp import transform_bounds

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    before = write_scene(folder / "before.tif", crs=UTM33, transform=grid(), width=size, height=size,
                         square=SQUARE if square_in_before else None)
    extent = size * RES
    left, bottom, right, top = transform_bounds(
        UTM33, after_crs, ORIGIN[0] + 0.1 * extent, ORIGIN[1] - extent - 50, ORIGIN[0] + extent + 50, ORIGIN[1] + 50)
    width, height = int(np.ceil((right - left) / after_res)), int(np.ceil((top - bottom) / after_res))
    after = write_scene(folder / "after.tif", crs=after_crs, transform=from_origin(left, top, after_res, after_res),
                        width=width, height=height, square=SQUARE)
    return before, after


def write_sample_set(folder: str | Path) -> dict[str, Path]:
    """One raster of each kind the readers must handle, for demos and integration tests."""
    folder = Path(folder)
    (folder / "mosaic").mkdir(parents=True, exist_ok=True)
    before, after = write_pair(folder / "pair")
    return {
        "geotiff": write_raster(folder / "rgb.tif", pattern(96, 128)),
        "cog": write_cog(folder / "rgb_cog.tif", pattern(96, 128, seed=1)),
        "vrt_mosaic": write_two_tile_mosaic(folder / "mosaic")[0],
        "uint16_bgrn": write_uint16_bgrn(folder / "bgrn_uint16.tif"),
        "float_holes": write_float_with_holes(folder / "float_holes.tif"),
        "png": write_png(folder / "plain.png", np.moveaxis(pattern(48, 64, seed=2), 0, -1)),
        "pair_before": before,
        "pair_after": after,
    }


def write_video(path: str | Path, frames: np.ndarray, *, fps: int = 24) -> Path:
    """A near-lossless video of `frames` `(N, H, W, 3)` uint8 (H and W even)."""
    from ..data.synthetic.video import write_mp4

    return write_mp4(path, frames, fps, near_lossless=True)
