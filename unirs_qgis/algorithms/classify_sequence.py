"""unirs:classify_sequence — name the event shown by a dated stack of rasters or a video."""

from __future__ import annotations

import json
import os

from qgis.core import (QgsCoordinateReferenceSystem, QgsProcessing, QgsProcessingException,
                       QgsProcessingParameterFeatureSink, QgsProcessingParameterFile,
                       QgsProcessingParameterMultipleLayers, QgsProcessingParameterString, QgsWkbTypes)

from unirs_engine.prompts import ERA_CLASSES
from unirs_qgis.algorithms.base import UniRSAlgorithm
from unirs_qgis.answers import CLASSIFY_FIELDS, feature_from_result, footprint_crs
from unirs_qgis.dates import layer_date, order_by_date

VIDEO_FILTER = "Videos (*.mp4 *.avi *.mov *.mkv *.webm);;All files (*.*)"


class ClassifySequenceAlgorithm(UniRSAlgorithm):
    def name(self) -> str:
        return "classify_sequence"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Classify a dated stack or a video")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr("Names the event shown by a sequence: either LAYERS (rasters, put in date order "
                       "from their metadata or names) or a VIDEO file. The answer is matched to one of "
                       "CLASSES (comma-separated; default: the 25 ERA event classes). The output has "
                       "the stack's footprint (no geometry for a video).")

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "LAYERS", self.tr("Dated raster layers"), QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "VIDEO", self.tr("…or a video file"), QgsProcessingParameterFile.File,
            fileFilter=VIDEO_FILTER, optional=True))
        self.addParameter(QgsProcessingParameterString(
            "CLASSES", self.tr("Classes (comma-separated)"), defaultValue=", ".join(ERA_CLASSES)))
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", self.tr("Event labels"),
                                                            QgsProcessing.TypeVector))

    def process(self, parameters, context, feedback) -> dict:
        layers = self.parameterAsLayerList(parameters, "LAYERS", context)
        video = self.parameterAsFile(parameters, "VIDEO", context)
        if bool(layers) == bool(video):
            raise QgsProcessingException("Give either LAYERS (a dated stack of rasters) or VIDEO "
                                         "(a video file), not both and not neither")
        classes = [c.strip() for c in self.parameterAsString(parameters, "CLASSES", context).split(",")
                   if c.strip()]
        if not classes:
            raise QgsProcessingException("CLASSES is empty: give comma-separated class names")

        if video:
            if not os.path.isfile(video):
                raise QgsProcessingException(f"VIDEO: no such file: {video}")
            frames, names = video, {}
        else:
            ordered = order_by_date(layers)
            undated = [layer.name() for layer in ordered if layer_date(layer) is None]
            if undated:
                feedback.pushWarning(f"No date found for {undated}: kept in the given order, last")
            frames = [self.engine_path(layer, None, layer.crs(), feedback) for layer in ordered]
            names = dict(zip(frames, (layer.name() for layer in ordered)))

        result = self.call_engine("classify_sequence", feedback, frames, classes=classes)
        feedback.pushInfo(f"Label: {result['extra'].get('label')} (answer: {result['answer']})")

        # Frames as the user knows them: layer names for a stack, the sampled frames for a video.
        sampled = result["extra"].get("frames") or []
        frame_names = [names.get(str(f), str(f)) for f in sampled] if names else sampled
        crs = footprint_crs(result) if not video else None
        feature = feature_from_result(result, CLASSIFY_FIELDS(), dest_crs=crs,
                                      frames=json.dumps(frame_names), classes=", ".join(classes))
        geometric = crs is not None and crs.isValid()
        if not geometric:
            feature.clearGeometry()
        wkb = QgsWkbTypes.Polygon if geometric else QgsWkbTypes.NoGeometry
        return {"OUTPUT": self.write_feature(parameters, context, feature, wkb,
                                             crs if geometric else QgsCoordinateReferenceSystem())}
