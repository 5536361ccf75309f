"""The dock driven like a user would, against a real tiny checkpoint through the real subprocess
worker, in real QGIS 3.22 (offscreen): ask, describe change, classify a stack, cancel, unreadable
layers, settings; answers survive saving and reopening the project."""

from __future__ import annotations

import os
import time

import pytest
from osgeo import gdal
from pytest_qgis.utils import wait
from qgis.PyQt.QtCore import Qt
from qgis.core import (Qgis, QgsAnnotationLayer, QgsCoordinateReferenceSystem, QgsProject,
                       QgsRasterLayer, QgsRectangle)

from unirs_engine.testing.rasters import UTM33, grid, pattern, write_raster
from unirs_qgis import annotations, engine_link
from unirs_qgis.answers import open_table
from unirs_qgis.dock.settings_dialog import SettingsDialog
from unirs_qgis.dock.widget import IDLE_ENGINE_TEXT, UniRSDockWidget
from unirs_qgis.settings import PluginSettings

ORIGIN = (500_000.0, 4_500_000.0)
SIZE = 48          # pixels of 10 m: the scene spans 480 m
TIMEOUT_S = 240    # a cold worker imports torch and loads the model on a busy 2-core machine


@pytest.fixture(scope="module", autouse=True)
def engine_settings(engine_env, tmp_path_factory):
    """Saved plugin settings: the tiny model (conftest's engine_env) in a subprocess worker on CPU,
    answers to a temporary GeoPackage. One worker serves all the tests of the module."""
    previous = PluginSettings.load()
    settings = PluginSettings(device="cpu", mode="subprocess",
                              answers_gpkg=str(tmp_path_factory.mktemp("answers") / "answers.gpkg"))
    settings.save()
    yield settings
    previous.save()


@pytest.fixture()
def dock(qgis_iface, qgis_new_project):
    for messages in qgis_iface.messageBar().messages.values():   # the stub bar is session-wide
        messages.clear()
    widget = UniRSDockWidget(qgis_iface)
    widget.show()
    yield widget
    if widget.is_busy():
        widget.cancel()
        wait_idle(widget)
    widget.close()
    widget.deleteLater()


def wait_idle(dock: UniRSDockWidget, timeout: float = TIMEOUT_S) -> None:
    """Pump the event loop until the dock's task has finished (finished() needs the loop)."""
    deadline = time.monotonic() + timeout
    while dock.is_busy():
        assert time.monotonic() < deadline, "the dock's task did not finish in time"
        wait(50)


def add_raster(path, *, seed=0, name=None) -> QgsRasterLayer:
    write_raster(path, pattern(SIZE, SIZE, seed=seed), transform=grid(ORIGIN))
    layer = QgsRasterLayer(str(path), name or path.stem)
    assert layer.isValid(), path
    QgsProject.instance().addMapLayer(layer)
    return layer


def zoom_canvas(canvas, rect: QgsRectangle) -> None:
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem(UTM33))
    canvas.resize(400, 400)
    canvas.setExtent(rect)


def warnings_of(iface) -> list[str]:
    return iface.messageBar().get_messages(Qgis.Warning)


def test_ask_writes_answer_back_and_survives_reload(dock, qgis_iface, tmp_path, engine_settings):
    layer = add_raster(tmp_path / "scene_2021-06-30.tif")
    zoom_canvas(qgis_iface.mapCanvas(), QgsRectangle(500_100, 4_499_700, 500_300, 4_499_900))
    dock.layer_combo.setLayer(layer)
    dock.question_edit.setPlainText("How many buildings are there?")
    assert dock.engine_label.text() == IDLE_ENGINE_TEXT

    dock.ask_button.click()
    assert dock.is_busy() and not dock.ask_button.isEnabled() and dock.cancel_button.isEnabled()
    wait_idle(dock)

    assert not warnings_of(qgis_iface)
    assert dock.ask_button.isEnabled() and not dock.cancel_button.isEnabled()
    (record,) = annotations.answers_of(layer)
    assert record["question"] == "How many buildings are there?" and record["task"] == "ask"
    assert record["model"] == "unirs-tiny" and record["device"] == "cpu"
    # what the model read is the visible part of the layer (to the pixel grid); the note is there
    seen = qgis_iface.mapCanvas().extent().intersect(layer.extent())
    assert seen.height() < layer.extent().height()      # not the whole layer
    assert record["extent"] == pytest.approx(
        [seen.xMinimum(), seen.yMinimum(), seen.xMaximum(), seen.yMaximum()], abs=10)
    assert record["gpkg"]["path"] == engine_settings.answers_gpkg
    assert dock.engine_label.text() == "Engine: unirs-tiny · CPU"
    assert dock.history_model.rowCount() == 1
    assert dock.history_model.record(0) == record
    assert record["answer"] in dock.status_label.text()

    project = QgsProject.instance()
    assert project.write(str(tmp_path / "dock.qgz"))
    project.clear()
    assert dock.history_model.rowCount() == 0          # the layer is gone, so is its history
    assert project.read(str(tmp_path / "dock.qgz"))

    (layer,) = project.mapLayersByName("scene_2021-06-30")
    dock.layer_combo.setLayer(layer)
    assert dock.history_model.rowCount() == 1 and dock.history_model.record(0)["id"] == record["id"]
    (notes,) = project.mapLayersByName(annotations.NOTES_LAYER_NAME)
    assert isinstance(notes, QgsAnnotationLayer)
    item = notes.items()[record["note"]["item"]]
    assert item.text().startswith("How many buildings are there?\n")
    assert (item.point().x(), item.point().y()) == pytest.approx(
        (seen.center().x(), seen.center().y()), abs=10)
    assert "How many buildings are there?" in layer.metadata().history()[0]
    (feature,) = open_table(engine_settings.answers_gpkg, "ask").getFeatures()
    assert feature["question"] == "How many buildings are there?"
    assert feature["answer"] == record["answer"]

    canvas = qgis_iface.mapCanvas()
    canvas.setExtent(QgsRectangle(0, 0, 100, 100))
    dock.history_view.doubleClicked.emit(dock.history_model.index(0, 1))   # zoom to the answer
    assert canvas.extent().contains(QgsRectangle(*record["extent"]))
    assert canvas.extent().width() < 2 * seen.width()


