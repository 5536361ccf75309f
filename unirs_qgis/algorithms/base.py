"""What the UniRS algorithms share: help written with the dialog's labels and a help URL, engine call
with progress/cancel, layer export, dated pairs, CRS/extent helpers, and styled answer outputs."""

from __future__ import annotations

import os
from typing import Any

from qgis.core import (QgsCoordinateReferenceSystem, QgsFeature, QgsFeatureSink, QgsProcessingAlgorithm,
                       QgsProcessingException, QgsProcessingFeedback, QgsProcessingParameterDateTime,
                       QgsRasterLayer, QgsRectangle)
from qgis.PyQt.QtCore import QCoreApplication, QDate
from qgis.PyQt.QtGui import QIcon

from unirs_engine.errors import UnirsError
from unirs_qgis import ICON_PATH
from unirs_qgis.about import help_url
from unirs_qgis.answer_style import AnswerLayerStyler, style_answers_file
from unirs_qgis.dates import dated, dated_pair, iso
from unirs_qgis.engine_link import get_client, is_running, remember_info
from unirs_qgis.layer_source import LayerReadError, raster_path_for_engine, why_unreadable

CANCELLED = "Cancelled: no output was written"
PREPARED = 10.0  # % of progress when inputs are ready and the engine starts (0% is never reported)

