"""unirs:review_changes — review two dated mosaics tile by tile into a resumable GeoPackage.

The engine (worker op "review") reads both mosaic files window by window and writes the GeoPackage
itself, one transaction per batch; this algorithm gathers the job, forwards progress and cancel, and
styles the result.
"""

from __future__ import annotations

import json
import os

from osgeo import ogr
from qgis.core import (QgsProcessing, QgsProcessingException, QgsProcessingOutputNumber,
                       QgsProcessingParameterBoolean, QgsProcessingParameterCrs, QgsProcessingParameterEnum,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterVectorDestination, QgsRasterLayer, QgsVectorLayer)
from qgis.PyQt.QtCore import Qt

from unirs_qgis.algorithms.base import UniRSAlgorithm, crs_for_engine
from unirs_qgis.engine_link import get_client
from unirs_qgis.layer_source import is_file_backed
from unirs_qgis.review_style import ReviewLayerStyler, save_default_style, style_review_layer

# unirs_engine.review imports rasterio, which the plugin never loads: these mirror its contract
# (tests/qgis/test_review_algorithm.py checks they agree).
DEFAULT_THRESHOLD = 0.1      # unirs_engine.review.DEFAULT_THRESHOLD (a model without a calibrated one)
DEFAULT_MAX_TILES = 100_000  # ReviewJob.max_tiles
LAYER = "changes"            # unirs_engine.review.LAYER: the feature table
RUNS_TABLE = "unirs_review_runs"
TILE_UNITS = ("pixels", "map")  # ReviewJob.tile_units, in the order of the TILE_UNITS enum

# Post-processors must outlive processAlgorithm (QGIS holds them without a Python reference).
_stylers: dict[str, ReviewLayerStyler] = {}


def review_counts(gpkg: str) -> dict:
    """The run record of the review in `gpkg` (total_tiles, done, skipped_*, ...) and the number of
    changed tiles written so far; {} when the engine wrote nothing yet."""
    ds = ogr.Open(gpkg) if os.path.isfile(gpkg) else None
    runs = ds.GetLayerByName(RUNS_TABLE) if ds is not None else None
    if runs is None:
        return {}
    record = max((feature.items() for feature in runs), key=lambda r: r.get("updated") or "", default={})
    changes = ds.GetLayerByName(LAYER)
    changes.SetAttributeFilter("changed = 1")
    return {**record, "changed": changes.GetFeatureCount()}


def applied_threshold(counts: dict) -> float:
    """The threshold the engine applied (its run record stores the resolved one: the job's, else the
    model's calibrated one), from review_counts(); the default for a file without a record."""
    return json.loads(counts.get("job_json") or "{}").get("threshold", DEFAULT_THRESHOLD)