def test_describe_change_of_two_dated_layers(dock, qgis_iface, tmp_path):
    after = add_raster(tmp_path / "site_20230415.tif", seed=2)     # added first on purpose
    before = add_raster(tmp_path / "site_20190415.tif", seed=1)
    dock.use_canvas_extent.setChecked(False)
    dock.tabs.setCurrentIndex(1)
    assert dock.before_combo.currentLayer() is before                 # picked by date
    assert dock.after_combo.currentLayer() is after

    dock.change_button.click()
    wait_idle(dock)

    assert not warnings_of(qgis_iface)
    (record,) = annotations.answers_of(after)
    assert annotations.answers_of(before) == [record]
    assert record["task"] == "change" and record["question"] == "Describe the change"
    assert isinstance(record["extra"]["changed"], bool)
    assert record["extent"] == pytest.approx([500_000, 4_499_520, 500_480, 4_500_000])  # whole layer
    assert dock.history_label.text() == "History of site_20230415"
    assert dock.history_model.rowCount() == 1
    features = list(open_table(record["gpkg"]["path"], "change").getFeatures())
    assert features[-1]["date_before"].toString("yyyy-MM-dd") == "2019-04-15"
    assert features[-1]["layer_after"] == "site_20230415"


def test_classify_a_dated_stack(dock, qgis_iface, tmp_path):
    layers = [add_raster(tmp_path / f"fire_2022-07-0{day}.tif", seed=day) for day in (3, 1, 2)]
    dock.tabs.setCurrentIndex(2)
    assert [dock.stack_list.item(i).text() for i in range(3)] == [
        "fire_2022-07-01  (2022-07-01)", "fire_2022-07-02  (2022-07-02)",
        "fire_2022-07-03  (2022-07-03)"]
    for i in range(3):
        dock.stack_list.item(i).setCheckState(Qt.Checked)
    dock.classify_button.click()
    wait_idle(dock)

    assert not warnings_of(qgis_iface)
    (record,) = annotations.answers_of(layers[0])
    assert record["task"] == "classify"
    frames = record["extra"]["frames"]          # sent oldest first, whatever the project order
    assert [os.path.basename(f) for f in frames] == [
        "fire_2022-07-01.tif", "fire_2022-07-02.tif", "fire_2022-07-03.tif"]


def test_cancel_mid_run_records_nothing(dock, qgis_iface, tmp_path):
    layer = add_raster(tmp_path / "scene.tif")
    dock.use_canvas_extent.setChecked(False)
    dock.layer_combo.setLayer(layer)
    dock.question_edit.setPlainText("Is there a river?")
    engine_link.shutdown_client()   # the next question waits for a fresh worker: seconds to cancel in

    dock.ask_button.click()
    task = dock.task
    deadline = time.monotonic() + 60
    while not dock.status_label.text().startswith("Working: starting the UniRS worker"):
        assert time.monotonic() < deadline, "the request never reached the engine"
        wait(20)                    # now the request is in flight, the worker loading the model
    dock.cancel_button.click()
    wait_idle(dock, timeout=60)

    assert dock.status_label.text() == "Cancelled."
    assert dock.ask_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert task.record is None and task.error is None
    assert annotations.answers_of(layer) == []
    assert not QgsProject.instance().mapLayersByName(annotations.NOTES_LAYER_NAME)
    assert not warnings_of(qgis_iface)

    dock.ask_button.click()           # the engine still answers afterwards
    wait_idle(dock)
    assert len(annotations.answers_of(layer)) == 1


