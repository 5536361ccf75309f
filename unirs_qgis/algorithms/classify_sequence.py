"""unirs:classify_sequence — name the event shown by a dated stack of rasters or a video."""

from __future__ import annotations

import json
import os

from qgis.core import (QgsCoordinateReferenceSystem, QgsProcessing, QgsProcessingException,
                       QgsProcessingParameterFeatureSink, QgsProcessingParameterFile,
                       QgsProcessingParameterMultipleLayers, QgsProcessingParameterString, QgsWkbTypes)

from unirs_engine.prompts import ERA_CLASSES
from unirs_qgis.algorithms.base import UniRSAlgorithm
from unirs_qgis.answers import classify_fields, feature_from_result, footprint_crs
from unirs_qgis.dates import describe_dates, order_by_date, undated_warning

VIDEO_FILTER = "Videos (*.mp4 *.avi *.mov *.mkv *.webm);;All files (*.*)"


class ClassifySequenceAlgorithm(UniRSAlgorithm):
    def name(self) -> str:
        return "classify_sequence"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Classify a dated stack or a video")

    def summary(self) -> str:
        return ("Names the event shown by a sequence: dated raster layers or a video file. The answer is "
                "matched to one of the classes. The output has the stack's footprint (no geometry for a "
                "video); the frames' dates, and where they were found, are written to the log.")

    def parameter_help(self) -> dict[str, str]:
        return {"LAYERS": "the frames, put in date order from their metadata, TIFF date tag or a date in "
                          "their names; undated ones go last",
                "VIDEO": "a video of the event, instead of layers",
                "CLASSES": "comma-separated event classes; default: the 25 ERA event classes",
                "OUTPUT": "a GeoPackage (or any vector format) with one feature per answer"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "LAYERS", self.tr("Dated raster layers"), QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "VIDEO", self.tr("Video file (instead of layers)"), QgsProcessingParameterFile.File,
            fileFilter=VIDEO_FILTER, optional=True))
        self.addParameter(QgsProcessingParameterString(
            "CLASSES", self.tr("Classes (comma-separated)"), defaultValue=", ".join(ERA_CLASSES)))
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", self.tr("Event labels"),
                                                            QgsProcessing.TypeVector))

    def process(self, parameters, context, feedback) -> dict:
        layers = self.parameterAsLayerList(parameters, "LAYERS", context)
        video = self.parameterAsFile(parameters, "VIDEO", context)
        if bool(layers) == bool(video):
            raise QgsProcessingException(f"Give either '{self.label('LAYERS')}' or '{self.label('VIDEO')}', "
                                         "not both and not neither")
        classes = [c.strip() for c in self.parameterAsString(parameters, "CLASSES", context).split(",")
                   if c.strip()]
        if not classes:
            raise QgsProcessingException(f"{self.label('CLASSES')} is empty: give comma-separated class names")

        if video:
            if not os.path.isfile(video):
                raise QgsProcessingException(f"{self.label('VIDEO')}: no such file: {video}")
            frames, names = video, {}
        else:
            ordered = order_by_date(layers)
            feedback.pushInfo(f"Frames in date order: {describe_dates(ordered)}")
            warning = undated_warning(ordered)
            if warning:
                feedback.pushWarning(warning)
            frames = [self.engine_path(layer, None, layer.crs(), feedback) for layer in ordered]
            names = dict(zip(frames, (layer.name() for layer in ordered)))

        result = self.call_engine("classify_sequence", feedback, frames, classes=classes)
        feedback.pushInfo(f"Label: {result['extra'].get('label')} (answer: {result['answer']})")

        # Frames as the user knows them: layer names for a stack, the sampled frames for a video.
        sampled = result["extra"].get("frames") or []
        frame_names = [names.get(str(f), str(f)) for f in sampled] if names else sampled
        crs = footprint_crs(result) if not video else None
        feature = feature_from_result(result, classify_fields(), dest_crs=crs,
                                      frames=json.dumps(frame_names), classes=", ".join(classes))
        geometric = crs is not None and crs.isValid()
        if not geometric:
            feature.clearGeometry()
        wkb = QgsWkbTypes.Polygon if geometric else QgsWkbTypes.NoGeometry
        return {"OUTPUT": self.write_feature(parameters, context, feature, wkb,
                                             crs if geometric else QgsCoordinateReferenceSystem(), "classify")}
