"""The dock's review mode: step through the tiles of a change-review GeoPackage by score, see each one
(an outline on the canvas, the imagery visible inside; Flicker toggles the before and after layers in
place), and mark it confirmed or rejected (written into the GeoPackage at once, with who and when).
Keyboard: Y confirm, N reject, J next, K previous, F flicker. The verdicts can then recalibrate the
model's change threshold for the next review.

The review itself runs as the Processing algorithm unirs:review_changes (its dialog runs it as a
background task with progress and cancel); its output is picked up here when it is loaded, and a
cancelled run's finished tiles are loaded from review_events.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass

from qgis.core import (Qgis, QgsApplication, QgsCoordinateTransform, QgsFeatureRequest, QgsGeometry,
                       QgsGraduatedSymbolRenderer, QgsProject, QgsRasterLayer, QgsVectorLayer, QgsWkbTypes)
from qgis.gui import QgsRubberBand
from qgis.PyQt.QtCore import QDateTime, Qt
from qgis.PyQt.QtGui import QColor, QKeySequence
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLabel, QListWidget,
                                 QListWidgetItem, QPushButton, QShortcut, QVBoxLayout, QWidget)

from unirs_engine.errors import UnirsError
from unirs_engine.review.calibrate import calibrate_from_review, keep_user_threshold
from unirs_engine.review.job import ReviewError
from unirs_engine.review.schema import (CAPTION_CHANGED, CHANGED, COSINE_SCORE, DISAGREE_FILTER, FIELDS, LAYER,
                                        SCORE_MEANINGS)

from ..algorithms.review_changes import applied_threshold, is_temporary, review_counts
from ..dates import order_by_date
from ..review_events import INTERRUPTED, review_events
from ..review_style import review_layer_name, review_threshold, set_fill, style_review_layer

VERDICT_MARKS = {"confirmed": "✔", "rejected": "✘"}
ZOOM_MARGIN = 1.4           # show ground around the tile: the context helps judge it
HIGHLIGHT = "#00e5ff"       # the current tile's outline: cyan stands out on imagery and on the style's reds
# What the list shows: (label, QGIS filter expression or None for every tile)
SHOWN = {"changed": ("Changed tiles (score ≥ threshold)", f'"{CHANGED}"'),
         "disagree": ("Score and caption disagree", DISAGREE_FILTER),
         "all": ("All tiles", None)}
KEYS = {"confirm": "Y", "reject": "N", "next": "J", "previous": "K", "flicker": "F"}


class ReviewWriteError(UnirsError, RuntimeError):
    """A verdict could not be written into the GeoPackage."""


@dataclass(frozen=True)
class Tile:
    fid: int
    score: float
    changed: bool                 # score at or above the review's threshold
    caption_says_change: bool | None
    caption: str
    row: int
    col: int
    verdict: str | None
    reviewed_by: str
    date_before: str
    date_after: str

    @property
    def disagrees(self) -> bool:
        return self.caption_says_change is not None and self.caption_says_change != self.changed

    def describe(self) -> str:
        """The list entry's tooltip: everything about the tile in a few lines."""
        says = {None: "no caption", True: "the caption says it changed", False: "the caption says no change"}
        judged = f"\n{self.verdict} by {self.reviewed_by}" if self.verdict else ""
        return (f"{self.caption or '(no caption)'}\nscore {self.score:.4f} · "
                f"{'changed' if self.changed else 'unchanged'}, {says[self.caption_says_change]}\n"
                f"{self.date_before or '?'} → {self.date_after or '?'} · tile row {self.row}, column {self.col}"
                + judged)


def is_review_layer(layer) -> bool:
    """True for a vector layer with the change-review table's fields."""
    return isinstance(layer, QgsVectorLayer) and layer.isValid() and \
        all(layer.fields().indexOf(name) >= 0 for name in FIELDS)


def _text(value) -> str:
    """Attribute as display text: NULL -> "", dates as ISO."""
    if value is None or (hasattr(value, "isNull") and value.isNull()):
        return ""
    return value.toString(Qt.ISODate) if hasattr(value, "toString") else str(value)


def _flag(value) -> bool | None:
    return None if value is None or (hasattr(value, "isNull") and value.isNull()) else bool(value)


