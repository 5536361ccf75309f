"""unirs:ask — ask a question about (an extent of) a raster layer."""

from __future__ import annotations

from qgis.core import (QgsProcessing, QgsProcessingException, QgsProcessingParameterBoolean,
                       QgsProcessingParameterExtent, QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsRasterLayer, QgsWkbTypes)

from unirs_qgis.algorithms.base import UniRSAlgorithm, bounds_of, crs_for_engine, crs_label
from unirs_qgis.answers import ASK_FIELDS, feature_from_result, footprint_crs


def parse_bands(text: str, layer: QgsRasterLayer) -> tuple[int, ...] | None:
    """ "4,3,2" -> (4, 3, 2) as R, G, B (order kept: false colour is a choice); "" -> None (the
    engine picks the colour bands)."""
    text = text.strip()
    if not text:
        return None
    try:
        bands = tuple(int(part) for part in text.replace(" ", ",").split(",") if part)
    except ValueError:
        raise QgsProcessingException(f"BANDS: expected band numbers like 4,3,2, got {text!r}") from None
    if len(bands) not in (1, 3):
        raise QgsProcessingException(f"BANDS: give 1 or 3 band numbers (R,G,B), got {text!r}")
    bad = [b for b in bands if not 1 <= b <= layer.bandCount()]
    if bad:
        raise QgsProcessingException(
            f"BANDS: layer '{layer.name()}' has bands 1..{layer.bandCount()}, got {bad}")
    return bands


class AskAlgorithm(UniRSAlgorithm):
    def name(self) -> str:
        return "ask"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Ask about a raster layer")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr("Asks the UniRS model a question about a raster layer (or an extent of it) and "
                       "writes the answer as a feature: the footprint that was looked at, with the "
                       "question, answer, model and time. BANDS picks the bands shown to the model as "
                       "R,G,B (e.g. 4,3,2); empty uses the layer's colour bands.")

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.addParameter(QgsProcessingParameterString("QUESTION", self.tr("Question"), multiLine=True))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", self.tr("Extent (default: whole layer)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterString("BANDS", self.tr("Bands as R,G,B (e.g. 4,3,2)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterBoolean("CLUE", self.tr("Ask the base model for a clue "
                                                                        "first"), defaultValue=False))
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", self.tr("Answers"),
                                                            QgsProcessing.TypeVectorPolygon))

    def process(self, parameters, context, feedback) -> dict:
        layer = self.raster_layer(parameters, "INPUT", context)
        question = self.parameterAsString(parameters, "QUESTION", context).strip()
        if not question:
            raise QgsProcessingException("QUESTION is empty: type what you want to know about the layer")
        bands = parse_bands(self.parameterAsString(parameters, "BANDS", context), layer)
        clue = self.parameterAsBoolean(parameters, "CLUE", context)
        extent, extent_crs = self.extent(parameters, context, layer.crs())

        path = self.engine_path(layer, extent, extent_crs, feedback)
        result = self.call_engine(
            "ask", feedback, path, question, bands=bands, clue=clue,
            bounds=bounds_of(extent) if extent else None,
            bounds_crs=crs_for_engine(extent_crs) if extent else None)
        feedback.pushInfo(f"Answer: {result['answer']}")

        crs = footprint_crs(result)
        feature = feature_from_result(result, ASK_FIELDS(), dest_crs=crs, question=question,
                                      layer=layer.name(), extent_crs=crs_label(extent_crs))
        wkb = QgsWkbTypes.Polygon if crs.isValid() else QgsWkbTypes.NoGeometry
        return {"OUTPUT": self.write_feature(parameters, context, feature, wkb, crs)}
