"""Acquisition dates of raster layers: from layer metadata, the GeoTIFF date tag, or the name."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
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


def dated(layer: QgsMapLayer) -> tuple[QDate | None, str]:
    """(date, where it was found) of `layer`, trying the layer metadata, the TIFF date tag, the layer
    name, then the file name; (None, "") when none has a date."""
    for source, find in (("layer metadata", _metadata_date), ("TIFF date tag", _tiff_date),
                         ("layer name", lambda lyr: date_in_text(lyr.name())),
                         ("file name", lambda lyr: date_in_text(os.path.basename(lyr.source())))):
        found = find(layer)
        if found is not None:
            return found, source
    return None, ""


def layer_date(layer: QgsMapLayer) -> QDate | None:
    """Best known date of `layer` (see dated)."""
    return dated(layer)[0]


def iso(date: QDate | None) -> str:
    return date.toString("yyyy-MM-dd") if date is not None and date.isValid() else "no date"


def describe_dates(layers: Sequence[QgsMapLayer]) -> str:
    """E.g. "'site_a': 2019-05-14 (layer name); 'site_b': no date" for a log line."""
    parts = []
    for layer in layers:
        date, source = dated(layer)
        parts.append(f"'{layer.name()}': {iso(date)}" + (f" ({source})" if source else ""))
    return "; ".join(parts)


def order_by_date(layers: Sequence[QgsMapLayer]) -> list[QgsMapLayer]:
    """Dated layers oldest first, then undated layers in their given order."""
    dates = [(layer_date(layer), i, layer) for i, layer in enumerate(layers)]
    known = sorted((d.toJulianDay(), i, layer) for d, i, layer in dates if d is not None)
    return [layer for _, _, layer in known] + [layer for d, _, layer in dates if d is None]


def undated_warning(layers: Sequence[QgsMapLayer]) -> str | None:
    """The warning for a sequence with undated frames (None when all are dated)."""
    undated = [f"'{layer.name()}'" for layer in layers if layer_date(layer) is None]
    if not undated:
        return None
    return (f"No date found for {', '.join(undated)}: sent last, in the given order; put a date in "
            "their names (e.g. name_2021-06-30) to order them")


@dataclass
class DatedPair:
    """A before/after pair in date order, as the dock and the Processing algorithms use it."""

    before: QgsMapLayer
    after: QgsMapLayer
    date_before: QDate | None
    date_after: QDate | None
    swapped: bool = False     # the given pair was in the wrong order

    def warnings(self, before_field: str, after_field: str) -> list[str]:
        """One line per thing the user should know: a swap, or a missing date (naming the field
        where it can be given)."""
        lines = []
        if self.swapped:
            lines.append(f"'{self.before.name()}' ({iso(self.date_before)}) is older than "
                         f"'{self.after.name()}' ({iso(self.date_after)}): swapped them, before is now "
                         f"'{self.before.name()}'")
        for layer, date, field in ((self.before, self.date_before, before_field),
                                   (self.after, self.date_after, after_field)):
            if date is None:
                lines.append(f"No date found for '{layer.name()}': the order you chose is kept; give its "
                             f"date in '{field}' or put one in its name (e.g. {layer.name()}_2021-06-30)")
        return lines


def dated_pair(before: QgsMapLayer, after: QgsMapLayer, date_before: QDate | None = None,
               date_after: QDate | None = None) -> DatedPair:
    """The pair with its dates (the given ones, else the layers' own) in date order: swapped when
    `after` is the older one. Undated layers keep the given order."""
    date_before = date_before if date_before is not None and date_before.isValid() else layer_date(before)
    date_after = date_after if date_after is not None and date_after.isValid() else layer_date(after)
    if date_before is not None and date_after is not None and date_after < date_before:
        return DatedPair(after, before, date_after, date_before, swapped=True)
    return DatedPair(before, after, date_before, date_after)