def review_tiles(layer: QgsVectorLayer, shown: str = "changed", unreviewed_only: bool = False) -> list[Tile]:
    """The tiles of `layer` that SHOWN[shown] selects, highest score first (optionally unjudged only)."""
    expressions = [e for e in (SHOWN[shown][1], '"verdict" IS NULL' if unreviewed_only else None) if e]
    request = QgsFeatureRequest()
    if expressions:
        request.setFilterExpression(" AND ".join(f"({e})" for e in expressions))
    request.setFlags(QgsFeatureRequest.NoGeometry)
    request.setOrderBy(QgsFeatureRequest.OrderBy([QgsFeatureRequest.OrderByClause("score", False)]))
    return [Tile(f.id(), float(f["score"]), bool(f[CHANGED]), _flag(f[CAPTION_CHANGED]), _text(f["caption"]),
                 int(f["tile_row"]), int(f["tile_col"]), _text(f["verdict"]) or None, _text(f["reviewed_by"]),
                 _text(f["date_before"]), _text(f["date_after"]))
            for f in layer.getFeatures(request)]


def reviewer() -> str:
    """Who records verdicts: the QGIS user's full name, else the login name."""
    return QgsApplication.userFullName() or getpass.getuser()


def set_verdict(layer: QgsVectorLayer, fid: int, verdict: str, by: str) -> None:
    """Write `verdict`, reviewed_at (UTC now) and reviewed_by for tile `fid`, and commit at once."""
    if verdict not in VERDICT_MARKS:
        raise ValueError(f"verdict must be one of {sorted(VERDICT_MARKS)}, got {verdict!r}")
    if layer.isEditable():  # committing would also save the user's own pending edits
        raise ReviewWriteError(f"layer '{layer.name()}' is being edited: save or discard the edits first")
    fields = layer.fields()
    layer.startEditing()
    written = all(layer.changeAttributeValue(fid, fields.indexOf(name), value) for name, value in
                  (("verdict", verdict), ("reviewed_at", QDateTime.currentDateTimeUtc()), ("reviewed_by", by)))
    if not written or not layer.commitChanges():
        errors = "; ".join(layer.commitErrors()) or "the edit was refused"
        layer.rollBack()
        raise ReviewWriteError(f"layer '{layer.name()}': could not save the verdict of tile {fid}: {errors}")


def review_path(layer: QgsVectorLayer) -> str:
    return layer.source().split("|")[0]


def open_review(path: str) -> QgsVectorLayer:
    """The changes table of a review GeoPackage as a styled layer (not yet in the project)."""
    layer = QgsVectorLayer(f"{path}|layername={LAYER}", review_layer_name(path), "ogr")
    if not is_review_layer(layer):
        raise ValueError(f"{path} is not a UniRS change review of this version (no '{LAYER}' table with "
                         f"{', '.join(FIELDS)}); run the review again to write one")
    if not isinstance(layer.renderer(), QgsGraduatedSymbolRenderer):  # no default style saved in it
        style_review_layer(layer, applied_threshold(review_counts(path)))
    return layer


