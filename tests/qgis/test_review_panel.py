"""The dock's review mode in real QGIS 3.22 (offscreen) on a GeoPackage in the engine's review schema,
written here with QGIS's own writer so the scores (and so the order) are known: ordering, stepping,
zooming the canvas across CRSs with the tile outlined (not filled), keyboard review, verdicts with who
and when persisted in the file, the filters (unreviewed, disagreements, all), the tint switch."""

from __future__ import annotations

from pathlib import Path

import pytest
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsField,
                       QgsFields, QgsGeometry, QgsGraduatedSymbolRenderer, QgsProject, QgsRasterLayer,
                       QgsRectangle,
                       QgsVectorFileWriter, QgsVectorLayer, QgsWkbTypes, NULL)
from qgis.PyQt.QtCore import QDate, QDateTime, Qt, QVariant
from qgis.PyQt.QtTest import QTest

from unirs_qgis.dock.review_panel import (HIGHLIGHT, ReviewPanel, ReviewWriteError, open_review, review_tiles,
                                          reviewer, set_verdict)
from unirs_qgis.dock.widget import UniRSDockWidget
from unirs_qgis.review_style import FAINT_FILL

ORIGIN = (500_000.0, 4_500_000.0)
TILE_M = 640.0  # 64 px of 10 m
# (row, col) -> score; tiles under 0.1 are unchanged (no caption)
SCORES = {(0, 0): 0.05, (0, 1): 0.42, (0, 2): 0.13, (1, 0): 0.88, (1, 1): 0.02, (1, 2): 0.27}
CAPTION_SAYS_NO = {(0, 2)}   # above the threshold, but its caption says nothing changed


def tile_rect(row: int, col: int) -> QgsRectangle:
    x0, y1 = ORIGIN[0] + col * TILE_M, ORIGIN[1] - row * TILE_M
    return QgsRectangle(x0, y1 - TILE_M, x0 + TILE_M, y1)


def write_review_gpkg(path: Path) -> Path:
    """The 'changes' table of the review contract, written by QgsVectorFileWriter."""
    fields = QgsFields()
    for name, kind in (("tile_row", QVariant.Int), ("tile_col", QVariant.Int), ("score", QVariant.Double),
                       ("score_above_threshold", QVariant.Bool), ("caption_says_change", QVariant.Bool),
                       ("caption", QVariant.String),
                       ("date_before", QVariant.Date), ("date_after", QVariant.Date),
                       ("model", QVariant.String), ("run_id", QVariant.String),
                       ("verdict", QVariant.String), ("reviewed_at", QVariant.DateTime),
                       ("reviewed_by", QVariant.String)):
        fields.append(QgsField(name, kind))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", "changes"
    writer = QgsVectorFileWriter.create(str(path), fields, QgsWkbTypes.Polygon,
                                        QgsCoordinateReferenceSystem("EPSG:32633"),
                                        QgsProject.instance().transformContext(), options)
    for (row, col), score in SCORES.items():
        feature = QgsFeature(fields)
        feature.setGeometry(QgsGeometry.fromRect(tile_rect(row, col)))
        changed = score >= 0.1
        says = (row, col) not in CAPTION_SAYS_NO if changed else NULL
        feature.setAttributes([row, col, score, changed, says, f"caption r{row} c{col}" if changed else None,
                               QDate(2019, 6, 1), QDate(2023, 6, 1), "tiny", "run-1", None, None, None])
        assert writer.addFeature(feature)
    del writer  # flush and close
    return path


@pytest.fixture()
def review_gpkg(tmp_path) -> Path:
    return write_review_gpkg(tmp_path / "review.gpkg")


@pytest.fixture()
def panel(qgis_iface, qgis_new_project, qgis_canvas):
    qgis_canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))  # not the tiles' CRS
    widget = ReviewPanel(qgis_iface)
    widget.show()
    yield widget
    widget.close()
    widget.deleteLater()


def reopened(path: Path) -> dict[tuple[int, int], tuple]:
    """(row, col) -> (verdict, reviewed_at, reviewed_by) read back from the file by a fresh layer."""
    layer = QgsVectorLayer(f"{path}|layername=changes", "reopened", "ogr")
    assert layer.isValid()
    return {(f["tile_row"], f["tile_col"]): (f["verdict"], f["reviewed_at"], f["reviewed_by"])
            for f in layer.getFeatures()}