# Post-processors must outlive processAlgorithm (QGIS holds them without a Python reference).
_stylers: dict[str, AnswerLayerStyler] = {}


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
        self._styled: tuple[str, str] | None = None  # (output, answers table) for postProcessAlgorithm

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

    def helpUrl(self) -> str:  # noqa: N802
        return help_url()

    # -- help: what the dialog shows, in its own words -------------------------------------------

    def summary(self) -> str:
        """What the algorithm does (one paragraph); parameter_help() explains the parameters."""
        raise NotImplementedError

    def parameter_help(self) -> dict[str, str]:
        """Parameter name -> what to give; shortHelpString names it by its label in the dialog."""
        return {}

    def shortHelpString(self) -> str:  # noqa: N802
        """The summary, then each parameter by its label in the dialog (bold) and what to give."""
        lines = [f"<b>{self.label(name)}</b>: {self.tr(text)}" for name, text in self.parameter_help().items()]
        return "<br><br>".join([self.tr(self.summary()), *(["<br>".join(lines)] if lines else [])])

    def label(self, name: str) -> str:
        """The dialog's label of parameter `name` (the name itself before initAlgorithm ran)."""
        definition = self.parameterDefinition(name)
        return definition.description() if definition is not None else name

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

    def checkParameterValues(self, parameters: dict, context) -> tuple[bool, str]:  # noqa: N802
        """QGIS says "<path> not found" for every raster it cannot load; say what is wrong with it."""
        ok, message = super().checkParameterValues(parameters, context)
        if ok:
            return ok, message
        for definition in self.parameterDefinitions():
            if definition.type() not in ("raster", "multilayer"):
                continue
            values = parameters.get(definition.name())
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, str) and value and self._unloadable(value, context):
                    return False, f"{definition.description()}: {why_unreadable(value)}"
        return ok, message

    @staticmethod
    def _unloadable(value: str, context) -> bool:
        """A path (not a layer of the project) that QGIS cannot load as a raster."""
        if context.getMapLayer(value) is not None:
            return False
        return not QgsRasterLayer(value, "check", "gdal").isValid()

    def raster_layer(self, parameters: dict, name: str, context) -> QgsRasterLayer:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        return layer

    def add_date_parameters(self) -> None:
        """DATE_BEFORE / DATE_AFTER: optional, defaulting to the layers' own dates."""
        for name, label in (("DATE_BEFORE", "Date of the before layer"), ("DATE_AFTER", "Date of the after layer")):
            self.addParameter(QgsProcessingParameterDateTime(
                name, self.tr(f"{label} (default: from the layer)"), QgsProcessingParameterDateTime.Date,
                optional=True))

    def dated_pair(self, parameters: dict, context, before: QgsRasterLayer, after: QgsRasterLayer,
                   feedback: QgsProcessingFeedback
                   ) -> tuple[QgsRasterLayer, QgsRasterLayer, QDate | None, QDate | None]:
        """(before, after, date_before, date_after), dates given or read from the layers, in date order:
        swapped with a warning when the after layer is the older one (the dock's rule, dates.py). The
        dates and where they came from are written to the log."""
        given, found_in = [], {}
        for name, layer in (("DATE_BEFORE", before), ("DATE_AFTER", after)):
            value = self.parameterAsDateTime(parameters, name, context)  # (no parameterAsDate on 3.22)
            given.append(value.date() if value.isValid() else None)
            found_in[id(layer)] = f"{self.label(name)} parameter" if value.isValid() else dated(layer)[1]
        pair = dated_pair(before, after, *given)
        for warning in pair.warnings(self.label("DATE_BEFORE"), self.label("DATE_AFTER")):
            feedback.pushWarning(warning)
        feedback.pushInfo("Dates: " + "; ".join(
            f"{role} '{layer.name()}' {iso(date)}" + (f" (from the {found_in[id(layer)]})" if date else "")
            for role, layer, date in (("before", pair.before, pair.date_before),
                                      ("after", pair.after, pair.date_after))))
        return pair.before, pair.after, pair.date_before, pair.date_after

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
        from unirs_engine.worker.client import RequestCancelled

        def on_progress(fraction: float, message: str) -> None:
            feedback.setProgress(PREPARED + (100.0 - PREPARED) * fraction)
            if message:
                feedback.setProgressText(message)

        if feedback.isCanceled():
            raise QgsProcessingException(CANCELLED)
        try:
            client = get_client()
            if not is_running(client):
                feedback.pushInfo("Starting the UniRS engine (loading the model)…")
            result = getattr(client, method)(*args, on_progress=on_progress,
                                             is_cancelled=feedback.isCanceled, **kwargs)
            warning = remember_info(client.info()).get("warning")
            if warning:   # a large model on the CPU: say what to expect of the next runs
                feedback.pushWarning(warning)
        except RequestCancelled as e:
            raise QgsProcessingException(CANCELLED) from e
        except UnirsError as e:   # the input's or the setup's fault; anything else is a bug: its traceback shows
            raise QgsProcessingException(f"UniRS engine: {e}") from e
        if feedback.isCanceled():  # cancelled just as the answer arrived: still write nothing
            raise QgsProcessingException(CANCELLED)
        total = (result.get("timings") or {}).get("total_s")
        feedback.pushInfo(f"{result.get('model_id')} on {result.get('device')}"
                          + (f" answered in {total:.1f} s" if total is not None else ""))
        return result

    def write_feature(self, parameters: dict, context, feature: QgsFeature, wkb_type,
                      crs: QgsCoordinateReferenceSystem, task: str) -> str:
        """Create the OUTPUT sink (only now, so a cancelled or failed run leaves no file), add one
        feature and style the output as answers of `task` (answers.TABLES); returns the destination id."""
        sink, dest_id = self.parameterAsSink(parameters, "OUTPUT", context, feature.fields(), wkb_type, crs)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, "OUTPUT"))
        if not sink.addFeature(feature, QgsFeatureSink.FastInsert):
            raise QgsProcessingException(f"Could not write the answer to OUTPUT: {sink.lastError()}")
        del sink   # flushed and closed: postProcessAlgorithm writes the style into the file
        self._styled = (dest_id, task)
        if context.willLoadLayerOnCompletion(dest_id):
            styler = _stylers[dest_id] = AnswerLayerStyler(task)
            context.layerToLoadOnCompletionDetails(dest_id).setPostProcessor(styler)
        return dest_id

    def postProcessAlgorithm(self, context, feedback) -> dict:  # noqa: N802 (main thread, after the run)
        """Save the answer style into the output GeoPackage, so it opens styled anywhere."""
        if self._styled is None:
            return {}
        output, task = self._styled
        self._styled = None
        if output.split("|", 1)[0].lower().endswith(".gpkg") and os.path.isfile(output.split("|", 1)[0]):
            try:
                style_answers_file(output, task)
            except OSError as e:   # the answer is written; a missing style is not worth failing over
                feedback.pushWarning(str(e))
        return {}