def test_unreadable_layer_gives_a_message_not_a_crash(dock, qgis_iface, tmp_path):
    layer = add_raster(tmp_path / "broken.tif")
    with open(tmp_path / "broken.tif", "wb") as f:       # the file goes bad after loading
        f.write(b"this is not a GeoTIFF any more")
    dock.use_canvas_extent.setChecked(False)
    dock.layer_combo.setLayer(layer)
    dock.question_edit.setPlainText("What is this?")

    dock.ask_button.click()
    wait_idle(dock)

    (message,) = warnings_of(qgis_iface)
    assert message.startswith("UniRS:") and "broken.tif" in message
    assert dock.ask_button.isEnabled()
    assert annotations.answers_of(layer) == []
    assert not QgsProject.instance().mapLayersByName(annotations.NOTES_LAYER_NAME)


def _vsimem_layer(name: str) -> QgsRasterLayer:
    """A GDAL dataset living in memory: not a file the worker process could open."""
    path = f"/vsimem/{name}.tif"
    data = pattern(SIZE, SIZE, seed=3)
    ds = gdal.GetDriverByName("GTiff").Create(path, SIZE, SIZE, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((ORIGIN[0], 10.0, 0.0, ORIGIN[1], 0.0, -10.0))
    ds.SetProjection(QgsCoordinateReferenceSystem(UTM33).toWkt())
    for band in range(3):
        ds.GetRasterBand(band + 1).WriteArray(data[band])
    ds = None
    layer = QgsRasterLayer(path, name)
    assert layer.isValid() and not os.path.exists(path)
    QgsProject.instance().addMapLayer(layer)
    return layer


def test_in_memory_layer_is_exported_for_the_engine(dock, qgis_iface):
    layer = _vsimem_layer("in_memory")
    zoom_canvas(qgis_iface.mapCanvas(), QgsRectangle(500_000, 4_499_600, 500_400, 4_500_000))
    dock.layer_combo.setLayer(layer)
    dock.question_edit.setPlainText("What is in this image?")

    dock.ask_button.click()
    task = dock.task
    wait_idle(dock)

    assert not warnings_of(qgis_iface)
    (record,) = annotations.answers_of(layer)
    exported = task.result["georef"][0]["source"]      # the worker read a temporary GeoTIFF ...
    assert exported.endswith(".tif") and "/vsimem/" not in exported
    assert not os.path.exists(exported)                 # ... removed once answered
    seen = qgis_iface.mapCanvas().extent().intersect(layer.extent())
    assert record["extent"] == pytest.approx(
        [seen.xMinimum(), seen.yMinimum(), seen.xMaximum(), seen.yMaximum()], abs=10)
    assert record["extent_crs"] == "EPSG:32633"


def test_extent_outside_a_non_file_layer_is_a_message(dock, qgis_iface):
    layer = _vsimem_layer("elsewhere")
    zoom_canvas(qgis_iface.mapCanvas(), QgsRectangle(600_000, 4_000_000, 600_500, 4_000_500))
    dock.layer_combo.setLayer(layer)
    dock.question_edit.setPlainText("Anything here?")

    dock.ask_button.click()
    wait_idle(dock)

    (message,) = warnings_of(qgis_iface)
    assert "'elsewhere'" in message and "does not overlap" in message
    assert annotations.answers_of(layer) == []


def test_missing_inputs_are_explained(dock, qgis_iface):
    dock.ask_button.click()
    dock.tabs.setCurrentIndex(1)
    dock.change_button.click()
    dock.classify_button.click()
    assert warnings_of(qgis_iface) == [
        "UniRS:Pick a raster layer to ask about.",
        "UniRS:Pick two different raster layers (before and after).",
        "UniRS:Tick at least two layers of the sequence."]
    assert not dock.is_busy()


def test_settings_dialog_saves_settings(dock, engine_settings, tmp_path):
    dialog = SettingsDialog(PluginSettings.load(), dock)
    dialog.device.setCurrentText("cuda")
    dialog.answers_gpkg.setFilePath(str(tmp_path / "elsewhere.gpkg"))
    dialog.accept()
    try:
        saved = PluginSettings.load()
        assert saved.device == "cuda" and saved.answers_gpkg == str(tmp_path / "elsewhere.gpkg")
        assert saved.model_dir == engine_settings.model_dir and saved.mode == "subprocess"
    finally:
        engine_settings.save()

    dock.clue_check.setChecked(True)
    try:
        assert PluginSettings.load().clue is True
    finally:
        dock.clue_check.setChecked(False)
