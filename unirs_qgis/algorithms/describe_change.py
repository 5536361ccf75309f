"""unirs:describe_change — describe what changed between two dated raster layers."""

from __future__ import annotations

from qgis.core import (QgsProcessing, QgsProcessingParameterExtent, QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString, QgsWkbTypes)

from unirs_qgis.algorithms.base import UniRSAlgorithm, bounds_of, crs_for_engine
from unirs_qgis.answers import change_fields, change_details, feature_from_result, footprint_crs


class DescribeChangeAlgorithm(UniRSAlgorithm):
    def name(self) -> str:
        return "describe_change"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Describe change between two dated layers")

    def summary(self) -> str:
        return ("Describes what changed between two dated raster layers and writes the caption, a changed "
                "flag and the dates as a feature with the footprint compared. The layers may differ in CRS "
                "and resolution: the after layer is aligned on the before layer's grid. The dates found, "
                "and where, are written to the log; when the after layer is the older one the two are "
                "swapped, with a warning. A UniRS model compares the dates through its Change Extraction "
                "module; a model without one (VILA-1.5) reads them as two images in one prompt. The "
                "feature's pair_mode says which, score and score_kind give the change score.")

    def parameter_help(self) -> dict[str, str]:
        return {"BEFORE": "the older layer",
                "AFTER": "the newer layer",
                "EXTENT": "the part to compare; empty: where the two layers overlap",
                "DATE_BEFORE": "empty: the layer's metadata, its TIFF date tag, or a date in its name "
                               "(2021-06-30, 20210630, 2021_06_30)",
                "DATE_AFTER": "as for the before layer",
                "INSTRUCTION": "your own instruction instead of the model's change-caption one",
                "OUTPUT": "a GeoPackage (or any vector format) with one feature per description"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", self.tr("Before")))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", self.tr("After")))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", self.tr("Extent (default: the overlap)"),
                                                       optional=True))
        self.add_date_parameters()
        self.addParameter(QgsProcessingParameterString(
            "INSTRUCTION", self.tr("Instruction (default: the model's change-caption instruction)"),
            optional=True))
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", self.tr("Change descriptions"),
                                                            QgsProcessing.TypeVectorPolygon))

    def process(self, parameters, context, feedback) -> dict:
        before, after, date_before, date_after = self.dated_pair(
            parameters, context, self.raster_layer(parameters, "BEFORE", context),
            self.raster_layer(parameters, "AFTER", context), feedback)
        instruction = self.parameterAsString(parameters, "INSTRUCTION", context).strip() or None
        extent, extent_crs = self.extent(parameters, context, before.crs())

        before_path = self.engine_path(before, extent, extent_crs, feedback)
        after_path = self.engine_path(after, extent, extent_crs, feedback)
        result = self.call_engine(
            "describe_change", feedback, before_path, after_path, instruction=instruction,
            bounds=bounds_of(extent) if extent else None,
            bounds_crs=crs_for_engine(extent_crs) if extent else None)
        feedback.pushInfo(f"Change: {result['answer']}")
        feedback.pushInfo(change_details(result))

        crs = footprint_crs(result)
        feature = feature_from_result(result, change_fields(), dest_crs=crs,
                                      date_before=date_before, date_after=date_after,
                                      layer_before=before.name(), layer_after=after.name())
        wkb = QgsWkbTypes.Polygon if crs.isValid() else QgsWkbTypes.NoGeometry
        return {"OUTPUT": self.write_feature(parameters, context, feature, wkb, crs, "change")}