class ReviewPanel(QWidget):
    """Pick a review layer, list its tiles by score, step through them and judge them."""

    def __init__(self, iface=None, parent=None):
        super().__init__(parent)
        self.iface = iface
        self.layer: QgsVectorLayer | None = None
        self.tiles: list[Tile] = []
        self.review_dialog = None  # the last "New review…" dialog (kept alive while it is shown)
        self.highlight: QgsRubberBand | None = None
        self._build()
        self._connect()
        self.refresh_layers()

    # --- construction ----------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        pick = QHBoxLayout()
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("Change-review layers of the project")
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Open a review GeoPackage (written by 'Review changes between "
                                    "dated mosaics' or `unirs review`)")
        self.run_button = QPushButton("New review…")
        self.run_button.setToolTip("Review two dated mosaics tile by tile (Processing algorithm)")
        pick.addWidget(self.layer_combo, 1)
        pick.addWidget(self.open_button)
        pick.addWidget(self.run_button)
        layout.addLayout(pick)

        options = QHBoxLayout()
        self.shown_combo = QComboBox()
        for key, (label, _) in SHOWN.items():
            self.shown_combo.addItem(label, key)
        self.shown_combo.setToolTip("Which tiles to step through. Where score and caption disagree the "
                                    "model contradicts itself: those are worth a look first.")
        self.unreviewed_check = QCheckBox("Unreviewed only")
        self.fill_check = QCheckBox("Tint")
        self.fill_check.setChecked(True)
        self.fill_check.setToolTip("A faint fill on the changed tiles; off: outlines only")
        options.addWidget(self.shown_combo, 1)
        options.addWidget(self.unreviewed_check)
        options.addWidget(self.fill_check)
        layout.addLayout(options)

        self.message_label = QLabel("")   # what happened last (a warning, a recalibration), until the next
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.message_label)
        self.score_note = QLabel("")
        self.score_note.setWordWrap(True)
        layout.addWidget(self.score_note)
        self.tile_list = QListWidget()
        self.tile_list.setWordWrap(True)
        self.tile_list.setTextElideMode(Qt.ElideNone)
        layout.addWidget(self.tile_list, 1)

        self.caption_label = QLabel("")
        self.caption_label.setWordWrap(True)
        self.caption_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        layout.addWidget(self.caption_label)
        layout.addWidget(self.info_label)

        self.previous_button = QPushButton(f"◀ Previous ({KEYS['previous']})")
        self.next_button = QPushButton(f"Next ▶ ({KEYS['next']})")
        self.flicker_button = QPushButton(f"Flicker ({KEYS['flicker']})")
        self.confirm_button = QPushButton(f"✔ Confirm ({KEYS['confirm']})")
        self.reject_button = QPushButton(f"✘ Reject ({KEYS['reject']})")
        tips = {"previous": "The previous tile in the list", "next": "The next tile in the list",
                "flicker": "Show the before or the after image under the tile (the other is hidden)",
                "confirm": "The tile really changed: record it and go to the next",
                "reject": "The tile did not change: record it and go to the next"}
        self.shortcuts = {}
        for name, button in (("previous", self.previous_button), ("next", self.next_button),
                             ("flicker", self.flicker_button), ("confirm", self.confirm_button),
                             ("reject", self.reject_button)):
            button.setToolTip(f"{tips[name]} (key {KEYS[name]} while the panel has focus)")
            shortcut = QShortcut(QKeySequence(KEYS[name]), self)
            shortcut.setContext(Qt.WidgetWithChildrenShortcut)
            shortcut.activated.connect(button.click)
            self.shortcuts[name] = shortcut
        for row in ((self.previous_button, self.next_button, self.flicker_button),
                    (self.confirm_button, self.reject_button)):
            buttons = QHBoxLayout()
            for button in row:
                buttons.addWidget(button)
            layout.addLayout(buttons)
        self.recalibrate_button = QPushButton("Recalibrate from my verdicts")
        self.recalibrate_button.setToolTip(
            "Fit this model's change threshold to the tiles you confirmed (changed) and rejected "
            "(unchanged) here, at least 5 of each; your next reviews with this model use it")
        layout.addWidget(self.recalibrate_button)

    def _connect(self) -> None:
        self.layer_combo.currentIndexChanged.connect(self._layer_picked)
        self.open_button.clicked.connect(self.browse)
        self.run_button.clicked.connect(self.start_review)
        self.shown_combo.currentIndexChanged.connect(lambda _: self.reload())
        self.unreviewed_check.toggled.connect(lambda _: self.reload())
        self.fill_check.toggled.connect(self._tint)
        self.tile_list.currentRowChanged.connect(self._show)
        self.previous_button.clicked.connect(self.previous)
        self.next_button.clicked.connect(self.next)
        self.flicker_button.clicked.connect(self.flicker)
        self.confirm_button.clicked.connect(lambda: self.judge("confirmed"))
        self.reject_button.clicked.connect(lambda: self.judge("rejected"))
        self.recalibrate_button.clicked.connect(self.recalibrate)
        project = QgsProject.instance()
        project.layersAdded.connect(self._layers_added)
        project.layersRemoved.connect(self.refresh_layers)
        review_events.ended.connect(self._review_ended)
        if self.iface is not None:
            self.iface.currentLayerChanged.connect(self._active_layer_changed)

    # --- layers ----------------------------------------------------------------------------------
    def refresh_layers(self, *_) -> None:
        """Fill the combo with the project's review layers, keeping the current one if still there."""
        current = self.layer_combo.currentData()  # an id: the layer object may be deleted already
        layers = [layer for layer in QgsProject.instance().mapLayers().values() if is_review_layer(layer)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for layer in layers:
            self.layer_combo.addItem(layer.name(), layer.id())
        self.layer_combo.blockSignals(False)
        index = self.layer_combo.findData(current)
        if index < 0 and self._prefer_active_layer():
            return
        self.layer_combo.setCurrentIndex(max(index, 0) if layers else -1)
        self._layer_picked()

    def _active_layer_changed(self, *_) -> None:
        self._prefer_active_layer()

    def _prefer_active_layer(self) -> bool:
        active = self.iface.activeLayer() if self.iface is not None else None
        index = self.layer_combo.findData(active.id()) if is_review_layer(active) else -1
        if index >= 0:
            self.layer_combo.setCurrentIndex(index)
            self._layer_picked()
        return index >= 0

    def _layers_added(self, layers) -> None:
        self.refresh_layers()
        added = [layer for layer in layers if is_review_layer(layer)]
        if added:  # e.g. the output of a review just run: show it
            self.set_layer(added[-1])

    def _layer_picked(self, *_) -> None:
        layer = QgsProject.instance().mapLayer(self.layer_combo.currentData() or "")
        if layer is not self.layer:
            self.layer = layer
            self.reload()
            self._note_threshold()
            if layer is not None and is_temporary(review_path(layer)):
                self.warn("This review is in a temporary file: the verdicts you record are lost when QGIS "
                          "closes. Save it first (Export ▸ Save Features As… a GeoPackage) and review that.")

    def set_layer(self, layer: QgsVectorLayer) -> None:
        """Review `layer` (a review layer of the project)."""
        self.layer_combo.setCurrentIndex(self.layer_combo.findData(layer.id()))
        self._layer_picked()

    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a UniRS change review", "", "GeoPackage (*.gpkg)")
        if path:
            self.open_path(path)

    def open_path(self, path: str) -> QgsVectorLayer | None:
        """Add the review in `path` to the project (styled) and review it."""
        try:
            layer = open_review(path)
        except ValueError as exc:
            self.warn(str(exc))
            return None
        QgsProject.instance().addMapLayer(layer)  # -> _layers_added selects it
        return layer

    def start_review(self) -> None:
        """Show the Processing dialog of the review, Before/After prefilled with the oldest and newest
        raster layers; its output comes back here through the project's layersAdded. Not modal: the
        analyst can keep using the map while the review runs in the background."""
        import processing

        rasters = order_by_date([layer for layer in QgsProject.instance().mapLayers().values()
                                 if isinstance(layer, QgsRasterLayer)])
        params = {"BEFORE": rasters[0].id(), "AFTER": rasters[-1].id()} if len(rasters) >= 2 else {}
        self.review_dialog = processing.createAlgorithmDialog("unirs:review_changes", params)
        self.review_dialog.show()

    def _review_ended(self, uri: str, how: str, message: str) -> None:
        """A review run ended: reload it where it is open; load a cancelled run's finished tiles."""
        opened = [layer for layer in QgsProject.instance().mapLayers().values()
                  if is_review_layer(layer) and layer.source() == uri]
        for layer in opened:
            layer.dataProvider().reloadData()
            layer.triggerRepaint()
        if how == INTERRUPTED and not opened:
            self.open_path(uri.split("|")[0])
        elif self.layer is not None and self.layer.source() == uri:
            self.reload(keep_fid=self.current().fid if self.current() else None)
            self._note_threshold()   # a run (re)started here may have resolved another threshold
        if how == INTERRUPTED:
            self.warn(message)

    # --- tiles -----------------------------------------------------------------------------------
    def reload(self, keep_fid: int | None = None) -> None:
        """Re-read the tiles (the engine may still be adding some) and select `keep_fid`, else the first."""
        shown = self.shown_combo.currentData()
        self.tiles = review_tiles(self.layer, shown, self.unreviewed_check.isChecked()) if self.layer else []
        self.tile_list.blockSignals(True)
        self.tile_list.clear()
        for tile in self.tiles:
            mark = VERDICT_MARKS.get(tile.verdict, "·")
            warning = "⚠ " if tile.disagrees else ""
            item = QListWidgetItem(f"{mark} {tile.score:.3f}  {warning}{tile.caption or '(no caption)'}")
            item.setToolTip(tile.describe())
            item.setData(Qt.UserRole, tile.fid)
            self.tile_list.addItem(item)
        self.tile_list.blockSignals(False)
        rows = [i for i, tile in enumerate(self.tiles) if tile.fid == keep_fid]
        self.tile_list.setCurrentRow(rows[0] if rows else (0 if self.tiles else -1))
        if not self.tiles:
            self._show(-1)

    def _note_threshold(self) -> None:
        """What the score means and the review's threshold (its run record: read once per layer or run,
        not at each verdict)."""
        if self.layer is None:
            return self.score_note.setText("")
        counts = review_counts(review_path(self.layer))
        threshold = applied_threshold(counts) if counts else review_threshold(self.layer)
        source = f" ({counts['threshold_source']})" if counts.get("threshold_source") else ""
        meaning = SCORE_MEANINGS.get(counts.get("change_score"), SCORE_MEANINGS[COSINE_SCORE])
        self.score_note.setText(f"Score: {meaning}. Changed: score ≥ {threshold:.3g}{source}. "
                                "⚠: the caption says otherwise.")

    def current(self) -> Tile | None:
        row = self.tile_list.currentRow()
        return self.tiles[row] if 0 <= row < len(self.tiles) else None

    def next(self) -> None:
        self.tile_list.setCurrentRow(min(self.tile_list.currentRow() + 1, len(self.tiles) - 1))

    def previous(self) -> None:
        self.tile_list.setCurrentRow(max(self.tile_list.currentRow() - 1, 0))

    def judge(self, verdict: str) -> None:
        """Store `verdict` for the current tile, then go on to the next one."""
        tile = self.current()
        if tile is None or self.layer is None:
            return
        try:
            set_verdict(self.layer, tile.fid, verdict, reviewer())
        except ReviewWriteError as exc:
            return self.warn(str(exc))
        row = self.tile_list.currentRow()
        following = self.tiles[row + 1].fid if row + 1 < len(self.tiles) else tile.fid
        self.reload(keep_fid=following)

    def _show(self, row: int) -> None:
        tile = self.tiles[row] if 0 <= row < len(self.tiles) else None
        for button in (self.confirm_button, self.reject_button, self.flicker_button):
            button.setEnabled(tile is not None)
        self.previous_button.setEnabled(tile is not None and row > 0)
        self.next_button.setEnabled(tile is not None and row < len(self.tiles) - 1)
        if tile is None:
            self.caption_label.setText("No tiles to show." if self.layer is not None else
                                       "Open a review, or start one with 'New review…'.")
            self.info_label.setText("")
            self._highlight(None)
            return
        self.caption_label.setText(("⚠ " if tile.disagrees else "") + (tile.caption or "(no caption)"))
        verdict = f" · {tile.verdict} by {tile.reviewed_by}" if tile.verdict else ""
        self.info_label.setText(f"{row + 1}/{len(self.tiles)} · score {tile.score:.3f} · "
                                f"{tile.date_before or '?'} → {tile.date_after or '?'} · "
                                f"tile r{tile.row} c{tile.col}{verdict}")
        self.zoom_to(tile)

    def _canvas(self):
        return self.iface.mapCanvas() if self.iface is not None else None

    def _in_canvas_crs(self, geometry: QgsGeometry) -> QgsGeometry:
        target = self._canvas().mapSettings().destinationCrs()
        if target.isValid() and self.layer.crs().isValid() and target != self.layer.crs():
            geometry = QgsGeometry(geometry)
            geometry.transform(QgsCoordinateTransform(self.layer.crs(), target, QgsProject.instance()))
        return geometry

    def zoom_to(self, tile: Tile) -> None:
        """Zoom the map canvas to `tile` and outline it (no fill: the imagery stays visible)."""
        canvas = self._canvas()
        if canvas is None:
            return
        geometry = self._in_canvas_crs(self.layer.getFeature(tile.fid).geometry())
        extent = geometry.boundingBox()
        extent.scale(ZOOM_MARGIN)
        canvas.setExtent(extent)
        self._highlight(geometry)
        canvas.refresh()

    def _highlight(self, geometry: QgsGeometry | None) -> None:
        canvas = self._canvas()
        if canvas is None:
            return
        if self.highlight is None:
            self.highlight = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
            self.highlight.setStrokeColor(QColor(HIGHLIGHT))
            self.highlight.setFillColor(QColor(0, 0, 0, 0))
            self.highlight.setWidth(3)
        self.highlight.reset(QgsWkbTypes.PolygonGeometry)
        if geometry is not None:
            self.highlight.setToGeometry(geometry, None)

    def _tint(self, on: bool) -> None:
        if self.layer is not None:
            set_fill(self.layer, on)

    # --- flicker ---------------------------------------------------------------------------------
    def dated_layers(self) -> tuple[QgsRasterLayer, QgsRasterLayer] | None:
        """The review's before and after rasters in the project, added (under the review) if missing."""
        job = json.loads(review_counts(review_path(self.layer)).get("job_json") or "{}")
        if not job.get("before") or not job.get("after"):
            return None
        project, found = QgsProject.instance(), []
        for role in ("before", "after"):
            path = job[role]
            layer = next((lyr for lyr in project.mapLayers().values() if isinstance(lyr, QgsRasterLayer)
                          and os.path.exists(lyr.source()) and os.path.exists(path)
                          and os.path.samefile(lyr.source(), path)), None)
            if layer is None:
                layer = QgsRasterLayer(path, f"{role} {job.get(f'date_{role}') or ''}".strip())
                if not layer.isValid():
                    return None
                project.addMapLayer(layer, False)
                project.layerTreeRoot().addLayer(layer)   # at the bottom: under the review's outlines
            found.append(layer)
        return found[0], found[1]

    def flicker(self) -> None:
        """Show the after image if the before one is visible, else the before one (the other hidden)."""
        if self.layer is None:
            return
        pair = self.dated_layers()
        if pair is None:
            return self.warn("The review's before and after rasters cannot be found (moved or deleted?)")
        root = QgsProject.instance().layerTreeRoot()
        before, after = (root.findLayer(layer.id()) for layer in pair)
        show_after = before.isVisible() or not after.isVisible()
        after.setItemVisibilityChecked(show_after)
        before.setItemVisibilityChecked(not show_after)
        shown = pair[1] if show_after else pair[0]
        self.info_label.setText(f"Showing {'after' if show_after else 'before'}: {shown.name()}")

    # --- learning from verdicts -----------------------------------------------------------------
    def recalibrate(self) -> None:
        """Fit the model's threshold to this review's verdicts and keep it for the next reviews."""
        if self.layer is None:
            return
        try:
            result = calibrate_from_review(review_path(self.layer))
        except ReviewError as exc:
            return self.warn(str(exc))
        keep_user_threshold(result)
        text = (f"Threshold for {result.model_id}: {result.before.threshold:.3g} → {result.after.threshold:.3g}; "
                f"balanced accuracy on your {result.after.changed} confirmed and {result.after.unchanged} "
                f"rejected tiles {100 * result.before.balanced_accuracy:.0f} % → "
                f"{100 * result.after.balanced_accuracy:.0f} %. Your next reviews with this model use it.")
        self.message_label.setText(text)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("UniRS", text, Qgis.Success, 10)

    def warn(self, text: str) -> None:
        self.message_label.setText(f"⚠ {text}")
        if self.iface is not None:
            self.iface.messageBar().pushMessage("UniRS", text, Qgis.Warning, 10)

    def hideEvent(self, event) -> None:  # noqa: N802 (Qt): another tab, or the dock closed
        self._highlight(None)
        super().hideEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt)
        super().showEvent(event)
        if self.current() is not None and self.layer is not None and self._canvas() is not None:
            self._highlight(self._in_canvas_crs(self.layer.getFeature(self.current().fid).geometry()))
