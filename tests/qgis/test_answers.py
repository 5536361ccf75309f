"""answers.py: the GeoPackage schema, footprints and appends, checked by reopening the file."""

from __future__ import annotations

import sqlite3

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsVectorLayer, QgsWkbTypes
from qgis.PyQt.QtCore import QDate

from unirs_engine.types import GeoRef, Result
from unirs_qgis.answers import (ask_fields, change_fields, classify_fields, _create_table, append_answer,
                                change_details, feature_from_result, footprint, footprint_crs, open_table)

UTM33_BOUNDS = (500000.0, 4499360.0, 500640.0, 4500000.0)


def _result(task="ask", crs="EPSG:32633", bounds=UTM33_BOUNDS, extra=None) -> dict:
    wkt = QgsCoordinateReferenceSystem(crs).toWkt() if crs else None
    georef = GeoRef(source="/data/a.tif", crs=wkt, bounds=bounds, transform=None, width=64, height=64)
    return Result(task=task, answer="Two buildings.", prompt="p", clue=None, model_id="unirs-tiny",
                  device="cpu", georef=[georef], extra=extra or {}).to_dict()


def test_field_names_match_the_contract():
    assert ask_fields().names() == ["question", "answer", "clue", "model", "layer", "extent_crs", "created"]
    assert change_fields().names() == ["caption", "changed", "date_before", "date_after", "layer_before",
                                       "layer_after", "model", "created", "score", "score_kind", "pair_mode"]
    assert classify_fields().names() == ["label", "answer", "frames", "classes", "model", "created"]


def test_footprint_is_the_first_inputs_bounds_in_its_crs():
    result = _result()
    assert footprint(result).boundingBox().toRectF().getCoords() == pytest.approx(
        (500000.0, 4499360.0, 500640.0, 4500000.0))
    assert footprint_crs(result).authid() == "EPSG:32633"
    assert footprint(_result(crs=None)).isEmpty()  # not georeferenced: no geometry


def test_feature_from_result_fills_fields_and_transforms():
    result = _result("change", extra={"changed": True, "change_score": 0.25, "change_score_kind": "head",
                                      "pair_mode": "cem"})
    feature = feature_from_result(result, change_fields(),
                                  dest_crs=QgsCoordinateReferenceSystem("EPSG:4326"),
                                  date_before=QDate(2020, 1, 1), layer_before="a", layer_after="b")
    assert feature["caption"] == "Two buildings." and feature["changed"] is True
    assert feature["score"] == 0.25 and feature["date_before"] == QDate(2020, 1, 1)
    assert feature["score_kind"] == "head" and feature["pair_mode"] == "cem"
    assert feature["model"] == "unirs-tiny" and feature["created"].isValid()
    box = feature.geometry().boundingBox()      # UTM 33N: x = 500 km is the 15°E meridian
    assert box.xMinimum() == pytest.approx(15.0) and 15.007 < box.xMaximum() < 15.008 and 40.6 < box.yMinimum() < 40.66


def test_append_answer_creates_file_then_appends_in_the_tables_crs(tmp_path):
    gpkg = str(tmp_path / "answers.gpkg")
    fid1 = append_answer(gpkg, "ask", _result(), question="How many?", layer="scene")
    other = _result(crs="EPSG:3857", bounds=(1669792.0, 4961000.0, 1670500.0, 4961700.0))
    fid2 = append_answer(gpkg, "ask", other, question="Again?", layer="scene")
    fid3 = append_answer(gpkg, "classify", _result("classify", crs=None, bounds=None,
                                                   extra={"label": "flood", "classes": ["flood", "fire"],
                                                          "frames": ["v.mp4#0", "v.mp4#4"]}))
    assert fid2 == fid1 + 1 and fid3 >= 1

    ask = QgsVectorLayer(f"{gpkg}|layername=ask", "ask", "ogr")
    assert ask.isValid() and ask.crs().authid() == "EPSG:32633"
    assert ask.wkbType() in (QgsWkbTypes.Polygon, QgsWkbTypes.MultiPolygon)
    feats = {f.id(): f for f in ask.getFeatures()}
    assert feats[fid1]["question"] == "How many?" and feats[fid1]["layer"] == "scene"
    assert feats[fid1].geometry().boundingBox().toRectF().getCoords() == pytest.approx(UTM33_BOUNDS)
    # the EPSG:3857 footprint was transformed into the table's UTM 33N: lands near x = 500 km
    assert 499_000 < feats[fid2].geometry().boundingBox().xMinimum() < 501_000

    classify = open_table(gpkg, "classify")
    (row,) = list(classify.getFeatures())
    assert row["label"] == "flood" and row["classes"] == "flood, fire"
    assert row["frames"] == '["v.mp4#0", "v.mp4#4"]' and not row.hasGeometry()

    with sqlite3.connect(gpkg) as db:  # a plain GeoPackage readable without QGIS, styles included
        tables = {r[0] for r in db.execute("select table_name from gpkg_contents")}
        styled = {r[0] for r in db.execute("select f_table_name from layer_styles where useAsDefault")}
    assert tables == {"ask", "classify", "layer_styles"} and styled == {"ask", "classify"}


def test_a_change_table_of_an_earlier_version_gets_the_new_fields(tmp_path):
    gpkg = str(tmp_path / "answers.gpkg")
    earlier = change_fields()
    for name in ("score_kind", "pair_mode"):     # what the change table had before pairs had modes
        earlier.remove(earlier.indexOf(name))
    _create_table(gpkg, "change", earlier, QgsCoordinateReferenceSystem("EPSG:32633"))
    result = _result("change", extra={"changed": False, "change_score": 0.1, "change_score_kind": "feature-cosine",
                                      "pair_mode": "two-images"})
    fid = append_answer(gpkg, "change", result)
    feature = open_table(gpkg, "change").getFeature(fid)
    assert feature["pair_mode"] == "two-images" and feature["score_kind"] == "feature-cosine"


def test_append_answer_unwritable_path_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot create table 'ask'"):
        append_answer(str(tmp_path / "missing_dir" / "a.gpkg"), "ask", _result())


def test_change_details_say_how_the_pair_was_compared():
    two = _result("change", extra={"pair_mode": "two-images", "change_score": 0.1234,
                                   "change_score_kind": "feature-cosine"})
    assert change_details(two) == ("Compared as two images in one prompt (the model has no Change Extraction module); "
                                   "change score 0.123 (feature-cosine)")
    assert change_details(_result("change", extra={"pair_mode": "cem"})) == "Compared through the Change Extraction module"
