"""write_back.record_answer writes notes, GeoPackage features, metadata and custom properties that
survive QgsProject.write -> clear -> read; the notes never overlap, checked on rendered images (real
QGIS 3.22, real GeoTIFFs written with rasterio)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qgis.core import (Qgis, QgsAnnotationLayer, QgsAnnotationPointTextItem, QgsApplication,
                       QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsMapRendererSequentialJob,
                       QgsMapSettings, QgsPointXY, QgsProject, QgsRasterLayer, QgsRectangle,
                       QgsVectorLayer)
from qgis.PyQt.QtCore import QDate, QSize
from qgis.PyQt.QtGui import QColor, QImage

from unirs_engine.testing.rasters import UTM33, grid, pattern, write_raster
from unirs_engine.types import GeoRef, Result
from unirs_qgis import answers_store, write_back
from unirs_qgis import notes as map_notes
from unirs_qgis.answers import open_table

ORIGIN = (500_000.0, 4_500_000.0)
LAYER_BOUNDS = (500_000.0, 4_499_680.0, 500_320.0, 4_500_000.0)   # 32 px of 10 m


def _raster(path, seed=0, origin=ORIGIN):
    write_raster(path, pattern(32, 32, seed=seed), transform=grid(origin))
    layer = QgsRasterLayer(str(path), path.stem)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def _result(task, answer, source, bounds, **extra):
    georef = GeoRef(source=str(source), crs=QgsCoordinateReferenceSystem(UTM33).toWkt(),
                    bounds=bounds, transform=None, width=32, height=32, bands=(1, 2, 3))
    return Result(task=task, answer=answer, prompt="<prompt>", clue=None, model_id="unirs-tiny",
                  device="cpu", georef=[georef], extra=extra).to_dict()


def _reload(path):
    project = QgsProject.instance()
    assert project.write(str(path))
    project.clear()
    assert not project.mapLayers()
    assert project.read(str(path))
    return project


def _layer_named(project, name):
    (layer,) = project.mapLayersByName(name)
    return layer


def _view(extent: QgsRectangle, side_px: int = 600) -> QgsMapSettings:
    """A map view like the canvas's: UTM 33N, 96 dpi, transparent background."""
    view = QgsMapSettings()
    view.setDestinationCrs(QgsCoordinateReferenceSystem(UTM33))
    view.setOutputDpi(96)
    view.setOutputSize(QSize(side_px, side_px))
    view.setExtent(extent)
    view.setBackgroundColor(QColor(0, 0, 0, 0))
    return view


