"""The dock's review mode: step through the changed tiles of a change-review GeoPackage by score,
zoom the canvas to each, and mark it confirmed or rejected (written into the GeoPackage at once).

The review itself runs as the Processing algorithm unirs:review_changes (its dialog runs it as a
background task with progress and cancel); its output layer is picked up here when it is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from qgis.core import (Qgis, QgsCoordinateTransform, QgsFeatureRequest, QgsGraduatedSymbolRenderer,
                       QgsProject, QgsRasterLayer, QgsVectorLayer)
from qgis.PyQt.QtCore import QDateTime, Qt
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLabel, QListWidget,
                                 QListWidgetItem, QPushButton, QVBoxLayout, QWidget)

from ..algorithms.review_changes import LAYER, applied_threshold, review_counts
from ..dates import order_by_date
from ..review_style import style_review_layer

REVIEW_FIELDS = ("tile_row", "tile_col", "score", "changed", "caption", "verdict", "reviewed_at")
VERDICT_MARKS = {"confirmed": "✔", "rejected": "✘"}
ZOOM_MARGIN = 1.2  # show a little ground around the tile


class ReviewWriteError(RuntimeError):
    """A verdict could not be written into the GeoPackage."""


@dataclass(frozen=True)
class Tile:
    fid: int
    score: float
    caption: str
    row: int
    col: int
    verdict: str | None
    date_before: str
    date_after: str


def is_review_layer(layer) -> bool:
    """True for a vector layer with the change-review table's fields."""
    return isinstance(layer, QgsVectorLayer) and layer.isValid() and \
        all(layer.fields().indexOf(name) >= 0 for name in REVIEW_FIELDS)


def _text(value) -> str:
    """Attribute as display text: NULL -> "", dates as ISO."""
    if value is None or (hasattr(value, "isNull") and value.isNull()):
        return ""
    return value.toString(Qt.ISODate) if hasattr(value, "toString") else str(value)


def changed_tiles(layer: QgsVectorLayer, unreviewed_only: bool = False) -> list[Tile]:
    """The changed tiles of `layer`, highest score first (optionally only those without a verdict)."""
    expression = '"changed"' + (' AND "verdict" IS NULL' if unreviewed_only else "")
    request = QgsFeatureRequest().setFilterExpression(expression)
    request.setFlags(QgsFeatureRequest.NoGeometry)
    request.setOrderBy(QgsFeatureRequest.OrderBy([QgsFeatureRequest.OrderByClause("score", False)]))
    return [Tile(f.id(), float(f["score"]), _text(f["caption"]), int(f["tile_row"]), int(f["tile_col"]),
                 _text(f["verdict"]) or None, _text(f["date_before"]), _text(f["date_after"]))
            for f in layer.getFeatures(request)]


def set_verdict(layer: QgsVectorLayer, fid: int, verdict: str) -> None:
    """Write `verdict` and reviewed_at (UTC now) for tile `fid` and commit at once."""
    if verdict not in VERDICT_MARKS:
        raise ValueError(f"verdict must be one of {sorted(VERDICT_MARKS)}, got {verdict!r}")
    if layer.isEditable():  # committing would also save the user's own pending edits
        raise ReviewWriteError(f"layer '{layer.name()}' is being edited: save or discard the edits first")
    fields = layer.fields()
    layer.startEditing()
    written = (layer.changeAttributeValue(fid, fields.indexOf("verdict"), verdict)
               and layer.changeAttributeValue(fid, fields.indexOf("reviewed_at"), QDateTime.currentDateTimeUtc()))
    if not written or not layer.commitChanges():
        errors = "; ".join(layer.commitErrors()) or "the edit was refused"
        layer.rollBack()
        raise ReviewWriteError(f"layer '{layer.name()}': could not save the verdict of tile {fid}: {errors}")


def open_review(path: str) -> QgsVectorLayer:
    """The changes table of a review GeoPackage as a styled layer (not yet in the project)."""
    name = os.path.splitext(os.path.basename(path))[0]
    layer = QgsVectorLayer(f"{path}|layername={LAYER}", f"UniRS review: {name}", "ogr")
    if not is_review_layer(layer):
        raise ValueError(f"{path} is not a UniRS change review (no '{LAYER}' table with "
                         f"{', '.join(REVIEW_FIELDS)})")
    if not isinstance(layer.renderer(), QgsGraduatedSymbolRenderer):  # no default style saved in it
        style_review_layer(layer, applied_threshold(review_counts(path)))
    return layer


