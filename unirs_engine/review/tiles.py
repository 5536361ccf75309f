"""Read tile pairs of a review plan, window by window, on a thread that stays a bounded step ahead.

Both mosaics are seen through rasterio WarpedVRTs onto the common grid; a tile is read decimated to at
most `max_side` pixels a side, so memory holds at most prefetch batches (+ the one being built).
"""

from __future__ import annotations

import queue
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from ..inputs.pair import blank_outside_common
from ..inputs.raster import fit_shape, open_raster, read_rgb, select_bands
from ..types import Chip, GeoRef
from .grid import ReviewPlan
from .job import ReviewError, ReviewJob

_LATTICE = np.linspace(0.0, 1.0, 5)  # where a tile is probed against a mosaic's footprint
_POLL_S = 0.1                         # how often a blocked reader looks for close()
_DONE = object()
READ_CACHE_BYTES = 32 * 2**20         # GDAL block cache while reviewing (tiles are read once, in order)


@dataclass
class TilePair:
    index: int
    row: int
    col: int
    bounds: tuple[float, float, float, float]   # in the grid CRS
    before: Chip                                # (h, w, 3) uint8, h, w <= max_side
    after: Chip


@dataclass
class TileBatch:
    """batch_size consecutive tiles: the pairs to score, and how many were skipped and why."""

    stop: int                                   # index of the tile after this batch
    pairs: list[TilePair] = field(default_factory=list)
    skipped_nodata: int = 0
    skipped_outside: int = 0


class _Date:
    """One mosaic seen on the grid: its WarpedVRT, bands, and footprint for the outside test."""

    def __init__(self, path: str, src, plan: ReviewPlan, bands):
        self.path = path
        self.indexes = select_bands(src, path, bands)
        self.crs, self.grid_crs = src.crs, CRS.from_wkt(plan.crs)
        self.to_pixel = ~src.transform
        self.width, self.height = src.width, src.height
        # Without nodata or alpha the warper needs an added alpha band to mark pixels outside the mosaic.
        self.vrt = WarpedVRT(src, crs=self.grid_crs, transform=Affine(*plan.transform), width=plan.width,
                             height=plan.height, resampling=Resampling.bilinear,
                             add_alpha=src.nodata is None and ColorInterp.alpha not in src.colorinterp)

    def read(self, window: Window, out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        return read_rgb(self.vrt, self.indexes, window=window, out_shape=out_shape)  # (h, w, 3), (h, w)

    def outside(self, bounds) -> bool:
        """True when no point of a 5 x 5 lattice over the tile (corners included) is on this mosaic."""
        left, bottom, right, top = bounds
        xs, ys = np.meshgrid(left + _LATTICE * (right - left), bottom + _LATTICE * (top - bottom))
        xs, ys = xs.ravel().tolist(), ys.ravel().tolist()
        if self.crs != self.grid_crs:
            xs, ys = transform_points(self.grid_crs, self.crs, xs, ys)
        cols, rows = self.to_pixel * (np.asarray(xs), np.asarray(ys))
        on = (cols >= 0) & (cols <= self.width) & (rows >= 0) & (rows <= self.height)
        return not on.any()


def batch_ranges(start: int, total: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of the batches from tile `start`: each ends at a multiple of batch_size (or the
    last tile), so a review resumed or split across workers batches its tiles as one run does."""
    stops = range((start // batch_size + 1) * batch_size, total, batch_size)
    edges = [start, *stops, total] if start < total else [start]
    return list(zip(edges[:-1], edges[1:]))


class TileReader:
    """Iterate TileBatches of `plan` from tile `start`; `with TileReader(...) as r: for b in r: ...`."""

    def __init__(self, job: ReviewJob, plan: ReviewPlan, *, start: int, max_side: int):
        if job.batch_size is None:
            raise ValueError("TileReader needs the job's batch size (run_review gives it the engine's)")
        self.job, self.plan, self.start, self.max_side = job, plan, start, max_side
        self.queue: queue.Queue = queue.Queue(maxsize=job.prefetch)   # holds <= prefetch batches
        self.tiles_read = 0                                            # tiles read so far (diagnostics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="unirs-review-reader", daemon=True)

    def __enter__(self) -> "TileReader":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise ReviewError(f"reading tiles failed: {item}") from item
            yield item

    # reader thread
    def _put(self, item) -> bool:
        """Block until the queue has room or close() is called; False when closed."""
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        job, plan = self.job, self.plan
        try:
            with TileSource(job, plan, max_side=self.max_side) as source:
                for start, stop in batch_ranges(self.start, plan.total_tiles, job.batch_size):
                    if self._stop.is_set():
                        return
                    batch = source.read(start, stop)
                    self.tiles_read += stop - start
                    if not self._put(batch):
                        return
        except Exception as exc:  # handed to the consumer, which raises it as a ReviewError
            self._put(exc)
            return
        self._put(_DONE)


class TileSource:
    """Both mosaics of a review opened on its grid: `read(start, stop)` gives the TileBatch of tiles
    [start, stop). Used by TileReader's thread, and by archive workers that read their own batches
    (review/archive.py). `with TileSource(job, plan, max_side=...) as source: ...`"""

    def __init__(self, job: ReviewJob, plan: ReviewPlan, *, max_side: int):
        self.job, self.plan, self.max_side = job, plan, max_side
        self._stack = ExitStack()
        self.dates: list[_Date] = []

    def __enter__(self) -> "TileSource":
        try:
            # GDAL's block cache defaults to 5 % of RAM and would grow with the mosaic: bound it.
            self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=READ_CACHE_BYTES))
            for path in (self.job.before, self.job.after):
                src = self._stack.enter_context(open_raster(path))
                date = _Date(path, src, self.plan, self.job.bands)
                self._stack.enter_context(date.vrt)
                self.dates.append(date)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def read(self, start: int, stop: int) -> TileBatch:
        batch = TileBatch(stop=stop)
        for index in range(start, stop):
            self._read_tile(index, batch)
        return batch

    def _read_tile(self, index: int, batch: TileBatch) -> None:
        dates = self.dates
        row, col, window = self.plan.window(index)
        bounds = self.plan.bounds(window)
        out_shape = fit_shape(int(window.height), int(window.width), self.max_side)     # (h, w)
        reads = [d.read(window, out_shape) for d in dates]                              # [(image, valid)] x 2
        if any(not valid.any() and d.outside(bounds) for d, (_, valid) in zip(dates, reads)):
            batch.skipped_outside += 1
            return
        valid_in_both = reads[0][1] & reads[1][1]                                      # (h, w)
        if valid_in_both.mean() < self.job.min_valid:
            batch.skipped_nodata += 1
            return
        scale = Affine.scale(window.width / out_shape[1], window.height / out_shape[0])
        transform = tuple(Affine(*self.plan.transform) * Affine.translation(window.col_off, window.row_off)
                          * scale)[:6]
        before, after = (Chip(image, GeoRef(d.path, self.plan.crs, bounds, transform, out_shape[1],
                                            out_shape[0], d.indexes), valid)
                         for d, (image, valid) in zip(dates, reads))
        batch.pairs.append(TilePair(index, row, col, bounds, *blank_outside_common(before, after)))