def rendered_box(item, crs, view: QgsMapSettings) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) pixels that `item`, rendered alone in `view`, painted; None if none."""
    layer = QgsAnnotationLayer("one", QgsAnnotationLayer.LayerOptions(QgsProject.instance().transformContext()))
    layer.setCrs(crs)
    layer.addItem(item.clone())
    settings = QgsMapSettings(view)
    settings.setLayers([layer])
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage().convertToFormat(QImage.Format_ARGB32)
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    alpha = np.frombuffer(bits, np.uint8).reshape(image.height(), image.width(), 4)[:, :, 3]
    ys, xs = np.nonzero(alpha)
    return (xs.min(), ys.min(), xs.max(), ys.max()) if len(xs) else None


def disjoint(a, b) -> bool:
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


@pytest.fixture()
def project_dir(qgis_new_project, tmp_path):
    QgsProject.instance().clear()    # file name and entries too, as Project ▸ New does
    return tmp_path


@pytest.fixture()
def ogr_messages():
    """Warnings QGIS logs while the test runs (OGR's 'Cannot open …' among them)."""
    seen = []

    def keep(message, tag, level):
        if level >= Qgis.Warning:
            seen.append(f"{tag}: {message}")

    log = QgsApplication.messageLog()
    log.messageReceived.connect(keep)
    yield seen
    log.messageReceived.disconnect(keep)


def test_ask_answer_survives_project_reload(project_dir, ogr_messages):
    project = QgsProject.instance()
    raster = _raster(project_dir / "scene_2021-06-30.tif")
    bounds = (500_080.0, 4_499_760.0, 500_240.0, 4_499_920.0)
    gpkg = str(project_dir / "answers.gpkg")
    result = _result("ask", "There are 3 buildings.", raster.source(), bounds)

    record = write_back.record_answer(project, [raster], result, "How many buildings?",
                                       answers_gpkg=gpkg)

    assert record["note"]["item"] and record["gpkg"]["fid"] >= 1
    assert record["extent"] == list(bounds) and record["extent_crs"] == "EPSG:32633"
    assert record["dates"] == ["2021-06-30"]
    assert not ogr_messages          # no "Cannot open …gpkg" while the file and table were created
    project = _reload(project_dir / "p.qgz")

    notes = _layer_named(project, map_notes.NOTES_LAYER_NAME)
    assert isinstance(notes, QgsAnnotationLayer)
    item = notes.items()[record["note"]["item"]]  # the id kept in the raster's property still works
    assert isinstance(item, QgsAnnotationPointTextItem)
    assert item.text() == "How many buildings?\n→ There are 3 buildings."
    # the note hangs from the top-left corner of the area asked about, inside it
    assert bounds[0] < item.point().x() < bounds[0] + 20 and bounds[1] < item.point().y() < bounds[3]
    assert item.useSymbologyReferenceScale() and item.symbologyReferenceScale() > 0

    raster = _layer_named(project, "scene_2021-06-30")
    (stored,) = write_back.answers_of(raster)
    assert stored == record
    (line,) = raster.metadata().history()
    assert "How many buildings? -> There are 3 buildings." in line and "unirs-tiny" in line

    table = _layer_named(project, "UniRS answers (ask)")
    assert isinstance(table, QgsVectorLayer)
    assert table.labeling() is not None and not table.labelsEnabled()   # the note shows the answer
    assert table.renderer().symbol().symbolLayer(0).brushStyle() == 0   # outline only (Qt.NoBrush)
    group = project.layerTreeRoot().findGroup("UniRS")
    assert {node.layer().name() for node in group.findLayers()} == {"UniRS notes", "UniRS answers (ask)"}
    (feature,) = list(table.getFeatures())
    assert feature["question"] == "How many buildings?"
    assert feature["answer"] == "There are 3 buildings."
    assert feature["layer"] == "scene_2021-06-30" and feature["model"] == "unirs-tiny"
    assert feature.geometry().boundingBox().toRectF().getCoords() == pytest.approx(
        (bounds[0], bounds[1], bounds[2], bounds[3]))

    elsewhere = open_table(gpkg, "ask")     # opened outside the project: the style saved in the file
    label = elsewhere.labeling().settings()
    text_format = label.format()       # copies, kept: buffer() points into it
    assert elsewhere.labelsEnabled() and text_format.buffer().enabled() and "answer" in label.fieldName


def test_answers_about_one_area_stack_in_one_note(project_dir):
    project = QgsProject.instance()
    raster = _raster(project_dir / "a.tif")
    gpkg = str(project_dir / "answers.gpkg")
    first = write_back.record_answer(project, [raster], _result("ask", "Yes", raster.source(), LAYER_BOUNDS),
                                      "Is there a road?", answers_gpkg=gpkg)
    second = write_back.record_answer(project, [raster], _result("ask", "No", raster.source(), LAYER_BOUNDS),
                                       "Is there a lake?", answers_gpkg=gpkg)

    assert len(project.mapLayersByName(map_notes.NOTES_LAYER_NAME)) == 1
    assert len(project.mapLayersByName("UniRS answers (ask)")) == 1
    assert first["note"] == second["note"]
    notes = _layer_named(project, map_notes.NOTES_LAYER_NAME)
    (item,) = notes.items().values()
    assert item.text() == "Is there a road?\n→ Yes\nIs there a lake?\n→ No"
    assert [r["question"] for r in write_back.answers_of(raster)] == ["Is there a road?",
                                                                      "Is there a lake?"]
    table = _layer_named(project, "UniRS answers (ask)")
    assert table.featureCount() == 2       # the project layer sees the second write
    assert len(raster.metadata().history()) == 2

    for i in range(map_notes.NOTE_ENTRIES):   # older entries give way to newer ones
        write_back.record_answer(project, [raster], _result("ask", f"A{i}", raster.source(), LAYER_BOUNDS),
                                  f"Q{i}?", answers_gpkg=gpkg)
    (item,) = notes.items().values()
    assert item.text().startswith("(+2 earlier: see the UniRS History)\nQ0?\n→ A0\n")


def test_notes_of_nested_areas_never_overlap_at_any_zoom(project_dir):
    """A change about the whole layer, questions about its lower half, its top-left quarter (same
    corner as the layer) and a square that overlaps the others: four notes, none over another."""
    project = QgsProject.instance()
    before = _raster(project_dir / "site_20190501.tif", seed=1)
    after = _raster(project_dir / "site_20210501.tif", seed=2)
    gpkg = str(project_dir / "answers.gpkg")
    lower_half = (500_000.0, 4_499_680.0, 500_320.0, 4_499_840.0)
    top_left = (500_000.0, 4_499_840.0, 500_160.0, 4_500_000.0)
    square = (500_010.0, 4_499_700.0, 500_200.0, 4_499_842.0)
    long_caption = "Many new buildings have been built along the road and the field is gone. " * 2
    write_back.record_answer(project, [before, after], _result("change", long_caption, before.source(),
                                                                LAYER_BOUNDS, changed=True),
                              "Describe the change", answers_gpkg=gpkg, view=_view(QgsRectangle(*LAYER_BOUNDS)))
    for bounds, question in ((lower_half, "How many buildings are there?"), (top_left, "Is there a lake?"),
                             (square, "Is there a road?")):
        write_back.record_answer(project, [after], _result("ask", "There are 12 buildings.", after.source(),
                                                             bounds),
                                  question, answers_gpkg=gpkg, view=_view(QgsRectangle(*LAYER_BOUNDS)))

    notes = _layer_named(project, map_notes.NOTES_LAYER_NAME)
    items = list(notes.items().values())
    assert len(items) == 4
    for side_px in (600, 200, 1800):   # as made, zoomed out, zoomed in: the text follows the map
        view = _view(QgsRectangle(*LAYER_BOUNDS), side_px)
        boxes = [rendered_box(item, notes.crs(), view) for item in items]
        assert all(boxes), "every note is drawn"
        for i in range(4):
            for j in range(i + 1, 4):
                assert disjoint(boxes[i], boxes[j]), (side_px, boxes)


def test_whole_layer_note_lands_in_the_visible_part(project_dir):
    project = QgsProject.instance()
    frames = [_raster(project_dir / f"fire_2022-07-0{day}.tif", seed=day) for day in (1, 2)]
    visible = QgsRectangle(500_200.0, 4_499_700.0, 500_300.0, 4_499_800.0)   # a corner of the layer
    record = write_back.record_answer(
        project, frames, _result("classify", "wildfire", frames[0].source(), LAYER_BOUNDS, label="wildfire"),
        "What event does this sequence show?", answers_gpkg=str(project_dir / "answers.gpkg"),
        view=_view(visible))
    item = _layer_named(project, map_notes.NOTES_LAYER_NAME).items()[record["note"]["item"]]
    assert visible.contains(QgsPointXY(item.point()))
    assert rendered_box(item, QgsCoordinateReferenceSystem(UTM33), _view(visible)) is not None


def test_change_answer_goes_to_both_layers_with_the_given_dates(project_dir):
    project = QgsProject.instance()
    before = _raster(project_dir / "site_before.tif", seed=1)
    after = _raster(project_dir / "site_20210501.tif", seed=2)
    gpkg = str(project_dir / "answers.gpkg")
    result = _result("change", "Many buildings have been built.", before.source(), LAYER_BOUNDS,
                     changed=True, change_score=0.8)

    record = write_back.record_answer(project, [before, after], result, "Describe the change",
                                       answers_gpkg=gpkg, dates=[QDate(2019, 5, 1), QDate(2021, 5, 1)])
    project = _reload(project_dir / "p.qgz")

    for name in ("site_before", "site_20210501"):
        (stored,) = write_back.answers_of(_layer_named(project, name))
        assert stored["id"] == record["id"] and stored["extra"]["changed"] is True
        assert stored["dates"] == ["2019-05-01", "2021-05-01"]
    (feature,) = list(_layer_named(project, "UniRS answers (change)").getFeatures())
    assert feature["caption"] == "Many buildings have been built."
    assert feature["changed"] is True or feature["changed"] == 1
    assert feature["date_before"].toString("yyyy-MM-dd") == "2019-05-01"
    assert feature["date_after"].toString("yyyy-MM-dd") == "2021-05-01"
    assert feature["layer_before"] == "site_before" and feature["score"] == pytest.approx(0.8)


def test_note_is_placed_in_the_existing_notes_layer_crs(project_dir):
    project = QgsProject.instance()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    notes = map_notes.notes_layer(project, wgs84)
    raster = _raster(project_dir / "a.tif")
    record = write_back.record_answer(project, [raster], _result("ask", "Yes", raster.source(), LAYER_BOUNDS),
                                       "Any road?", answers_gpkg=str(project_dir / "answers.gpkg"))

    point = notes.items()[record["note"]["item"]].point()
    area = QgsCoordinateTransform(QgsCoordinateReferenceSystem(UTM33), wgs84, project).transformBoundingBox(
        QgsRectangle(*LAYER_BOUNDS))
    assert area.contains(QgsPointXY(point))
    assert 14.9 < point.x() < 15.1            # UTM 33N central meridian is 15 degrees east


def test_malformed_history_property_is_a_clear_error(project_dir):
    raster = _raster(project_dir / "a.tif")
    raster.setCustomProperty(answers_store.ANSWERS_PROPERTY, json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="layer 'a'.*unirs/answers is not a list"):
        write_back.answers_of(raster)
    raster.setCustomProperty(answers_store.ANSWERS_PROPERTY, "{oops")
    with pytest.raises(ValueError, match="is not JSON"):
        write_back.answers_of(raster)


def test_gpkg_table_is_queryable_outside_the_project(project_dir):
    project = QgsProject.instance()
    raster = _raster(project_dir / "a.tif")
    gpkg = str(project_dir / "answers.gpkg")
    write_back.record_answer(project, [raster], _result("ask", "Yes", raster.source(), LAYER_BOUNDS),
                              "Any road?", answers_gpkg=gpkg)
    table = open_table(gpkg, "ask")
    assert table.isValid() and table.crs().authid() == "EPSG:32633"
    assert [f["answer"] for f in table.getFeatures()] == ["Yes"]


def test_long_entries_are_wrapped_and_shortened():
    answer = " ".join(["buildings"] * 40)                     # 399 characters
    text = map_notes.entry_text("Why " + "very " * 20 + "long?", answer)
    question, *lines = text.split("\n")
    assert len(question) == map_notes.NOTE_WIDTH and question.endswith("…")
    assert len(lines) == map_notes.NOTE_LINES and lines[-1].endswith("…")
    assert lines[0].startswith("→ ") and all(line.startswith("  ") for line in lines[1:])
    assert all(len(line) <= map_notes.NOTE_WIDTH for line in lines)
    assert map_notes.entry_text("Any road?", "Yes") == "Any road?\n→ Yes"
