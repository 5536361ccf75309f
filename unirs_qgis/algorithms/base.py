"""What the UniRS algorithms share: engine call with progress/cancel, layer export, CRS/extent helpers."""

from __future__ import annotations

import os
from typing import Any

from qgis.core import (QgsCoordinateReferenceSystem, QgsFeature, QgsFeatureSink, QgsProcessingAlgorithm,
                       QgsProcessingException, QgsProcessingFeedback, QgsProcessingParameterDateTime,
                       QgsRasterLayer, QgsRectangle)
from qgis.PyQt.QtCore import QCoreApplication, QDate
from qgis.PyQt.QtGui import QIcon

from unirs_qgis import ICON_PATH
from unirs_qgis.dates import layer_date
from unirs_qgis.engine_link import get_client
from unirs_qgis.layer_source import LayerReadError, raster_path_for_engine

CANCELLED = "Cancelled: no output was written"
PREPARED = 10.0  # % of progress when inputs are ready and the engine starts (0% is never reported)


def crs_for_engine(crs: QgsCoordinateReferenceSystem) -> str:
    """A CRS string rasterio's CRS.from_user_input reads: "EPSG:n" when there is one, else WKT."""
    return crs.authid() if crs.authid().upper().startswith("EPSG:") else crs.toWkt()


def crs_label(crs: QgsCoordinateReferenceSystem) -> str:
    return crs.authid() or crs.description()


def bounds_of(extent: QgsRectangle) -> tuple[float, float, float, float]:
    return (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())


class UniRSAlgorithm(QgsProcessingAlgorithm):
    """Base class: group, icon, and the engine round trip. Subclasses declare params and write output."""

    def __init__(self):
        super().__init__()
        self._temporary: list[str] = []  # exported layer files, removed after the run

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("UniRS", text)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def group(self) -> str:
        return self.tr("Vision-language")

    def groupId(self) -> str:  # noqa: N802
        return "vision_language"

    def icon(self) -> QIcon:
        return QIcon(ICON_PATH)

    def processAlgorithm(self, parameters: dict, context, feedback: QgsProcessingFeedback) -> dict:  # noqa: N802
        try:
            return self.process(parameters, context, feedback)
        finally:
            for path in self._temporary:
                if os.path.exists(path):
                    os.remove(path)
            self._temporary.clear()

    def process(self, parameters: dict, context, feedback: QgsProcessingFeedback) -> dict:
        """The algorithm proper (processAlgorithm wraps it to remove exported layers afterwards)."""
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------------

    def raster_layer(self, parameters: dict, name: str, context) -> QgsRasterLayer:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        return layer

    def add_date_parameters(self) -> None:
        """DATE_BEFORE / DATE_AFTER: optional, defaulting to the layers' own dates."""
        for name, label in (("DATE_BEFORE", "Date of BEFORE"), ("DATE_AFTER", "Date of AFTER")):
            self.addParameter(QgsProcessingParameterDateTime(
                name, self.tr(f"{label} (default: from the layer)"), QgsProcessingParameterDateTime.Date,
                optional=True))

    def dated_pair(self, parameters: dict, context, before: QgsRasterLayer, after: QgsRasterLayer,
                   feedback: QgsProcessingFeedback
                   ) -> tuple[QgsRasterLayer, QgsRasterLayer, QDate | None, QDate | None]:
        """(before, after, date_before, date_after), dates given or read from the layers; swapped with a
        warning when AFTER is the older one."""
        dates = []
        for name, layer in (("DATE_BEFORE", before), ("DATE_AFTER", after)):
            given = self.parameterAsDateTime(parameters, name, context)  # (no parameterAsDate on 3.22)
            dates.append(given.date() if given.isValid() else layer_date(layer))
        date_before, date_after = dates
        if date_before and date_after and date_after < date_before:
            feedback.pushWarning(f"'{after.name()}' ({date_after.toString('yyyy-MM-dd')}) is older than "
                                 f"'{before.name()}' ({date_before.toString('yyyy-MM-dd')}): swapped them")
            return after, before, date_after, date_before
        return before, after, date_before, date_after

    def extent(self, parameters: dict, context, fallback_crs: QgsCoordinateReferenceSystem
               ) -> tuple[QgsRectangle | None, QgsCoordinateReferenceSystem]:
        """(extent or None when not given, its CRS; the fallback when the extent names none)."""
        rect = self.parameterAsExtent(parameters, "EXTENT", context)
        if rect is None or rect.isNull() or rect.isEmpty():
            return None, fallback_crs
        crs = self.parameterAsExtentCrs(parameters, "EXTENT", context)
        return rect, crs if crs.isValid() else fallback_crs

    def engine_path(self, layer: QgsRasterLayer, extent: QgsRectangle | None,
                    extent_crs: QgsCoordinateReferenceSystem, feedback: QgsProcessingFeedback) -> str:
        """A file the engine can open for `layer` (non-file layers are exported over `extent`)."""
        try:
            path, temporary = raster_path_for_engine(layer, extent, extent_crs, feedback)
        except LayerReadError as e:
            raise QgsProcessingException(str(e)) from e
        if temporary:
            self._temporary.append(path)
            feedback.pushInfo(f"Layer '{layer.name()}' ({layer.providerType()}) exported to {path}")
        return path

    def call_engine(self, method: str, feedback: QgsProcessingFeedback, *args, **kwargs) -> dict[str, Any]:
        """client.<method>(*args, **kwargs) with progress and cancel wired to `feedback`."""
        from unirs_engine.worker.client import EngineClientError, RequestCancelled

        def on_progress(fraction: float, message: str) -> None:
            feedback.setProgress(PREPARED + (100.0 - PREPARED) * fraction)
            if message:
                feedback.setProgressText(message)

        if feedback.isCanceled():
            raise QgsProcessingException(CANCELLED)
        try:
            client = get_client()
            result = getattr(client, method)(*args, on_progress=on_progress,
                                             is_cancelled=feedback.isCanceled, **kwargs)
        except RequestCancelled as e:
            raise QgsProcessingException(CANCELLED) from e
        except (EngineClientError, RuntimeError, ValueError, OSError) as e:
            raise QgsProcessingException(f"UniRS engine: {e}") from e
        if feedback.isCanceled():  # cancelled just as the answer arrived: still write nothing
            raise QgsProcessingException(CANCELLED)
        total = (result.get("timings") or {}).get("total_s")
        feedback.pushInfo(f"{result.get('model_id')} on {result.get('device')}"
                          + (f" answered in {total:.1f} s" if total is not None else ""))
        return result

    def write_feature(self, parameters: dict, context, feature: QgsFeature, wkb_type,
                      crs: QgsCoordinateReferenceSystem) -> str:
        """Create the OUTPUT sink (only now, so a cancelled or failed run leaves no file) and add one
        feature; returns the destination id."""
        sink, dest_id = self.parameterAsSink(parameters, "OUTPUT", context, feature.fields(), wkb_type, crs)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, "OUTPUT"))
        if not sink.addFeature(feature, QgsFeatureSink.FastInsert):
            raise QgsProcessingException(f"Could not write the answer to OUTPUT: {sink.lastError()}")
        return dest_id
