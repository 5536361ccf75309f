"""The three algorithms through processing.run, against the tiny checkpoint in a real worker
subprocess, on GDAL-written rasters; answers read back from the written GeoPackages."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (QgsApplication, QgsProcessingException, QgsProcessingFeedback, QgsProject,
                       QgsRasterLayer, QgsVectorLayer, QgsWkbTypes)
from qgis.PyQt.QtCore import QDate

from tests.qgis.recording import RecordingFeedback
from unirs_engine.testing.rasters import ORIGIN, pattern, write_pair, write_raster, write_video
from unirs_qgis.answers import ask_fields, change_fields, classify_fields
from unirs_qgis.engine_link import get_client
from unirs_qgis.settings import PluginSettings

SCENE_BOUNDS = (ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1])  # 64 px x 10 m, UTM 33N


@pytest.fixture()
def run(processing_ready, unirs_provider):
    """processing.run with the UniRS provider registered."""
    return processing_ready


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rasters")
    before, after = write_pair(folder / "pair")  # UTM 33N 10 m / EPSG:3857 9 m, same ground
    stack = [write_raster(folder / name, pattern(32, 32, seed=i))
             for i, name in enumerate(["event_20210301.tif", "event_2020-12-01.tif", "event_2021_01_15.tif"])]
    frames = np.stack([np.moveaxis(pattern(64, 64, seed=i), 0, -1) for i in range(6)])
    return {
        "scene": write_raster(folder / "scene_2021-06-30.tif", pattern(64, 64)),
        "before": before.rename(before.with_name("before_2020-01-05.tif")),
        "after": after.rename(after.with_name("after_20210630.tif")),
        "stack": stack,
        "video": write_video(folder / "event.mp4", frames),
    }


def read_features(path: str) -> tuple[QgsVectorLayer, list]:
    layer = QgsVectorLayer(path, "out", "ogr")
    assert layer.isValid(), path
    return layer, list(layer.getFeatures())


def box(feature) -> tuple[float, float, float, float]:
    return feature.geometry().boundingBox().toRectF().getCoords()


def test_ask_writes_the_footprint_and_answer(run, data, tmp_path):
    out = tmp_path / "ask.gpkg"
    extent = f"{ORIGIN[0] + 100},{ORIGIN[0] + 420},{ORIGIN[1] - 500},{ORIGIN[1] - 100} [EPSG:32633]"
    result = run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "How many buildings?",
                               "EXTENT": extent, "OUTPUT": str(out)})
    layer, (feature,) = read_features(result["OUTPUT"])
    assert layer.fields().names()[1:] == ask_fields().names()  # (fid first)
    assert layer.crs().authid() == "EPSG:32633" and layer.wkbType() in (QgsWkbTypes.Polygon,
                                                                         QgsWkbTypes.MultiPolygon)
    assert box(feature) == pytest.approx((ORIGIN[0] + 100, ORIGIN[1] - 500, ORIGIN[0] + 420, ORIGIN[1] - 100))
    assert feature["question"] == "How many buildings?" and isinstance(feature["answer"], str)
    assert feature["layer"] == "scene_2021-06-30" and feature["extent_crs"] == "EPSG:32633"
    assert feature["model"] == get_client().info()["model_id"] and feature["created"].isValid()


def test_ask_whole_layer_output_defaults_to_geopackage(run, data, tmp_path):
    result = run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "What is this?", "CLUE": False,
                               "OUTPUT": str(tmp_path / "answers")})  # no extension given
    assert result["OUTPUT"] == str(tmp_path / "answers.gpkg")
    _, (feature,) = read_features(result["OUTPUT"])
    assert box(feature) == pytest.approx(SCENE_BOUNDS)


def test_ask_short_answer_is_a_parameter_on_by_default(run, data, tmp_path, monkeypatch):
    client, sent = get_client(), []
    real_ask = client.ask
    monkeypatch.setattr(client, "ask", lambda *a, **kw: sent.append(kw["short_answer"]) or real_ask(*a, **kw))
    for extra in ({}, {"SHORT_ANSWER": False}):
        run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "Is there a road?",
                          "OUTPUT": str(tmp_path / f"ask{len(sent)}.gpkg"), **extra})
    assert sent == [True, False]


def test_ask_rejects_bad_bands_and_empty_question_before_running(run, data, tmp_path):
    out = tmp_path / "never.gpkg"
    with pytest.raises(QgsProcessingException,
                       match=r"Bands as R,G,B \(e.g. 4,3,2\): layer 'scene_2021-06-30' has bands 1..3, got \[9\]"):
        run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "q", "BANDS": "3,2,9", "OUTPUT": str(out)})
    with pytest.raises(QgsProcessingException, match="Question is empty"):
        run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "  ", "OUTPUT": str(out)})
    assert not out.exists()


def test_describe_change_pair_in_different_crs(run, data, tmp_path):
    result = run("unirs:describe_change", {"BEFORE": str(data["before"]), "AFTER": str(data["after"]),
                                           "OUTPUT": str(tmp_path / "change.gpkg")})
    layer, (feature,) = read_features(result["OUTPUT"])
    assert layer.fields().names()[1:] == change_fields().names()
    assert layer.crs().authid() == "EPSG:32633"  # before's grid: after was aligned onto it
    assert box(feature) == pytest.approx(SCENE_BOUNDS)
    assert feature["date_before"] == QDate(2020, 1, 5) and feature["date_after"] == QDate(2021, 6, 30)
    assert feature["layer_before"] == "before_2020-01-05" and feature["layer_after"] == "after_20210630"
    assert feature["changed"] in (True, False) and isinstance(feature["score"], float)
    assert isinstance(feature["caption"], str)
    assert feature["pair_mode"] == "cem" and feature["score_kind"] == "cem-cosine"   # the tiny UniRS model


def test_describe_change_swaps_layers_dated_the_wrong_way(run, data, tmp_path):
    feedback = RecordingFeedback()
    result = run("unirs:describe_change", {
        "BEFORE": str(data["before"]), "AFTER": str(data["after"]), "DATE_BEFORE": "2022-02-02",
        "OUTPUT": str(tmp_path / "swapped.gpkg")}, feedback=feedback)
    layer, (feature,) = read_features(result["OUTPUT"])
    assert feature["layer_before"] == "after_20210630" and feature["date_after"] == QDate(2022, 2, 2)
    assert layer.crs().authid() == "EPSG:3857"  # the new "before" sets the grid
    assert any("swapped them" in w for w in feedback.warnings)
    # the dates it worked with, and where they came from, are in the log
    assert ("Dates: before 'after_20210630' 2021-06-30 (from the layer name); after 'before_2020-01-05' "
            "2022-02-02 (from the Date of the before layer (default: from the layer) parameter)") in feedback.infos


def test_undated_pair_is_kept_in_order_with_a_prompt_for_dates(run, data, tmp_path):
    undated = write_raster(tmp_path / "undated.tif", pattern(64, 64, seed=4))
    feedback = RecordingFeedback()
    result = run("unirs:describe_change", {"BEFORE": str(undated), "AFTER": str(data["scene"]),
                                           "OUTPUT": str(tmp_path / "undated.gpkg")}, feedback=feedback)
    _, (feature,) = read_features(result["OUTPUT"])
    assert feature["layer_before"] == "undated" and not feature["date_before"]     # NULL
    (warning,) = feedback.warnings
    assert warning.startswith("No date found for 'undated': the order you chose is kept; give its date in "
                              "'Date of the before layer (default: from the layer)'")


def test_answer_outputs_load_outlined_and_labelled(processing_ready, unirs_provider, data, tmp_path,
                                                   qgis_new_project):
    """What a user sees after running from the toolbox: the footprint as an outline with the answer as
    a buffered label, not an opaque square; the GeoPackage keeps that style for any QGIS."""
    import processing

    out = tmp_path / "styled.gpkg"
    processing.runAndLoadResults("unirs:describe_change", {
        "BEFORE": str(data["before"]), "AFTER": str(data["after"]), "OUTPUT": str(out)})
    processing.runAndLoadResults("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "What is this?",
                                               "OUTPUT": "TEMPORARY_OUTPUT"})
    loaded = [layer for layer in QgsProject.instance().mapLayers().values() if isinstance(layer, QgsVectorLayer)]
    assert len(loaded) == 2
    for layer in [*loaded, QgsVectorLayer(str(out), "fresh", "ogr")]:
        assert layer.labelsEnabled(), layer.name()
        settings = layer.labeling().settings()
        text_format = settings.format()    # copies, kept: buffer() points into it
        assert text_format.buffer().enabled() and settings.autoWrapLength > 0
        assert settings.fieldName in ('"caption"', "concat(\"question\", '\n→ ', \"answer\")")
        symbol_layer = layer.renderer().symbol().symbolLayer(0)
        assert symbol_layer.brushStyle() == 0 and symbol_layer.strokeWidth() > 0   # outline only


def test_help_names_parameters_as_the_dialog_labels_them(unirs_provider):
    registry = QgsApplication.processingRegistry()
    for alg_id in ("unirs:ask", "unirs:describe_change", "unirs:classify_sequence"):
        alg = registry.algorithmById(alg_id)
        text = alg.shortHelpString()
        for parameter in alg.parameterDefinitions():
            assert f"<b>{parameter.description()}</b>" in text, (alg_id, parameter.name())
            if parameter.name() != "OUTPUT":
                assert parameter.name() not in text, (alg_id, parameter.name())   # no LAYERS, BANDS…
        assert alg.helpUrl()
    assert registry.algorithmById("unirs:review_changes").helpUrl() == alg.helpUrl()


def test_clue_without_a_clue_model_is_a_clear_message(run, data, tmp_path):
    assert not PluginSettings.load().clue_model_dir
    with pytest.raises(QgsProcessingException, match="Ask the base model for a clue first: no clue model is set: "
                                                     "choose a Clue model directory in Raster ▸ UniRS ▸ Settings…"):
        run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "q?", "CLUE": True,
                          "OUTPUT": str(tmp_path / "never.gpkg")})


def test_classify_dated_stack_in_date_order(run, data, tmp_path):
    feedback = RecordingFeedback()
    result = run("unirs:classify_sequence", {
        "LAYERS": [str(p) for p in data["stack"]], "CLASSES": "flood, wildfire, traffic collision",
        "OUTPUT": str(tmp_path / "stack.gpkg")}, feedback=feedback)
    layer, (feature,) = read_features(result["OUTPUT"])
    assert layer.fields().names()[1:] == classify_fields().names()
    assert json.loads(feature["frames"]) == ["event_2020-12-01", "event_2021_01_15", "event_20210301"]
    assert feedback.infos[0] == ("Frames in date order: 'event_2020-12-01': 2020-12-01 (layer name); "
                                 "'event_2021_01_15': 2021-01-15 (layer name); "
                                 "'event_20210301': 2021-03-01 (layer name)")
    assert feature["classes"] == "flood, wildfire, traffic collision"
    assert feature["label"] in ("flood", "wildfire", "traffic collision", None)
    assert box(feature) == pytest.approx((ORIGIN[0], ORIGIN[1] - 320, ORIGIN[0] + 320, ORIGIN[1]))


def test_classify_video_has_no_geometry(run, data, tmp_path):
    result = run("unirs:classify_sequence", {"VIDEO": str(data["video"]), "OUTPUT": str(tmp_path / "video.gpkg")})
    layer, (feature,) = read_features(result["OUTPUT"])
    assert layer.wkbType() == QgsWkbTypes.NoGeometry and not feature.hasGeometry()
    assert len(json.loads(feature["frames"])) >= 1 and len(feature["classes"].split(", ")) == 25


def test_classify_needs_layers_or_a_video(run, data, tmp_path):
    with pytest.raises(QgsProcessingException, match="Give either 'Dated raster layers' or 'Video file"):
        run("unirs:classify_sequence", {"LAYERS": [str(data["scene"])], "VIDEO": str(data["video"]),
                                        "OUTPUT": str(tmp_path / "x.gpkg")})


def test_in_memory_layer_goes_through_export(run, data, tmp_path):
    gdal.Translate("/vsimem/h5a_alg.tif", str(data["scene"]))
    layer = QgsRasterLayer("/vsimem/h5a_alg.tif", "in memory")
    feedback = RecordingFeedback()
    try:
        result = run("unirs:ask", {"INPUT": layer, "QUESTION": "Is there water?",
                                   "OUTPUT": str(tmp_path / "mem.gpkg")}, feedback=feedback)
    finally:
        gdal.Unlink("/vsimem/h5a_alg.tif")
    (exported,) = [i.rsplit(" exported to ", 1)[1] for i in feedback.infos if " exported to " in i]
    assert not os.path.exists(exported)  # the temporary GeoTIFF was removed after the run
    _, (feature,) = read_features(result["OUTPUT"])
    assert feature["layer"] == "in memory" and box(feature) == pytest.approx(SCENE_BOUNDS)


def test_cancel_mid_run_writes_nothing_and_next_run_works(run, data, tmp_path):
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda _: feedback.cancel())  # cancel at the first progress report
    out = tmp_path / "cancelled.gpkg"
    with pytest.raises(QgsProcessingException, match="Cancelled: no output was written"):
        run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "Slow question?", "OUTPUT": str(out)},
            feedback=feedback)
    assert not out.exists()
    result = run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "Next?",
                               "OUTPUT": str(tmp_path / "next.gpkg")})
    assert len(read_features(result["OUTPUT"])[1]) == 1


def test_worker_killed_mid_request_is_a_clear_error_then_recovers(run, data, tmp_path):
    pid = get_client().info()["pid"]
    killed = []

    def kill_worker_once(_progress: float) -> None:  # at the first progress report: mid-request
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(kill_worker_once)
    out = tmp_path / "killed.gpkg"
    with pytest.raises(QgsProcessingException, match="UniRS engine: .*worker exited"):
        run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "Still there?", "OUTPUT": str(out)},
            feedback=feedback)
    assert not out.exists()
    result = run("unirs:ask", {"INPUT": str(data["scene"]), "QUESTION": "And now?",
                               "OUTPUT": str(tmp_path / "after_kill.gpkg")})
    assert len(read_features(result["OUTPUT"])[1]) == 1
    assert killed and get_client().info()["pid"] != pid


@pytest.mark.parametrize("content, problem", [
    (None, "does not exist"),
    ("folder", "is a directory, not a raster file"),
    (b"", r"is empty \(0 bytes\)"),
    (b"not pixels", "is not a raster GDAL can read"),
])
def test_an_unloadable_raster_is_named_with_its_problem(run, tmp_path, content, problem):
    """QGIS alone says "<path> not found" for all four; the check says which it is, for each layer
    parameter (one layer, or one of a list)."""
    path = tmp_path / "input.tif"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    out = tmp_path / "never.gpkg"
    with pytest.raises(QgsProcessingException, match=f"Raster layer: {path} {problem}"):
        run("unirs:ask", {"INPUT": str(path), "QUESTION": "q?", "OUTPUT": str(out)})
    with pytest.raises(QgsProcessingException, match=f"Dated raster layers: {path} {problem}"):
        run("unirs:classify_sequence", {"LAYERS": [str(path)], "OUTPUT": str(out)})
    assert not out.exists()