def test_changed_tiles_are_listed_by_score_descending(panel, review_gpkg):
    layer = panel.open_path(str(review_gpkg))
    assert panel.layer is layer and isinstance(layer.renderer(), QgsGraduatedSymbolRenderer)
    assert [t.score for t in panel.tiles] == [0.88, 0.42, 0.27, 0.13]   # unchanged tiles left out
    assert panel.tile_list.count() == 4 and panel.tile_list.currentRow() == 0
    assert "caption r1 c0" in panel.caption_label.text() and "0.880" in panel.info_label.text()
    assert "2019-06-01 → 2023-06-01" in panel.info_label.text()
    # entries wrap in a narrow dock, the tooltip says everything, and the disagreeing tile is marked
    assert panel.tile_list.wordWrap() and panel.tile_list.textElideMode() == Qt.ElideNone
    assert [panel.tile_list.item(i).text() for i in range(4)][3] == "· 0.130  ⚠ caption r0 c2"
    assert panel.tile_list.item(3).toolTip() == ("caption r0 c2\nscore 0.1300 · changed, the caption says no "
                                                 "change\n2019-06-01 → 2023-06-01 · tile row 0, column 2")
    assert panel.score_note.text().startswith("Score: 1 − the similarity of the model's before and after features")


def test_next_previous_zoom_the_canvas_to_the_tile_in_the_canvas_crs(panel, review_gpkg, qgis_canvas):
    panel.open_path(str(review_gpkg))
    to_canvas = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                       QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    for step, expected in ((panel.next, (0, 1)), (panel.next, (1, 2)), (panel.previous, (0, 1))):
        before = qgis_canvas.extent()
        step()
        tile = panel.current()
        assert (tile.row, tile.col) == expected
        target = to_canvas.transformBoundingBox(tile_rect(*expected))
        extent = qgis_canvas.extent()
        assert extent != before and extent.contains(target)
        assert extent.width() < 3 * target.width() or extent.height() < 3 * target.height()  # zoomed in
        # outlined on the canvas, not selected (a selection is filled and hides the imagery)
        assert panel.layer.selectedFeatureIds() == []
        band = panel.highlight
        assert band.asGeometry().boundingBox().toRectF().getCoords() == pytest.approx(
            target.toRectF().getCoords(), rel=1e-6)
        assert band.fillColor().alpha() == 0 and band.strokeColor().name() == HIGHLIGHT and band.width() >= 3


def test_confirm_and_reject_persist_in_the_geopackage_and_advance(panel, review_gpkg):
    panel.open_path(str(review_gpkg))
    started = QDateTime.currentDateTimeUtc().addSecs(-1)
    panel.confirm_button.click()                      # tile (1, 0)
    assert (panel.current().row, panel.current().col) == (0, 1)
    panel.reject_button.click()                       # tile (0, 1)
    assert (panel.current().row, panel.current().col) == (1, 2)
    assert panel.tile_list.item(0).text().startswith("✔") and panel.tile_list.item(1).text().startswith("✘")

    stored = reopened(review_gpkg)
    assert stored[(1, 0)][0] == "confirmed" and stored[(0, 1)][0] == "rejected"
    assert stored[(1, 0)][1] >= started and stored[(0, 1)][1] >= started
    assert stored[(1, 0)][2] == stored[(0, 1)][2] == reviewer() != ""
    assert stored[(1, 2)] == (NULL, NULL, NULL)
    assert not panel.layer.isEditable()  # committed at once


def test_unreviewed_only_hides_judged_tiles(panel, review_gpkg):
    panel.open_path(str(review_gpkg))
    panel.confirm_button.click()
    panel.unreviewed_check.setChecked(True)
    assert [t.score for t in panel.tiles] == [0.42, 0.27, 0.13]
    panel.reject_button.click()                       # judges 0.42; the list shrinks, 0.27 is next
    assert [t.score for t in panel.tiles] == [0.27, 0.13] and panel.current().score == 0.27
    assert [t.score for t in review_tiles(panel.layer)] == [0.88, 0.42, 0.27, 0.13]


def test_the_list_shows_disagreements_or_every_tile(panel, review_gpkg):
    panel.open_path(str(review_gpkg))
    panel.shown_combo.setCurrentIndex(panel.shown_combo.findData("disagree"))
    assert [(t.row, t.col) for t in panel.tiles] == [(0, 2)] and panel.caption_label.text().startswith("⚠ ")
    panel.shown_combo.setCurrentIndex(panel.shown_combo.findData("all"))
    assert [t.score for t in panel.tiles] == sorted(SCORES.values(), reverse=True)
    panel.next_button.click()
    panel.reject_button.click()                       # an unchanged tile can be judged too
    assert reopened(review_gpkg)[(0, 1)][0] == "rejected"


