"""annotations.record_answer writes notes, GeoPackage features, metadata and custom properties that
survive QgsProject.write -> clear -> read (real QGIS 3.22, real GeoTIFFs written with rasterio)."""

from __future__ import annotations

import json

import pytest
from qgis.core import (QgsAnnotationLayer, QgsAnnotationPointTextItem, QgsCoordinateReferenceSystem,
                       QgsCoordinateTransform, QgsPointXY, QgsProject, QgsRasterLayer, QgsVectorLayer)

from unirs_engine.testing.rasters import UTM33, grid, pattern, write_raster
from unirs_engine.types import GeoRef, Result
from unirs_qgis import annotations
from unirs_qgis.answers import open_table


def _raster(path, seed=0, origin=(500_000.0, 4_500_000.0)):
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


@pytest.fixture()
def project_dir(qgis_new_project, tmp_path):
    return tmp_path


def test_ask_answer_survives_project_reload(project_dir):
    project = QgsProject.instance()
    raster = _raster(project_dir / "scene_2021-06-30.tif")
    bounds = (500_080.0, 4_499_760.0, 500_240.0, 4_499_920.0)
    gpkg = str(project_dir / "answers.gpkg")
    result = _result("ask", "There are 3 buildings.", raster.source(), bounds)

    record = annotations.record_answer(project, [raster], result, "How many buildings?",
                                       answers_gpkg=gpkg)

    assert record["note"]["item"] and record["gpkg"]["fid"] >= 1
    assert record["extent"] == list(bounds) and record["extent_crs"] == "EPSG:32633"
    project = _reload(project_dir / "p.qgz")

    notes = _layer_named(project, annotations.NOTES_LAYER_NAME)
    assert isinstance(notes, QgsAnnotationLayer)
    item = notes.items()[record["note"]["item"]]  # the id kept in the raster's property still works
    assert isinstance(item, QgsAnnotationPointTextItem)
    assert item.text() == "How many buildings?\nThere are 3 buildings."
    assert (item.point().x(), item.point().y()) == (500_160.0, 4_499_840.0)   # extent centre

    raster = _layer_named(project, "scene_2021-06-30")
    (stored,) = annotations.answers_of(raster)
    assert stored == record
    (line,) = raster.metadata().history()
    assert "How many buildings? -> There are 3 buildings." in line and "unirs-tiny" in line

    table = _layer_named(project, "UniRS answers (ask)")
    assert isinstance(table, QgsVectorLayer) and table.labelsEnabled()
    (feature,) = list(table.getFeatures())
    assert feature["question"] == "How many buildings?"
    assert feature["answer"] == "There are 3 buildings."
    assert feature["layer"] == "scene_2021-06-30" and feature["model"] == "unirs-tiny"
    assert feature.geometry().boundingBox().toRectF().getCoords() == pytest.approx(
        (bounds[0], bounds[1], bounds[2], bounds[3]))


def test_second_answer_reuses_layers_and_appends(project_dir):
    project = QgsProject.instance()
    raster = _raster(project_dir / "a.tif")
    gpkg = str(project_dir / "answers.gpkg")
    bounds = (500_000.0, 4_499_680.0, 500_320.0, 4_500_000.0)
    first = annotations.record_answer(project, [raster], _result("ask", "Yes", raster.source(), bounds),
                                      "Is there a road?", answers_gpkg=gpkg)
    second = annotations.record_answer(project, [raster], _result("ask", "No", raster.source(), bounds),
                                       "Is there a lake?", answers_gpkg=gpkg)

    assert len(project.mapLayersByName(annotations.NOTES_LAYER_NAME)) == 1
    assert len(project.mapLayersByName("UniRS answers (ask)")) == 1
    assert first["note"]["layer"] == second["note"]["layer"]
    assert [r["question"] for r in annotations.answers_of(raster)] == ["Is there a road?",
                                                                      "Is there a lake?"]
    table = _layer_named(project, "UniRS answers (ask)")
    assert table.featureCount() == 2       # the project layer sees the second write
    assert len(raster.metadata().history()) == 2


