"""unirs:review_archive — review every dated mosaic pair of an archive manifest, each into its own
GeoPackage.

The engine (worker op "review_archive") reads the manifest, reviews the pairs (on a Ray cluster when
an address is given, else in the worker's own process) and writes <folder>/<pair name>.gpkg per pair
and archive_summary.csv; this algorithm gathers the options every pair shares, forwards progress and
cancel, logs one line per pair and loads the pairs' reviews, styled. The plugin never imports ray or
torch: the cluster is the engine's business.
"""

from __future__ import annotations

import csv
import os
import re
import time
from pathlib import Path

from qgis.core import (QgsProcessingContext, QgsProcessingException, QgsProcessingOutputFile,
                       QgsProcessingOutputNumber, QgsProcessingParameterBoolean, QgsProcessingParameterDefinition,
                       QgsProcessingParameterEnum, QgsProcessingParameterFile,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterNumber,
                       QgsProcessingParameterString, QgsVectorLayer)

from unirs_engine.errors import UnirsError
from unirs_engine.review.job import JOB_DEFAULTS, TILE_UNITS
from unirs_engine.review.schema import ARCHIVE_SUMMARY, LAYER
from unirs_qgis.algorithms.base import UniRSAlgorithm
from unirs_qgis.algorithms.review_changes import (DEFAULT_MAX_TILES, applied_threshold, default_output_folder,
                                                  is_temporary, review_counts)
from unirs_qgis.engine_link import get_client, is_running
from unirs_qgis.review_events import FINISHED, review_events
from unirs_qgis.review_style import ReviewLayerStyler, save_review_style, style_review_layer

COUNTS = ("total_tiles", "done_tiles", "changed")
MANIFEST_SUFFIXES = (".csv", ".json")
DEFAULT_FOLDER_NAME = "review_archive"   # becomes review_<manifest name> once the manifest is known
DEFAULT_TILE_SIZE = JOB_DEFAULTS["tile_size"]

# Post-processors must outlive processAlgorithm (QGIS holds them without a Python reference).
_stylers: dict[str, ReviewLayerStyler] = {}


def pair_line(pair: dict) -> str:
    """One line of the log for a pair of ArchiveSummary.to_dict()["pairs"]."""
    line = (f"{pair['name']}: {pair['done_tiles']}/{pair['total_tiles']} tiles, {pair['changed']} changed, "
            f"{pair['status']}")
    return line + (f": {pair['error']}" if pair.get("error") else "")


def read_summary(path: str, since: float) -> dict | None:
    """The archive's summary (the shape of the engine's ArchiveSummary.to_dict(), cancelled) from the
    summary CSV the engine wrote at or after `since` (time.time()); None when there is none that new."""
    if not os.path.isfile(path) or os.path.getmtime(path) < since - 1:   # (file times may be coarse)
        return None
    with open(path, newline="", encoding="utf-8") as f:
        pairs = [{k: int(v) if k in COUNTS else (v or None) for k, v in row.items()} for row in csv.DictReader(f)]
    return {"out_dir": os.path.dirname(path), "summary_csv": path, "pairs": pairs, "cancelled": True,
            "failed": sum(p["status"] == "failed" for p in pairs),
            **{key: sum(p[key] for p in pairs) for key in COUNTS}}


def pair_layer_name(pair: dict) -> str:
    return f"{pair['name']} changes"