def test_keyboard_review(panel, review_gpkg):
    panel.open_path(str(review_gpkg))
    panel.tile_list.setFocus()
    for key, name in (("Y", "confirm"), ("N", "reject"), ("J", "next"), ("K", "previous"), ("F", "flicker")):
        assert f"(key {key} " in getattr(panel, f"{name}_button").toolTip()
    QTest.keyClick(panel.tile_list, Qt.Key_Y)         # confirm 0.88, on to 0.42
    QTest.keyClick(panel.tile_list, Qt.Key_J)         # next: 0.27
    QTest.keyClick(panel.tile_list, Qt.Key_N)         # reject 0.27, on to 0.13
    QTest.keyClick(panel.tile_list, Qt.Key_K)         # back to 0.27
    assert panel.current().score == 0.27
    stored = reopened(review_gpkg)
    assert (stored[(1, 0)][0], stored[(0, 1)][0], stored[(1, 2)][0]) == ("confirmed", NULL, "rejected")


def test_the_tint_can_be_switched_off(panel, review_gpkg):
    layer = panel.open_path(str(review_gpkg))
    fills = lambda: [r.symbol().symbolLayer(0).fillColor().alpha() for r in layer.renderer().ranges()]
    assert fills()[0] == 0 and set(fills()[1:]) == {FAINT_FILL}      # unchanged tiles: outline only
    panel.fill_check.setChecked(False)
    assert set(fills()) == {0}


def test_verdict_refused_while_the_user_edits_the_layer(review_gpkg, qgis_new_project):
    layer = open_review(str(review_gpkg))
    (first, *_) = review_tiles(layer)
    layer.startEditing()
    with pytest.raises(ReviewWriteError, match="is being edited: save or discard the edits first"):
        set_verdict(layer, first.fid, "confirmed", "me")
    layer.rollBack()
    with pytest.raises(ValueError, match="verdict must be one of"):
        set_verdict(layer, first.fid, "maybe", "me")


def test_not_a_review_is_a_clear_message(panel, tmp_path):
    other = QgsVectorLayer("Polygon?crs=EPSG:32633&field=name:string", "other", "memory")
    path = tmp_path / "other.gpkg"
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", "changes"
    QgsVectorFileWriter.writeAsVectorFormatV3(other, str(path), QgsProject.instance().transformContext(),
                                              options)
    assert panel.open_path(str(path)) is None
    assert "is not a UniRS change review" in panel.message_label.text()


def test_active_review_layer_is_picked_up_and_dock_has_the_review_tab(qgis_iface, qgis_new_project,
                                                                     review_gpkg):
    layer = open_review(str(review_gpkg))
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    dock = UniRSDockWidget(qgis_iface)
    try:
        tabs = [dock.tabs.tabText(i) for i in range(dock.tabs.count())]
        assert tabs[-1] == "Review" and dock.review_panel.layer is layer
        dock.tabs.setCurrentIndex(len(tabs) - 1)
        assert dock.history_layer() is None
        assert dock.review_panel.tile_list.count() == 4
    finally:
        dock.close()
        dock.deleteLater()


def test_new_review_opens_the_algorithm_dialog_with_the_dated_pair(panel, unirs_provider, tmp_path,
                                                                   qgis_iface, monkeypatch):
    from qgis.gui import QgsBrowserGuiModel

    from unirs_engine.testing.rasters import pattern, write_raster

    project = QgsProject.instance()
    newer = QgsRasterLayer(str(write_raster(tmp_path / "site_2023-06-01.tif", pattern(32, 32))), "site_2023-06-01")
    older = QgsRasterLayer(str(write_raster(tmp_path / "site_2019-06-01.tif", pattern(32, 32))), "site_2019-06-01")
    project.addMapLayers([newer, older])
    browser = QgsBrowserGuiModel()   # the Processing dialog asks QGIS's iface for it; the stub has none
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)
    panel.run_button.click()
    dialog = panel.review_dialog
    try:
        assert dialog.isVisible() and not dialog.isModal()
        values = dialog.createProcessingParameters()
        assert "Review changes between dated mosaics" in dialog.windowTitle()
        assert values["BEFORE"] in (older.id(), older.source())
        assert values["AFTER"] in (newer.id(), newer.source())
    finally:
        dialog.close()
