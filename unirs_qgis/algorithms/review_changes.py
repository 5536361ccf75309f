"""unirs:review_changes — review two dated mosaics tile by tile into a resumable GeoPackage.

The engine (worker op "review") reads both mosaic files window by window and writes the GeoPackage
itself, one transaction per batch; this algorithm gathers the job, forwards progress and cancel, and
styles the result. The output defaults to a named GeoPackage beside the project (in the user's data
folder while the project is unsaved), never a temporary file: the analyst's verdicts live in it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from osgeo import ogr
from qgis.core import (QgsProcessing, QgsProcessingException, QgsProcessingOutputNumber,
                       QgsProcessingParameterBoolean, QgsProcessingParameterCrs, QgsProcessingParameterDefinition,
                       QgsProcessingParameterEnum, QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterVectorDestination, QgsProcessingUtils, QgsProject, QgsRasterLayer,
                       QgsVectorLayer)
from qgis.PyQt.QtCore import Qt

from unirs_engine.errors import UnirsError
from unirs_engine.review.job import DEFAULT_THRESHOLD, JOB_DEFAULTS, TILE_UNITS
from unirs_engine.review.schema import LAYER, RUNS, SCORE_MEANINGS, SCORES
from unirs_engine.runtime.paths import unirs_home
from unirs_qgis.algorithms.base import UniRSAlgorithm, crs_for_engine
from unirs_qgis.engine_link import get_client
from unirs_qgis.layer_source import is_file_backed
from unirs_qgis.review_events import FINISHED, INTERRUPTED, review_events
from unirs_qgis.review_style import ReviewLayerStyler, save_review_style, style_review_layer

DEFAULT_MAX_TILES = JOB_DEFAULTS["max_tiles"]
DEFAULT_OUTPUT_NAME = "review.gpkg"   # becomes review_<before>_<after>.gpkg once the inputs are known
SCORE_CHOICES = (None, *SCORES)       # the SCORE parameter's options; None: the model's own

# Post-processors must outlive processAlgorithm (QGIS holds them without a Python reference).
_stylers: dict[str, ReviewLayerStyler] = {}


def review_counts(gpkg: str) -> dict:
    """The run record of the review in `gpkg` (total_tiles, next_tile, skipped_*, changed,
    disagreements, threshold...: the engine updates it with each batch's tiles, in one transaction);
    {} when the engine wrote nothing yet."""
    ds = ogr.Open(gpkg) if os.path.isfile(gpkg) else None
    runs = ds.GetLayerByName(RUNS) if ds is not None else None
    if runs is None:
        return {}
    return max((feature.items() for feature in runs), key=lambda r: r.get("updated") or "", default={})


def applied_threshold(counts: dict) -> float:
    """The threshold the engine applied (its run record stores the resolved one: the job's, else the
    model's), from review_counts(); the default for a file without a record."""
    threshold = counts.get("threshold")
    return DEFAULT_THRESHOLD if threshold is None else float(threshold)


def default_output_folder(project: QgsProject | None = None) -> str:
    """Beside the project file; in the user's data folder (UNIRS_HOME/reviews) while it is unsaved."""
    project = project or QgsProject.instance()
    return project.absolutePath() or str(unirs_home() / "reviews")


def review_file_name(before: QgsRasterLayer, after: QgsRasterLayer) -> str:
    """review_<before>_<after>.gpkg with the layer names made safe for any file system."""
    safe = [re.sub(r"[^\w.-]+", "_", layer.name()).strip("_") or "layer" for layer in (before, after)]
    return f"review_{safe[0]}_{safe[1]}.gpkg"


def is_temporary(path: str) -> bool:
    """True for Processing's "[Save to temporary file]" outputs (removed when QGIS exits)."""
    return Path(path).resolve().is_relative_to(Path(QgsProcessingUtils.tempFolder()).resolve())


class ReviewChangesAlgorithm(UniRSAlgorithm):
    def __init__(self):
        super().__init__()
        self._styled: tuple[str, float] | None = None  # (output layer uri, threshold) for postProcess

    def name(self) -> str:
        return "review_changes"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Review changes between dated mosaics")

    def summary(self) -> str:
        return ("Cuts the overlap of two dated mosaics into tiles on a common grid and gives every tile a "
                "change score: with the demo model and other checkpoints that carry a change-score head, "
                "the probability that the tile changed (0 to 1); else 1 − the similarity of the before and "
                "after features (0 = the same) of the model's Change Extraction module or, for a model "
                "without one (VILA-1.5), of its vision tower. "
                "A tile is <b>changed</b> when its score is at or above the threshold; that one rule decides "
                "the caption, the colour, the Review tab's list and the counts. The caption's own statement "
                "is kept in the field caption_says_change, and tiles where it disagrees with the score are "
                "marked ⚠: look at those first. Tiles without data in either mosaic are skipped and counted. "
                "Cancelling keeps every finished tile; running again with the same inputs and output "
                "resumes at the first unfinished tile. Judge the tiles in the UniRS panel's Review tab.")

    def parameter_help(self) -> dict[str, str]:
        return {"BEFORE": "the earlier mosaic, a raster file (GeoTIFF, VRT...): read window by window, "
                          "never exported",
                "AFTER": "the later mosaic, a raster file in any CRS and resolution",
                "TILE_SIZE": "the side of a tile, in the units below",
                "CRS": "the grid's CRS; empty: the Before layer's",
                "RESOLUTION": "the grid's pixel size; 0: the Before layer's",
                "THRESHOLD": "empty: the threshold learnt from your verdicts for this model, else the one "
                             "calibrated in the model",
                "CAPTION_ALL": "caption the tiles under the threshold too (they stay unchanged)",
                "SCORE": "which change score decides: " + "; ".join(f"{name}: {meaning}" for name, meaning
                                                                    in SCORE_MEANINGS.items())
                         + ". The model's own is the first it can give, in that order; each score has its "
                           "own calibrated threshold",
                "OUTPUT": "the GeoPackage that also keeps your confirm/reject verdicts: by default "
                          "review_&lt;before&gt;_&lt;after&gt;.gpkg beside the project (in your UniRS data "
                          "folder while the project is unsaved); a temporary file loses the verdicts when "
                          "QGIS closes"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", self.tr("Before (raster file)")))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", self.tr("After (raster file)")))
        self.add_date_parameters()
        tile_size = QgsProcessingParameterNumber("TILE_SIZE", self.tr("Tile size"), QgsProcessingParameterNumber.Double,
                                                 JOB_DEFAULTS["tile_size"], minValue=1)
        overlap = QgsProcessingParameterNumber("OVERLAP", self.tr("Tile overlap (same units)"),
                                               QgsProcessingParameterNumber.Double, JOB_DEFAULTS["overlap"], minValue=0)
        for size in (tile_size, overlap):   # Double (map units may be fractions), shown as whole numbers
            size.setMetadata({"widget_wrapper": {"decimals": 0}})
        self.addParameter(tile_size)
        self.addParameter(QgsProcessingParameterEnum(
            "TILE_UNITS", self.tr("Tile size units"), ["pixels", "map units"], defaultValue=0))
        self.addParameter(overlap)
        self.addParameter(QgsProcessingParameterCrs("CRS", self.tr("Grid CRS (default: the Before layer's)"),
                                                    optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "RESOLUTION", self.tr("Grid pixel size in CRS units (0 = the Before layer's)"),
            QgsProcessingParameterNumber.Double, 0, optional=True, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "THRESHOLD", self.tr("Change score threshold (empty: the model's)"),
            QgsProcessingParameterNumber.Double, None, optional=True, minValue=0, maxValue=2))
        self.addParameter(QgsProcessingParameterBoolean(
            "CAPTION_ALL", self.tr("Caption every tile"), defaultValue=False))
        score = QgsProcessingParameterEnum("SCORE", self.tr("Change score"),
                                           [self.tr("the model's"), *SCORES], defaultValue=0)
        score.setFlags(score.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(score)
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_TILES", self.tr("Refuse jobs with more tiles than"), QgsProcessingParameterNumber.Integer,
            DEFAULT_MAX_TILES, minValue=1))
        # A fresh instance is initialised for every dialog: the default follows the current project.
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT", self.tr("Reviewed tiles (GeoPackage)"), QgsProcessing.TypeVectorPolygon,
            os.path.join(default_output_folder(), DEFAULT_OUTPUT_NAME)))
        for name, label in (("TOTAL_TILES", "Tiles in the grid"), ("CHANGED", "Changed tiles (score ≥ threshold)"),
                            ("SKIPPED", "Tiles skipped (no data)"),
                            ("DISAGREEMENTS", "Tiles whose caption disagrees with the score")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    # -- inputs -----------------------------------------------------------------------------------

    def _mosaic(self, parameters, name: str, context) -> QgsRasterLayer:
        layer = self.raster_layer(parameters, name, context)
        if not is_file_backed(layer):
            raise QgsProcessingException(
                f"{name}: layer '{layer.name()}' ({layer.providerType()}) is not a raster file; the review "
                "reads mosaics window by window and never exports them: save it as a GeoTIFF or VRT first")
        return layer

    def _output_path(self, parameters, context, before: QgsRasterLayer, after: QgsRasterLayer, feedback) -> str:
        path = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        if not path.lower().endswith(".gpkg"):
            raise QgsProcessingException(f"Reviewed tiles must be a GeoPackage file (.gpkg), got '{path}'")
        if path == self.parameterDefinition("OUTPUT").defaultValue():  # the default: name it after the inputs
            path = os.path.join(os.path.dirname(path), review_file_name(before, after))
        if is_temporary(path):
            feedback.pushWarning(f"The review is written to a temporary file ({path}): the verdicts you record "
                                 "on it are lost when QGIS closes. Choose a file for 'Reviewed tiles' to keep "
                                 "them.")
        return path

    def job(self, parameters, context, feedback) -> tuple[dict, QgsRasterLayer, QgsRasterLayer]:
        """The engine's ReviewJob as a dict (unirs_engine.review.ReviewJob.from_dict reads it)."""
        before, after, date_before, date_after = self.dated_pair(
            parameters, context, self._mosaic(parameters, "BEFORE", context),
            self._mosaic(parameters, "AFTER", context), feedback)
        crs = self.parameterAsCrs(parameters, "CRS", context)
        resolution = self.parameterAsDouble(parameters, "RESOLUTION", context)
        job = {
            "before": before.source(), "after": after.source(),
            "out": self._output_path(parameters, context, before, after, feedback),
            "tile_size": self.parameterAsDouble(parameters, "TILE_SIZE", context),
            "tile_units": TILE_UNITS[self.parameterAsEnum(parameters, "TILE_UNITS", context)],
            "overlap": self.parameterAsDouble(parameters, "OVERLAP", context),
            "crs": crs_for_engine(crs) if crs.isValid() else None,
            "resolution": resolution if resolution > 0 else None,
            "threshold": (None if parameters.get("THRESHOLD") in (None, "") else
                          self.parameterAsDouble(parameters, "THRESHOLD", context)),
            "caption_all": self.parameterAsBoolean(parameters, "CAPTION_ALL", context),
            "score": SCORE_CHOICES[self.parameterAsEnum(parameters, "SCORE", context)],
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
        from unirs_engine.worker.client import RequestCancelled

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
        except UnirsError as e:   # the input's or the setup's fault; anything else is a bug: its traceback shows
            raise QgsProcessingException(f"UniRS engine: {e}") from e

        counts = review_counts(out)
        if not counts:
            raise QgsProcessingException("Cancelled before the first tile: no output was written"
                                         if feedback.isCanceled() else f"UniRS engine wrote no review to {out}")
        reviewed = counts["next_tile"]
        uri = f"{out}|layername={LAYER}"
        threshold = applied_threshold(counts)
        feedback.pushInfo(f"{reviewed}/{counts['total_tiles']} tiles reviewed, {counts['changed']} changed "
                          f"({counts.get('change_score', '?')} score ≥ {threshold:.3g}, "
                          f"{counts.get('threshold_source', 'threshold')}), "
                          f"{counts['disagreements']} where the caption disagrees, "
                          f"{counts['skipped_nodata'] + counts['skipped_outside']} skipped (no data)")
        if feedback.isCanceled() or summary.get("cancelled"):
            message = (f"Review cancelled after {reviewed} of {counts['total_tiles']} tiles: the finished tiles "
                       "are kept; run it again with the same output to resume")
            feedback.pushWarning(message)
            review_events.ended.emit(uri, INTERRUPTED, message)   # Processing loads nothing of a cancelled run
        elif summary.get("resumed_from"):
            feedback.pushInfo(f"Resumed at tile {summary['resumed_from']}")

        self._styled = (uri, threshold)
        requested = self.parameterAsOutputLayer(parameters, "OUTPUT", context)   # before the default was named
        if context.willLoadLayerOnCompletion(requested):
            # Load the feature table itself (the GeoPackage also holds the run record), styled.
            layers = context.layersToLoadOnCompletion()
            layers[uri] = layers.pop(requested)
            context.setLayersToLoadOnCompletion(layers)
            styler = _stylers[uri] = ReviewLayerStyler(threshold)
            context.layerToLoadOnCompletionDetails(uri).setPostProcessor(styler)
        return {"OUTPUT": uri, "TOTAL_TILES": counts["total_tiles"], "CHANGED": counts["changed"],
                "SKIPPED": counts["skipped_nodata"] + counts["skipped_outside"],
                "DISAGREEMENTS": counts["disagreements"]}

    def postProcessAlgorithm(self, context, feedback) -> dict:  # noqa: N802 (main thread, after the run)
        """Save the style into the GeoPackage, so the file opens styled anywhere (also qgis_process); a
        review already open in the project (a resume) is reloaded there instead of loaded twice."""
        if self._styled is None:
            return {}
        uri, threshold = self._styled
        layer = QgsVectorLayer(uri, LAYER, "ogr")
        try:
            style_review_layer(layer, threshold)
            save_review_style(layer)
        except OSError as e:  # the tiles are written; a missing style is not worth failing over
            feedback.pushWarning(str(e))
        project = context.project()
        opened = [lyr for lyr in (project.mapLayers().values() if project else ()) if lyr.source() == uri]
        if opened and context.willLoadLayerOnCompletion(uri):
            layers = context.layersToLoadOnCompletion()
            layers.pop(uri)
            context.setLayersToLoadOnCompletion(layers)
            for existing in opened:
                existing.dataProvider().reloadData()
                style_review_layer(existing, threshold)
        review_events.ended.emit(uri, FINISHED, "")
        return {}
