"""Acquisition dates of raster layers: from layer metadata, the GeoTIFF date tag, or the name."""

from __future__ import annotations

import os
import re
from typing import Sequence

from osgeo import gdal
from qgis.core import QgsMapLayer, QgsRasterLayer
from qgis.PyQt.QtCore import QDate

# 2021-06-30, 2021_06_30, 20210630 (not inside a longer run of digits)
_DATE_IN_TEXT = re.compile(r"(?<!\d)((?:19|20)\d\d)([-_]?)(\d\d)\2(\d\d)(?!\d)")
# GDAL exposes TIFF DateTime as "YYYY:MM:DD HH:MM:SS"
_TIFF_DATETIME = re.compile(r"^(\d{4}):(\d\d):(\d\d)")


def date_in_text(text: str) -> QDate | None:
    """The first valid date written as YYYY-MM-DD, YYYY_MM_DD or YYYYMMDD in `text`."""
    for m in _DATE_IN_TEXT.finditer(text):
        d = QDate(int(m.group(1)), int(m.group(3)), int(m.group(4)))
        if d.isValid():
            return d
    return None


def _metadata_date(layer: QgsMapLayer) -> QDate | None:
    """Start of the temporal extent in the layer metadata, or of an active fixed temporal range."""
    for period in layer.metadata().extent().temporalExtents():
        if period.begin().isValid():
            return period.begin().date()
    props = layer.temporalProperties()
    if props is not None and props.isActive() and hasattr(props, "fixedTemporalRange"):
        begin = props.fixedTemporalRange().begin()
        if begin.isValid():
            return begin.date()
    return None


def _tiff_date(layer: QgsMapLayer) -> QDate | None:
    """The TIFFTAG_DATETIME of a file-backed GDAL layer (what many sensors stamp)."""
    if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
        return None
    if not os.path.isfile(layer.source()):
        return None
    ds = gdal.Open(layer.source())
    stamp = ds.GetMetadataItem("TIFFTAG_DATETIME") if ds is not None else None
    m = _TIFF_DATETIME.match(stamp or "")
    if m:
        d = QDate(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return d if d.isValid() else None
    return None


def layer_date(layer: QgsMapLayer) -> QDate | None:
    """Best known date of `layer`: metadata, then TIFF date tag, then layer name, then file name."""
    return (_metadata_date(layer) or _tiff_date(layer) or date_in_text(layer.name())
            or date_in_text(os.path.basename(layer.source())))


def order_by_date(layers: Sequence[QgsMapLayer]) -> list[QgsMapLayer]:
    """Dated layers oldest first, then undated layers in their given order."""
    dated = [(layer_date(layer), i, layer) for i, layer in enumerate(layers)]
    known = sorted((d.toJulianDay(), i, layer) for d, i, layer in dated if d is not None)
    return [layer for _, _, layer in known] + [layer for d, _, layer in dated if d is None]