class ReviewChangesAlgorithm(UniRSAlgorithm):
    def __init__(self):
        super().__init__()
        self._styled: tuple[str, float] | None = None  # (output layer uri, threshold) for postProcess

    def name(self) -> str:
        return "review_changes"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Review changes between dated mosaics")

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Cuts the overlap of two dated mosaics into tiles on a common grid (default: BEFORE's CRS "
            "and pixel size), scores the change of every tile and captions the tiles scoring at least "
            "THRESHOLD (default: the threshold calibrated for the model; or all of them with CAPTION_ALL). Tiles without data in either mosaic are "
            "skipped and counted. BEFORE and AFTER must be raster files (GeoTIFF, VRT...): mosaics are "
            "read window by window, never exported.\n\n"
            "OUTPUT is a GeoPackage written by the engine as tiles finish, so it is a file destination "
            "rather than a feature sink: cancelling keeps every finished tile, and running again with "
            "the same inputs and the same OUTPUT resumes at the first unfinished tile. The layer is "
            "styled by score with captions as labels; review it tile by tile in the UniRS panel.")

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", self.tr("Before (raster file)")))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", self.tr("After (raster file)")))
        self.add_date_parameters()
        self.addParameter(QgsProcessingParameterNumber(
            "TILE_SIZE", self.tr("Tile size"), QgsProcessingParameterNumber.Double, 256, minValue=1))
        self.addParameter(QgsProcessingParameterEnum(
            "TILE_UNITS", self.tr("Tile size units"), ["pixels", "map units"], defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "OVERLAP", self.tr("Tile overlap (same units)"), QgsProcessingParameterNumber.Double, 0,
            minValue=0))
        self.addParameter(QgsProcessingParameterCrs("CRS", self.tr("Grid CRS (default: BEFORE's)"),
                                                    optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "RESOLUTION", self.tr("Grid pixel size in CRS units (0 = BEFORE's)"),
            QgsProcessingParameterNumber.Double, 0, optional=True, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "THRESHOLD", self.tr("Change score threshold for a caption (empty: the model's calibrated one)"),
            QgsProcessingParameterNumber.Double, None, optional=True, minValue=0, maxValue=2))
        self.addParameter(QgsProcessingParameterBoolean(
            "CAPTION_ALL", self.tr("Caption every tile"), defaultValue=False))
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_TILES", self.tr("Refuse jobs with more tiles than"), QgsProcessingParameterNumber.Integer,
            DEFAULT_MAX_TILES, minValue=1))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT", self.tr("Reviewed tiles (GeoPackage)"), QgsProcessing.TypeVectorPolygon))
        for name, label in (("TOTAL_TILES", "Tiles in the grid"), ("CHANGED", "Changed tiles"),
                            ("SKIPPED", "Tiles skipped (no data)")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    # -- inputs -----------------------------------------------------------------------------------

    def _mosaic(self, parameters, name: str, context) -> QgsRasterLayer:
        layer = self.raster_layer(parameters, name, context)
        if not is_file_backed(layer):
            raise QgsProcessingException(
                f"{name}: layer '{layer.name()}' ({layer.providerType()}) is not a raster file; the review "
                "reads mosaics window by window and never exports them: save it as a GeoTIFF or VRT first")
        return layer

    def _output_path(self, parameters, context) -> str:
        path = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        if not path.lower().endswith(".gpkg"):
            raise QgsProcessingException(f"OUTPUT must be a GeoPackage file (.gpkg), got '{path}'")
        return path

    def job(self, parameters, context, feedback) -> tuple[dict, QgsRasterLayer, QgsRasterLayer]:
        """The engine's ReviewJob as a dict (unirs_engine.review.ReviewJob.from_dict reads it)."""
        before, after, date_before, date_after = self.dated_pair(
            parameters, context, self._mosaic(parameters, "BEFORE", context),
            self._mosaic(parameters, "AFTER", context), feedback)
        crs = self.parameterAsCrs(parameters, "CRS", context)
        resolution = self.parameterAsDouble(parameters, "RESOLUTION", context)
        job = {
            "before": before.source(), "after": after.source(), "out": self._output_path(parameters, context),
            "tile_size": self.parameterAsDouble(parameters, "TILE_SIZE", context),
            "tile_units": TILE_UNITS[self.parameterAsEnum(parameters, "TILE_UNITS", context)],
            "overlap": self.parameterAsDouble(parameters, "OVERLAP", context),
            "crs": crs_for_engine(crs) if crs.isValid() else None,
            "resolution": resolution if resolution > 0 else None,
            "threshold": (None if parameters.get("THRESHOLD") in (None, "") else
                          self.parameterAsDouble(parameters, "THRESHOLD", context)),
            "caption_all": self.parameterAsBoolean(parameters, "CAPTION_ALL", context),
            "max_tiles": self.parameterAsInt(parameters, "MAX_TILES", context),
            "date_before": date_before.toString(Qt.ISODate) if date_before else None,
            "date_after": date_after.toString(Qt.ISODate) if date_after else None,
        }
        if job["overlap"] >= job["tile_size"]:
            raise QgsProcessingException(f"OVERLAP ({job['overlap']:g}) must be smaller than TILE_SIZE "
                                         f"({job['tile_size']:g})")
        return job, before, after

    # -- run --------------------------------------------------------------------------------------

    def process(self, parameters, context, feedback) -> dict:
        from unirs_engine.worker.client import EngineClientError, RequestCancelled

        job, before, after = self.job(parameters, context, feedback)
        out = job["out"]
        feedback.pushInfo(f"Reviewing '{before.name()}' → '{after.name()}' into {out}")

        def on_progress(fraction: float, message: str) -> None:
            feedback.setProgress(100.0 * fraction)
            if message:
                feedback.setProgressText(message)

        summary: dict = {}
        try:
            summary = get_client().review(job, on_progress=on_progress, is_cancelled=feedback.isCanceled)
        except RequestCancelled:
            pass  # the engine committed every finished batch: report what the GeoPackage holds
        except (EngineClientError, RuntimeError, ValueError, OSError) as e:
            raise QgsProcessingException(f"UniRS engine: {e}") from e

        counts = review_counts(out)
        if not counts:
            raise QgsProcessingException("Cancelled before the first tile: no output was written"
                                         if feedback.isCanceled() else f"UniRS engine wrote no review to {out}")
        reviewed = counts["next_tile"]
        if feedback.isCanceled() or summary.get("cancelled"):
            feedback.pushWarning(f"Cancelled after {reviewed} of {counts['total_tiles']} tiles; run again "
                                 "with the same OUTPUT to resume")
        elif summary.get("resumed_from"):
            feedback.pushInfo(f"Resumed at tile {summary['resumed_from']}")
        feedback.pushInfo(f"{reviewed}/{counts['total_tiles']} tiles reviewed, {counts['changed']} changed, "
                          f"{counts['skipped_nodata'] + counts['skipped_outside']} skipped (no data)")

        uri = f"{out}|layername={LAYER}"
        threshold = applied_threshold(counts)
        self._styled = (uri, threshold)
        if context.willLoadLayerOnCompletion(out):
            # Load the feature table itself (the GeoPackage also holds the run record), styled.
            layers = context.layersToLoadOnCompletion()
            layers[uri] = layers.pop(out)
            context.setLayersToLoadOnCompletion(layers)
            styler = _stylers[uri] = ReviewLayerStyler(threshold)
            context.layerToLoadOnCompletionDetails(uri).setPostProcessor(styler)
        return {"OUTPUT": uri, "TOTAL_TILES": counts["total_tiles"], "CHANGED": counts["changed"],
                "SKIPPED": counts["skipped_nodata"] + counts["skipped_outside"]}

    def postProcessAlgorithm(self, context, feedback) -> dict:  # noqa: N802 (main thread, after the run)
        """Save the style into the GeoPackage, so the file opens styled anywhere (also qgis_process)."""
        if self._styled is None:
            return {}
        uri, threshold = self._styled
        layer = QgsVectorLayer(uri, LAYER, "ogr")
        try:
            style_review_layer(layer, threshold)
            save_default_style(layer)
        except RuntimeError as e:  # the tiles are written; a missing style is not worth failing over
            feedback.pushWarning(str(e))
        return {}
