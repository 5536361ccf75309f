"""Turn any QGIS raster layer into a file the engine (another process) can open.

A file-backed GDAL layer is passed by path (unless asked to clip it: requests without bounds, like a
sequence, get only the extent that way). Anything else (WMS/XYZ tiles, in-memory GDAL datasets,
/vsimem/ files, other providers) is pulled through its QGIS data provider over the requested extent
and written to a temporary GeoTIFF with QgsRasterFileWriter.
"""

from __future__ import annotations

import math
import os
import tempfile

from osgeo import gdal
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeedback, QgsProject,
                       QgsRasterBlockFeedback, QgsRasterDataProvider, QgsRasterFileWriter, QgsRasterLayer,
                       QgsRasterPipe, QgsRectangle)

from unirs_engine.errors import UnirsError

from .temp_files import TempFolderError, make_private, private_temp_dir

MAX_SIDE = 4096         # pixels: cap on the long side of an export at native resolution
RENDER_SIDE = 1024      # pixels: long side for providers without a native grid (WMS/XYZ)


class LayerReadError(UnirsError, RuntimeError):
    """The layer cannot be turned into something the engine can read."""


def why_unreadable(source: str) -> str:
    """Why GDAL cannot open `source` as a raster, said plainly (QGIS only reports "not found")."""
    path = source.split("|", 1)[0]
    if path.startswith("/vsi") or "://" in path:
        reason = "cannot be read"
    elif not os.path.exists(path):
        reason = "does not exist"
    elif os.path.isdir(path):
        reason = "is a directory, not a raster file"
    elif os.path.getsize(path) == 0:
        reason = "is empty (0 bytes)"
    elif not os.access(path, os.R_OK):
        reason = "is not readable (permission denied)"
    else:
        reason = "is not a raster GDAL can read"
    return f"{path} {reason}"


def is_file_backed(layer: QgsRasterLayer) -> bool:
    """True when the engine can open layer.source() itself."""
    return layer.providerType() == "gdal" and os.path.isfile(layer.source())


def _extent_in_layer_crs(layer: QgsRasterLayer, extent: QgsRectangle | None,
                         extent_crs: QgsCoordinateReferenceSystem | None) -> QgsRectangle:
    if extent is None or extent.isNull() or extent.isEmpty():
        return layer.extent()
    if extent_crs is not None and extent_crs.isValid() and extent_crs != layer.crs():
        transform = QgsCoordinateTransform(extent_crs, layer.crs(), QgsProject.instance())
        extent = transform.transformBoundingBox(extent)
    clipped = extent.intersect(layer.extent())
    if clipped.isEmpty():
        raise LayerReadError(f"layer '{layer.name()}': the extent does not overlap the layer")
    return clipped


def _has_grid(provider: QgsRasterDataProvider) -> bool:
    """True for providers with a native pixel grid (GDAL...), False for WMS/XYZ renderings."""
    return bool(provider.capabilities() & QgsRasterDataProvider.Size)


def _snap_to_grid(layer: QgsRasterLayer, area: QgsRectangle) -> QgsRectangle:
    """Grow `area` to whole pixels of the layer's grid, so the export copies pixels, not resamples."""
    full = layer.extent()
    rx, ry = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    x0 = full.xMinimum() + math.floor((area.xMinimum() - full.xMinimum()) / rx + 1e-9) * rx
    x1 = full.xMinimum() + math.ceil((area.xMaximum() - full.xMinimum()) / rx - 1e-9) * rx
    y1 = full.yMaximum() - math.floor((full.yMaximum() - area.yMaximum()) / ry + 1e-9) * ry
    y0 = full.yMaximum() - math.ceil((full.yMaximum() - area.yMinimum()) / ry - 1e-9) * ry
    return QgsRectangle(x0, y0, x1, y1).intersect(full)


def _output_size(provider: QgsRasterDataProvider, layer: QgsRasterLayer,
                 extent: QgsRectangle) -> tuple[int, int]:
    """(columns, rows): the native grid over `extent` if the provider has one, else a rendering size."""
    if _has_grid(provider):
        cols = extent.width() / layer.rasterUnitsPerPixelX()
        rows = extent.height() / layer.rasterUnitsPerPixelY()
        side = MAX_SIDE
    else:
        cols, rows = extent.width(), extent.height()
        side = RENDER_SIDE
    scale = min(1.0, side / max(cols, rows))
    return max(1, round(cols * scale)), max(1, round(rows * scale))