def test_change_answer_goes_to_both_layers(project_dir):
    project = QgsProject.instance()
    before = _raster(project_dir / "site_20190501.tif", seed=1)
    after = _raster(project_dir / "site_20210501.tif", seed=2)
    gpkg = str(project_dir / "answers.gpkg")
    bounds = (500_000.0, 4_499_680.0, 500_320.0, 4_500_000.0)
    result = _result("change", "Many buildings have been built.", before.source(), bounds,
                     changed=True, change_score=0.8)

    record = annotations.record_answer(project, [before, after], result, "Describe the change",
                                       answers_gpkg=gpkg)
    project = _reload(project_dir / "p.qgz")

    for name in ("site_20190501", "site_20210501"):
        (stored,) = annotations.answers_of(_layer_named(project, name))
        assert stored["id"] == record["id"] and stored["extra"]["changed"] is True
    (feature,) = list(_layer_named(project, "UniRS answers (change)").getFeatures())
    assert feature["caption"] == "Many buildings have been built."
    assert feature["changed"] is True or feature["changed"] == 1
    assert feature["date_before"].toString("yyyy-MM-dd") == "2019-05-01"
    assert feature["date_after"].toString("yyyy-MM-dd") == "2021-05-01"
    assert feature["layer_before"] == "site_20190501" and feature["score"] == pytest.approx(0.8)


def test_note_is_placed_in_the_existing_notes_layer_crs(project_dir):
    project = QgsProject.instance()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    notes = annotations.notes_layer(project, wgs84)
    raster = _raster(project_dir / "a.tif")
    bounds = (500_000.0, 4_499_680.0, 500_320.0, 4_500_000.0)
    record = annotations.record_answer(project, [raster], _result("ask", "Yes", raster.source(), bounds),
                                       "Any road?", answers_gpkg=str(project_dir / "answers.gpkg"))

    point = notes.items()[record["note"]["item"]].point()
    expected = QgsCoordinateTransform(QgsCoordinateReferenceSystem(UTM33), wgs84, project).transform(
        QgsPointXY(500_160.0, 4_499_840.0))
    assert (point.x(), point.y()) == pytest.approx((expected.x(), expected.y()))
    assert 14.9 < point.x() < 15.1            # UTM 33N central meridian is 15 degrees east


def test_malformed_history_property_is_a_clear_error(project_dir):
    raster = _raster(project_dir / "a.tif")
    raster.setCustomProperty(annotations.ANSWERS_PROPERTY, json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="layer 'a'.*unirs/answers is not a list"):
        annotations.answers_of(raster)
    raster.setCustomProperty(annotations.ANSWERS_PROPERTY, "{oops")
    with pytest.raises(ValueError, match="is not JSON"):
        annotations.answers_of(raster)


def test_gpkg_table_is_queryable_outside_the_project(project_dir):
    project = QgsProject.instance()
    raster = _raster(project_dir / "a.tif")
    gpkg = str(project_dir / "answers.gpkg")
    bounds = (500_000.0, 4_499_680.0, 500_320.0, 4_500_000.0)
    annotations.record_answer(project, [raster], _result("ask", "Yes", raster.source(), bounds),
                              "Any road?", answers_gpkg=gpkg)
    table = open_table(gpkg, "ask")
    assert table.isValid() and table.crs().authid() == "EPSG:32633"
    assert [f["answer"] for f in table.getFeatures()] == ["Yes"]


def test_long_notes_are_wrapped_and_shortened():
    answer = " ".join(["buildings"] * 40)                     # 399 characters
    text = annotations.note_text("Why " + "very " * 20 + "long?", answer)
    question, *lines = text.split("\n")
    assert len(question) == annotations.NOTE_WIDTH and question.endswith("…")
    assert len(lines) == annotations.NOTE_LINES and lines[-1].endswith("…")
    assert all(len(line) <= annotations.NOTE_WIDTH for line in lines)
    assert annotations.note_text("Any road?", "Yes") == "Any road?\nYes"