class ReviewPanel(QWidget):
    """Pick a review layer, list its changed tiles by score, step through them and judge them."""

    def __init__(self, iface=None, parent=None):
        super().__init__(parent)
        self.iface = iface
        self.layer: QgsVectorLayer | None = None
        self.tiles: list[Tile] = []
        self.review_dialog = None  # the last "New review…" dialog (kept alive while it is shown)
        self._build()
        self._connect()
        self.refresh_layers()

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

        self.unreviewed_check = QCheckBox("Unreviewed only")
        layout.addWidget(self.unreviewed_check)
        self.tile_list = QListWidget()
        layout.addWidget(self.tile_list, 1)

        self.caption_label = QLabel("")
        self.caption_label.setWordWrap(True)
        self.caption_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.info_label = QLabel("")
        layout.addWidget(self.caption_label)
        layout.addWidget(self.info_label)

        buttons = QHBoxLayout()
        self.previous_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.confirm_button = QPushButton("Confirm")
        self.reject_button = QPushButton("Reject")
        for button in (self.previous_button, self.next_button, self.confirm_button, self.reject_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)

    def _connect(self) -> None:
        self.layer_combo.currentIndexChanged.connect(self._layer_picked)
        self.open_button.clicked.connect(self.browse)
        self.run_button.clicked.connect(self.start_review)
        self.unreviewed_check.toggled.connect(lambda _: self.reload())
        self.tile_list.currentRowChanged.connect(self._show)
        self.previous_button.clicked.connect(self.previous)
        self.next_button.clicked.connect(self.next)
        self.confirm_button.clicked.connect(lambda: self.judge("confirmed"))
        self.reject_button.clicked.connect(lambda: self.judge("rejected"))
        project = QgsProject.instance()
        project.layersAdded.connect(self._layers_added)
        project.layersRemoved.connect(self.refresh_layers)
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
        """Show the Processing dialog of the review, BEFORE/AFTER prefilled with the oldest and newest
        raster layers; its output comes back here through the project's layersAdded. Not modal: the
        analyst can keep using the map while the review runs in the background."""
        import processing

        rasters = order_by_date([layer for layer in QgsProject.instance().mapLayers().values()
                                 if isinstance(layer, QgsRasterLayer)])
        params = {"BEFORE": rasters[0].id(), "AFTER": rasters[-1].id()} if len(rasters) >= 2 else {}
        self.review_dialog = processing.createAlgorithmDialog("unirs:review_changes", params)
        self.review_dialog.show()

    # --- tiles -----------------------------------------------------------------------------------
    def reload(self, keep_fid: int | None = None) -> None:
        """Re-read the changed tiles (the engine may still be adding some) and select `keep_fid`, else
        the first."""
        self.tiles = changed_tiles(self.layer, self.unreviewed_check.isChecked()) if self.layer else []
        self.tile_list.blockSignals(True)
        self.tile_list.clear()
        for tile in self.tiles:
            mark = VERDICT_MARKS.get(tile.verdict, " ")
            item = QListWidgetItem(f"{mark} {tile.score:.3f}  r{tile.row} c{tile.col}  {tile.caption[:60]}")
            item.setData(Qt.UserRole, tile.fid)
            self.tile_list.addItem(item)
        self.tile_list.blockSignals(False)
        rows = [i for i, tile in enumerate(self.tiles) if tile.fid == keep_fid]
        self.tile_list.setCurrentRow(rows[0] if rows else (0 if self.tiles else -1))
        if not self.tiles:
            self._show(-1)

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
            set_verdict(self.layer, tile.fid, verdict)
        except ReviewWriteError as exc:
            return self.warn(str(exc))
        row = self.tile_list.currentRow()
        following = self.tiles[row + 1].fid if row + 1 < len(self.tiles) else tile.fid
        self.reload(keep_fid=following)

    def _show(self, row: int) -> None:
        tile = self.tiles[row] if 0 <= row < len(self.tiles) else None
        for button in (self.confirm_button, self.reject_button):
            button.setEnabled(tile is not None)
        self.previous_button.setEnabled(tile is not None and row > 0)
        self.next_button.setEnabled(tile is not None and row < len(self.tiles) - 1)
        if tile is None:
            self.caption_label.setText("No changed tiles." if self.layer is not None else
                                       "Open a review, or start one with 'New review…'.")
            self.info_label.setText("")
            return
        self.caption_label.setText(tile.caption or "(no caption)")
        verdict = f" · {tile.verdict}" if tile.verdict else ""
        self.info_label.setText(f"{row + 1}/{len(self.tiles)} · score {tile.score:.3f} · "
                                f"{tile.date_before or '?'} → {tile.date_after or '?'} · "
                                f"tile r{tile.row} c{tile.col}{verdict}")
        self.layer.selectByIds([tile.fid])
        self.zoom_to(tile)

    def zoom_to(self, tile: Tile) -> None:
        """Zoom the map canvas to `tile` (in the canvas CRS)."""
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        if canvas is None:
            return
        extent = self.layer.getFeature(tile.fid).geometry().boundingBox()
        target = canvas.mapSettings().destinationCrs()
        if target.isValid() and self.layer.crs().isValid() and target != self.layer.crs():
            extent = QgsCoordinateTransform(self.layer.crs(), target, QgsProject.instance()
                                            ).transformBoundingBox(extent)
        extent.scale(ZOOM_MARGIN)
        canvas.setExtent(extent)
        canvas.refresh()

    def warn(self, text: str) -> None:
        self.caption_label.setText(text)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("UniRS", text, Qgis.Warning, 8)