def _block_feedback(feedback: QgsFeedback | None) -> QgsRasterBlockFeedback:
    """The writer wants a QgsRasterBlockFeedback: one that follows `feedback`'s cancel."""
    block = QgsRasterBlockFeedback()
    if feedback is not None:
        feedback.canceled.connect(block.cancel)
        if feedback.isCanceled():
            block.cancel()
    return block


def raster_path_for_engine(layer: QgsRasterLayer, extent: QgsRectangle | None = None,
                           extent_crs: QgsCoordinateReferenceSystem | None = None,
                           feedback: QgsFeedback | None = None, clip: bool = False) -> tuple[str, bool]:
    """(path, is_temporary): the layer's own file, or a temporary GeoTIFF of `extent` (given in
    `extent_crs`, default the layer's CRS; None = whole layer). With `clip` a file layer is exported
    over `extent` too. The caller deletes temporary files."""
    if layer is None or not layer.isValid():
        name = layer.name() if layer is not None else "<none>"
        raise LayerReadError(f"layer '{name}' is not a valid raster layer")
    if is_file_backed(layer) and not (clip and extent is not None):
        return layer.source(), False

    area = _extent_in_layer_crs(layer, extent, extent_crs)
    if feedback is not None and feedback.isCanceled():
        raise LayerReadError(f"layer '{layer.name()}': export cancelled")
    if is_file_backed(layer):
        return _write_temporary(lambda partial: _cut_file(layer, area, partial)), True
    if layer.dataProvider() is None or not layer.dataProvider().isValid():
        raise LayerReadError(f"layer '{layer.name()}' ({layer.providerType()}): provider cannot be read")
    provider = layer.dataProvider().clone()  # a private copy: safe to read off the main thread
    if _has_grid(provider):
        area = _snap_to_grid(layer, area)
    cols, rows = _output_size(provider, layer, area)
    pipe = QgsRasterPipe()
    if not pipe.set(provider):
        raise LayerReadError(f"layer '{layer.name()}' ({layer.providerType()}): cannot build a raster pipe")

    def write(partial: str) -> None:
        writer = QgsRasterFileWriter(partial)
        writer.setOutputFormat("GTiff")
        error = writer.writeRaster(pipe, cols, rows, area, layer.crs(),
                                   QgsProject.instance().transformContext(), _block_feedback(feedback))
        if feedback is not None and feedback.isCanceled():
            raise LayerReadError(f"layer '{layer.name()}': export cancelled")
        if error != QgsRasterFileWriter.NoError or not os.path.isfile(partial):
            raise LayerReadError(f"layer '{layer.name()}' ({layer.providerType()}): could not be read "
                                 f"(QgsRasterFileWriter error {int(error)})")

    return _write_temporary(write), True


def _cut_file(layer: QgsRasterLayer, area: QgsRectangle, partial: str) -> None:
    """Copy the pixels of the layer's file under `area` (grown to whole pixels) with GDAL: the same
    values on the same grid, and no QGIS provider object shared with the canvas's renderers."""
    src = gdal.Open(layer.source())
    if src is None:
        raise LayerReadError(f"layer '{layer.name()}': cannot open {layer.source()}")
    x0, dx, _, y0, _, dy = src.GetGeoTransform()
    col0 = max(0, math.floor((area.xMinimum() - x0) / dx + 1e-9))
    col1 = min(src.RasterXSize, math.ceil((area.xMaximum() - x0) / dx - 1e-9))
    row0 = max(0, math.floor((area.yMaximum() - y0) / dy + 1e-9))
    row1 = min(src.RasterYSize, math.ceil((area.yMinimum() - y0) / dy - 1e-9))
    if col1 <= col0 or row1 <= row0:
        raise LayerReadError(f"layer '{layer.name()}': the extent does not overlap the layer")
    if gdal.Translate(partial, src, format="GTiff", srcWin=[col0, row0, col1 - col0, row1 - row0]) is None:
        raise LayerReadError(f"layer '{layer.name()}': could not cut {layer.source()}: {gdal.GetLastErrorMsg()}")


def _write_temporary(write) -> str:
    """A temporary GeoTIFF written by `write(partial_path)`: written whole, then moved, so no half
    file is ever under the returned path."""
    try:
        folder = private_temp_dir()
    except (OSError, TempFolderError) as exc:
        raise LayerReadError(f"no private temporary folder for the layer export: {exc}") from exc
    fd, path = tempfile.mkstemp(prefix="layer_", suffix=".tif", dir=folder)   # 0600
    os.close(fd)
    partial = path[:-4] + ".part.tif"
    try:
        write(partial)
        make_private(partial)
        os.replace(partial, path)
    except BaseException:
        for leftover in (partial, path):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
    return path