class ReviewArchiveAlgorithm(UniRSAlgorithm):
    def __init__(self):
        super().__init__()
        self._styled: list[tuple[str, float]] = []   # (layer uri, threshold) of each review, for postProcess

    def name(self) -> str:
        return "review_archive"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Review an archive of dated mosaic pairs")

    def summary(self) -> str:
        return ("Reviews every dated mosaic pair listed in a manifest the way <i>Review changes between dated "
                "mosaics</i> reviews one: each pair is cut into tiles, every tile gets a change score and, "
                "at or above the threshold, a caption, into the GeoPackage &lt;pair name&gt;.gpkg of the "
                "output folder, with archive_summary.csv listing every pair's counts. The pairs run in the "
                "UniRS engine, or on a Ray cluster when its address is given (advanced), never in QGIS. "
                "A pair that fails is reported and the others go on; running again with the same manifest "
                "and folder resumes each pair at its first unfinished tile. Every pair's review is loaded "
                "as &lt;pair name&gt; changes, styled; judge its tiles in the UniRS panel's Review tab.")

    def parameter_help(self) -> dict[str, str]:
        return {"MANIFEST": "a CSV file with a header, or a JSON list of objects (or {\"pairs\": [...]}), one "
                            "pair per row with the columns before and after (file paths or GDAL URLs such as "
                            "/vsicurl/https://...), and optionally name, date_before, date_after and extent "
                            "(left,bottom,right,top in the grid's CRS)",
                "OUTPUT_FOLDER": "where each pair's GeoPackage and archive_summary.csv are written: by "
                                 "default review_&lt;manifest name&gt; beside the project (in your UniRS data "
                                 "folder while the project is unsaved); the GeoPackages also keep your "
                                 "verdicts",
                "TILE_SIZE": "the side of a tile, in the units below, for every pair",
                "THRESHOLD": "empty: the threshold learnt from your verdicts for this model, else the one "
                             "calibrated in the model",
                "CAPTION_ALL": "caption the tiles under the threshold too (they stay unchanged)",
                "MAX_TILES": "a pair whose grid has more tiles fails (the others go on)",
                "RAY": "empty: the pairs run one after the other in the UniRS engine; auto: the Ray cluster "
                       "already running on this machine; local: a Ray cluster started for this run; "
                       "ray://host:10001: a remote cluster (its machines must reach the mosaics' paths "
                       "or URLs, and the output folder)",
                "ACTORS": "model copies on the Ray cluster; 0: one per GPU of the cluster, else one per "
                          "its CPUs"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            "MANIFEST", self.tr("Archive manifest (CSV or JSON)"), QgsProcessingParameterFile.File,
            fileFilter=self.tr("Archive manifests (*.csv *.json *.CSV *.JSON);;All files (*)")))
        # A fresh instance is initialised for every dialog: the default follows the current project.
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT_FOLDER", self.tr("Output folder"), os.path.join(default_output_folder(), DEFAULT_FOLDER_NAME)))
        tile_size = QgsProcessingParameterNumber("TILE_SIZE", self.tr("Tile size"),
                                                 QgsProcessingParameterNumber.Double, DEFAULT_TILE_SIZE,
                                                 minValue=1)
        tile_size.setMetadata({"widget_wrapper": {"decimals": 0}})
        self.addParameter(tile_size)
        self.addParameter(QgsProcessingParameterEnum(
            "TILE_UNITS", self.tr("Tile size units"), ["pixels", "map units"],
            defaultValue=TILE_UNITS.index(JOB_DEFAULTS["tile_units"])))
        self.addParameter(QgsProcessingParameterNumber(
            "THRESHOLD", self.tr("Change score threshold (empty: the model's)"),
            QgsProcessingParameterNumber.Double, None, optional=True, minValue=0, maxValue=2))
        self.addParameter(QgsProcessingParameterBoolean(
            "CAPTION_ALL", self.tr("Caption every tile"),
            defaultValue=JOB_DEFAULTS["caption_all"]))
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_TILES", self.tr("Refuse pairs with more tiles than"), QgsProcessingParameterNumber.Integer,
            DEFAULT_MAX_TILES, minValue=1))
        ray = QgsProcessingParameterString("RAY", self.tr("Ray cluster address (empty: the UniRS engine)"),
                                           optional=True)
        actors = QgsProcessingParameterNumber("ACTORS", self.tr("Model actors (0: one per GPU)"),
                                              QgsProcessingParameterNumber.Integer, 0, optional=True, minValue=0)
        for advanced in (ray, actors):
            advanced.setFlags(advanced.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(advanced)
        self.addOutput(QgsProcessingOutputFile("SUMMARY", self.tr("Archive summary (CSV)")))
        for name, label in (("PAIRS", "Pairs in the manifest"), ("FAILED", "Pairs that failed"),
                            ("TOTAL_TILES", "Tiles in all grids"), ("CHANGED", "Changed tiles (score ≥ threshold)")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    # -- inputs -----------------------------------------------------------------------------------

    def _manifest(self, parameters, context) -> str:
        path = self.parameterAsFile(parameters, "MANIFEST", context)
        if not path or not os.path.isfile(path):
            raise QgsProcessingException(f"Archive manifest: '{path}' is not a file")
        if not path.lower().endswith(MANIFEST_SUFFIXES):
            raise QgsProcessingException(f"Archive manifest must be a CSV or JSON file, got '{path}'")
        return os.path.abspath(path)

    def _out_dir(self, parameters, context, manifest: str, feedback) -> str:
        path = self.parameterAsFileOutput(parameters, "OUTPUT_FOLDER", context)
        if path == self.parameterDefinition("OUTPUT_FOLDER").defaultValue():  # name it after the manifest
            safe = re.sub(r"[^\w.-]+", "_", Path(manifest).stem).strip("_") or "archive"
            path = os.path.join(os.path.dirname(path), f"review_{safe}")
        if os.path.exists(path) and not os.path.isdir(path):
            raise QgsProcessingException(f"Output folder: '{path}' is a file, not a folder")
        if is_temporary(path):
            feedback.pushWarning(f"The reviews are written to a temporary folder ({path}): the verdicts you "
                                 "record on them are lost when QGIS closes. Choose an output folder to keep them.")
        return os.path.abspath(path)

    def params(self, parameters, context, feedback) -> dict:
        """The engine's "review_archive" params: manifest, out_dir, ray, actors and the options every
        pair shares (ReviewJob fields)."""
        manifest = self._manifest(parameters, context)
        ray = self.parameterAsString(parameters, "RAY", context).strip()
        actors = self.parameterAsInt(parameters, "ACTORS", context)
        if actors and not ray:
            raise QgsProcessingException("Model actors: give a Ray cluster address too (without one the pairs "
                                         "run in the UniRS engine, one model)")
        options = {
            "tile_size": self.parameterAsDouble(parameters, "TILE_SIZE", context),
            "tile_units": TILE_UNITS[self.parameterAsEnum(parameters, "TILE_UNITS", context)],
            "threshold": (None if parameters.get("THRESHOLD") in (None, "") else
                          self.parameterAsDouble(parameters, "THRESHOLD", context)),
            "caption_all": self.parameterAsBoolean(parameters, "CAPTION_ALL", context),
            "max_tiles": self.parameterAsInt(parameters, "MAX_TILES", context),
        }
        return {"manifest": manifest, "out_dir": self._out_dir(parameters, context, manifest, feedback),
                "ray": ray or None, "actors": actors if actors > 0 else None, "options": options}

    # -- run --------------------------------------------------------------------------------------

    def process(self, parameters, context, feedback) -> dict:
        from unirs_engine.worker.client import RequestCancelled

        params = self.params(parameters, context, feedback)
        feedback.pushInfo(f"Reviewing the pairs of {params['manifest']} into {params['out_dir']}"
                          + (f" on the Ray cluster '{params['ray']}'" if params["ray"] else ""))

        def on_progress(fraction: float, message: str) -> None:
            feedback.setProgress(100.0 * fraction)
            if message:
                feedback.setProgressText(message)

        started = time.time()
        try:
            client = get_client()
            if not is_running(client):
                feedback.pushInfo("Starting the UniRS engine (loading the model)…")
            summary = client.review_archive(params["manifest"], params["out_dir"], options=params["options"],
                                            ray=params["ray"], actors=params["actors"], on_progress=on_progress,
                                            is_cancelled=feedback.isCanceled)
        except RequestCancelled as e:
            # A cancelled request answers nothing, but the engine rewrote its summary CSV as it stopped.
            summary = read_summary(os.path.join(params["out_dir"], ARCHIVE_SUMMARY), since=started)
            if summary is None:
                raise QgsProcessingException("Cancelled before the first pair: no output was written") from e
        except UnirsError as e:   # the input's or the setup's fault; anything else is a bug: its traceback shows
            raise QgsProcessingException(f"UniRS engine: {e}") from e

        pairs = summary["pairs"]
        for pair in pairs:
            feedback.pushInfo(pair_line(pair))
            if pair["status"] == "failed":
                feedback.pushWarning(f"Pair '{pair['name']}' failed: {pair['error'] or 'no reason given'}")
            self._load(pair, context)
        feedback.pushInfo(f"{len(pairs)} pairs, {summary['failed']} failed: {summary['done_tiles']}/"
                          f"{summary['total_tiles']} tiles reviewed, {summary['changed']} changed; summary in "
                          f"{summary['summary_csv']}")
        if summary["cancelled"]:
            feedback.pushWarning("Archive review cancelled: every finished tile is kept; run it again with the "
                                 "same manifest and output folder to resume")
        return {"OUTPUT_FOLDER": summary["out_dir"], "SUMMARY": summary["summary_csv"], "PAIRS": len(pairs),
                "FAILED": summary["failed"], "TOTAL_TILES": summary["total_tiles"], "CHANGED": summary["changed"]}

    def _load(self, pair: dict, context) -> None:
        """Have Processing load the pair's review (its feature table), named after the pair and styled
        with the threshold the engine applied to it; a pair without a written review is skipped."""
        gpkg = pair.get("gpkg")
        counts = review_counts(gpkg) if gpkg else {}
        if not counts:
            return
        uri = f"{gpkg}|layername={LAYER}"
        threshold = applied_threshold(counts)
        self._styled.append((uri, threshold))
        context.addLayerToLoadOnCompletion(uri, QgsProcessingContext.LayerDetails(
            pair_layer_name(pair), context.project()))
        styler = _stylers[uri] = ReviewLayerStyler(threshold, pair_layer_name(pair))
        context.layerToLoadOnCompletionDetails(uri).setPostProcessor(styler)

    def postProcessAlgorithm(self, context, feedback) -> dict:  # noqa: N802 (main thread, after the run)
        """Save the style into each GeoPackage, so the files open styled anywhere (also qgis_process); a
        review already open in the project (a resume) is reloaded there instead of loaded twice."""
        project = context.project()
        opened = list(project.mapLayers().values()) if project else []
        for uri, threshold in self._styled:
            try:
                layer = QgsVectorLayer(uri, LAYER, "ogr")
                style_review_layer(layer, threshold)
                save_review_style(layer)
            except OSError as e:   # the tiles are written; a missing style is not worth failing over
                feedback.pushWarning(str(e))
            same = [lyr for lyr in opened if lyr.source() == uri]
            if same and context.willLoadLayerOnCompletion(uri):
                layers = context.layersToLoadOnCompletion()
                layers.pop(uri)
                context.setLayersToLoadOnCompletion(layers)
                for existing in same:
                    existing.dataProvider().reloadData()
                    style_review_layer(existing, threshold)
            review_events.ended.emit(uri, FINISHED, "")
        self._styled = []
        return {}
