"""unirs:describe_change — describe what changed between two dated raster layers."""

from __future__ import annotations

from qgis.core import (QgsProcessing, QgsProcessingParameterExtent, QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString, QgsWkbTypes)

from unirs_qgis.algorithms.base import UniRSAlgorithm, bounds_of, crs_for_engine
from unirs_qgis.answers import CHANGE_FIELDS, feature_from_result, footprint_crs


class DescribeChangeAlgorithm(UniRSAlgorithm):
    def name(self) -> str:
        return "describe_change"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Describe change between two dated layers")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr("Describes what changed between BEFORE and AFTER (any CRS or resolution: AFTER is "
                       "aligned on BEFORE's grid) and writes the caption, a changed flag and the dates "
                       "as a feature with the footprint compared. Dates default to the layers' metadata "
                       "or a date in their names (2021-06-30, 20210630, 2021_06_30); if AFTER is dated "
                       "earlier than BEFORE the two are swapped.")

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

        crs = footprint_crs(result)
        feature = feature_from_result(result, CHANGE_FIELDS(), dest_crs=crs,
                                      date_before=date_before, date_after=date_after,
                                      layer_before=before.name(), layer_after=after.name())
        wkb = QgsWkbTypes.Polygon if crs.isValid() else QgsWkbTypes.NoGeometry
        return {"OUTPUT": self.write_feature(parameters, context, feature, wkb, crs)}
