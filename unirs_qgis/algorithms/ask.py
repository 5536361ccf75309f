"""unirs:ask — ask a question about (an extent of) a raster layer."""

from __future__ import annotations

from qgis.core import (QgsProcessing, QgsProcessingException, QgsProcessingParameterBoolean,
                       QgsProcessingParameterExtent, QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsRasterLayer, QgsWkbTypes)

from unirs_qgis.algorithms.base import UniRSAlgorithm, bounds_of, crs_for_engine, crs_label
from unirs_qgis.answers import ask_fields, feature_from_result, footprint_crs
from unirs_qgis.settings import PluginSettings

BANDS_LABEL = "Bands as R,G,B (e.g. 4,3,2)"
NO_CLUE_MODEL = ("no clue model is set: choose a Clue model directory in Raster ▸ UniRS ▸ Settings…, "
                 "or untick the clue")


def parse_bands(text: str, layer: QgsRasterLayer) -> tuple[int, ...] | None:
    """ "4,3,2" -> (4, 3, 2) as R, G, B (order kept: false colour is a choice); "" -> None (the
    engine picks the colour bands)."""
    text = text.strip()
    if not text:
        return None
    try:
        bands = tuple(int(part) for part in text.replace(" ", ",").split(",") if part)
    except ValueError:
        raise QgsProcessingException(f"{BANDS_LABEL}: expected band numbers like 4,3,2, got {text!r}") from None
    if len(bands) not in (1, 3):
        raise QgsProcessingException(f"{BANDS_LABEL}: give 1 or 3 band numbers (R,G,B), got {text!r}")
    bad = [b for b in bands if not 1 <= b <= layer.bandCount()]
    if bad:
        raise QgsProcessingException(
            f"{BANDS_LABEL}: layer '{layer.name()}' has bands 1..{layer.bandCount()}, got {bad}")
    return bands


class AskAlgorithm(UniRSAlgorithm):
    def name(self) -> str:
        return "ask"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Ask about a raster layer")

    def summary(self) -> str:
        return ("Asks the UniRS model a question about a raster layer (or an extent of it) and writes the "
                "answer as a feature: the footprint that was looked at, with the question, answer, model "
                "and time. Loaded into the project, the footprint is drawn as an outline with the answer "
                "as its label.")

    def parameter_help(self) -> dict[str, str]:
        return {"INPUT": "any raster layer: a file, a web or in-memory layer (exported for the engine)",
                "QUESTION": "what you want to know, e.g. How many buildings are there?",
                "EXTENT": "the part of the layer to look at; empty: the whole layer",
                "BANDS": "the bands shown to the model as red, green, blue (e.g. 4,3,2 for false colour, "
                         "or one band as grey); empty: the layer's colour bands",
                "SHORT_ANSWER": "ask for a word or phrase (yes/no, a number, a class), as the VQA "
                                "benchmarks and the demo model's training do; untick for a free answer",
                "CLUE": "the base model first writes a clue that the UniRS model reads; needs a Clue model "
                        "directory in Raster ▸ UniRS ▸ Settings…",
                "OUTPUT": "a GeoPackage (or any vector format) with one feature per answer"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.addParameter(QgsProcessingParameterString("QUESTION", self.tr("Question"), multiLine=True))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", self.tr("Extent (default: whole layer)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterString("BANDS", self.tr(BANDS_LABEL), optional=True))
        self.addParameter(QgsProcessingParameterBoolean("SHORT_ANSWER", self.tr("Short answer (a word or "
                                                                                "phrase)"), defaultValue=True))
        self.addParameter(QgsProcessingParameterBoolean("CLUE", self.tr("Ask the base model for a clue "
                                                                        "first"), defaultValue=False))
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", self.tr("Answers"),
                                                            QgsProcessing.TypeVectorPolygon))

    def process(self, parameters, context, feedback) -> dict:
        layer = self.raster_layer(parameters, "INPUT", context)
        question = self.parameterAsString(parameters, "QUESTION", context).strip()
        if not question:
            raise QgsProcessingException("Question is empty: type what you want to know about the layer")
        bands = parse_bands(self.parameterAsString(parameters, "BANDS", context), layer)
        clue = self.parameterAsBoolean(parameters, "CLUE", context)
        short_answer = self.parameterAsBoolean(parameters, "SHORT_ANSWER", context)
        if clue and not PluginSettings.load().clue_available():
            raise QgsProcessingException(f"{self.label('CLUE')}: {NO_CLUE_MODEL}")
        extent, extent_crs = self.extent(parameters, context, layer.crs())

        path = self.engine_path(layer, extent, extent_crs, feedback)
        result = self.call_engine(
            "ask", feedback, path, question, bands=bands, clue=clue, short_answer=short_answer,
            bounds=bounds_of(extent) if extent else None,
            bounds_crs=crs_for_engine(extent_crs) if extent else None)
        feedback.pushInfo(f"Answer: {result['answer']}")

        crs = footprint_crs(result)
        feature = feature_from_result(result, ask_fields(), dest_crs=crs, question=question,
                                      layer=layer.name(), extent_crs=crs_label(extent_crs))
        wkb = QgsWkbTypes.Polygon if crs.isValid() else QgsWkbTypes.NoGeometry
        return {"OUTPUT": self.write_feature(parameters, context, feature, wkb, crs, "ask")}
