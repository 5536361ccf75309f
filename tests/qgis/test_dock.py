"""The dock driven like a user would, against a real tiny checkpoint through the real subprocess
worker, in real QGIS 3.22 (offscreen): ask (button and Enter), describe change (dated, reversed and
undated pairs), classify a stack over the canvas extent, cancel, clue, progress and log lines,
unreadable layers, settings; answers survive saving and reopening the project; notes never overlap."""

from __future__ import annotations

import os
import time

import pytest
from osgeo import gdal
from pytest_qgis.utils import wait
from qgis.core import (Qgis, QgsAnnotationLayer, QgsApplication, QgsCoordinateReferenceSystem, QgsProject,
                       QgsRasterLayer, QgsRectangle)
from qgis.PyQt.QtCore import QDate, Qt
from qgis.PyQt.QtTest import QTest

from tests.qgis.test_write_back import disjoint, rendered_box
from unirs_engine import prompts
from unirs_engine.testing.rasters import UTM33, grid, pattern, write_raster
from unirs_qgis import engine_link, write_back
from unirs_qgis import notes as map_notes
from unirs_qgis.answers import open_table
from unirs_qgis.dock.settings_dialog import SettingsDialog
from unirs_qgis.dock.widget import IDLE_ENGINE_TEXT, NO_CLUE_TIP, UniRSDockWidget
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


@pytest.fixture(scope="module")
def clue_checkpoint(tmp_path_factory):
    """A tiny plain VILA-1.5 checkpoint: the base model that writes clues."""
    from unirs_engine.testing.tiny import build_tiny_vila_checkpoint

    return build_tiny_vila_checkpoint(tmp_path_factory.mktemp("clue") / "vila-tiny")


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


def wait_idle(dock: UniRSDockWidget, timeout: float = TIMEOUT_S) -> list[str]:
    """Pump the event loop until the dock's task has finished (finished() needs the loop); returns
    the status texts shown meanwhile."""
    deadline = time.monotonic() + timeout
    shown: list[str] = []
    while dock.is_busy():
        assert time.monotonic() < deadline, "the dock's task did not finish in time"
        if not shown or shown[-1] != dock.status_label.text():
            shown.append(dock.status_label.text())
        wait(50)
    return shown


@pytest.fixture()
def unirs_log():
    """(level, message) of what the plugin logs to its "UniRS" tab while the test runs."""
    seen = []

    def keep(message, tag, level):
        if tag == "UniRS":
            seen.append((level, message))

    log = QgsApplication.messageLog()
    log.messageReceived.connect(keep)
    yield seen
    log.messageReceived.disconnect(keep)


def add_raster(path, *, seed=0, name=None) -> QgsRasterLayer:
    write_raster(path, pattern(SIZE, SIZE, seed=seed), transform=grid(ORIGIN))
    layer = QgsRasterLayer(str(path), name or path.stem)
    assert layer.isValid(), path
    QgsProject.instance().addMapLayer(layer)
    return layer


def zoom_canvas(canvas, rect: QgsRectangle) -> None:
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem(UTM33))
    canvas.window().show()      # hidden, the canvas keeps a 98 x 28 px map: nothing like a user's
    canvas.resize(400, 400)
    wait(10)
    assert canvas.mapSettings().outputSize().width() > 300
    canvas.setExtent(rect)


def classify_all(dock: UniRSDockWidget) -> None:
    """Tick every frame of the Sequence tab, classify, wait for the answer."""
    for i in range(dock.stack_list.count()):
        dock.stack_list.item(i).setCheckState(Qt.Checked)
    dock.classify_button.click()
    wait_idle(dock)


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
    (record,) = write_back.answers_of(layer)
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
    (notes,) = project.mapLayersByName(map_notes.NOTES_LAYER_NAME)
    assert isinstance(notes, QgsAnnotationLayer)
    item = notes.items()[record["note"]["item"]]
    assert item.text().startswith("How many buildings are there?\n→ ")
    # the note hangs from the top-left corner of what the model read, inside it
    assert seen.xMinimum() < item.point().x() < seen.center().x()
    assert seen.center().y() < item.point().y() < seen.yMaximum()
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
    (record,) = write_back.answers_of(after)
    assert write_back.answers_of(before) == [record]
    assert record["task"] == "change" and record["question"] == "Describe the change"
    assert isinstance(record["extra"]["changed"], bool) and record["extra"]["pair_mode"] == "cem"
    assert "\nCompared through the Change Extraction module; change score " in dock.status_label.text()
    assert record["extent"] == pytest.approx([500_000, 4_499_520, 500_480, 4_500_000])  # whole layer
    assert dock.history_label.text() == "History of site_20230415"
    assert dock.history_model.rowCount() == 1
    features = list(open_table(record["gpkg"]["path"], "change").getFeatures())
    assert features[-1]["date_before"].toString("yyyy-MM-dd") == "2019-04-15"
    assert features[-1]["layer_after"] == "site_20230415"


def test_classify_a_dated_stack(dock, qgis_iface, tmp_path):
    layers = [add_raster(tmp_path / f"fire_2022-07-0{day}.tif", seed=day) for day in (3, 1, 2)]
    dock.use_canvas_extent.setChecked(False)    # whole layers: the frames are the files themselves
    dock.tabs.setCurrentIndex(2)
    assert [dock.stack_list.item(i).text() for i in range(3)] == [
        "fire_2022-07-01  (2022-07-01)", "fire_2022-07-02  (2022-07-02)",
        "fire_2022-07-03  (2022-07-03)"]
    classify_all(dock)

    assert not warnings_of(qgis_iface)
    (record,) = write_back.answers_of(layers[0])
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
    # The client announced the worker start (the request is in flight) and the dock, which hears it
    # through a queued signal from the task's thread, shows it.
    while task._progress_calls == 0 or not dock.status_label.text().startswith(
            "Starting the engine (loading the model)… "):
        assert time.monotonic() < deadline, \
            f"the request never reached the engine; the dock says {dock.status_label.text()!r}"
        wait(20)
    dock.cancel_button.click()
    wait_idle(dock, timeout=60)

    assert dock.status_label.text() == "Cancelled."
    assert dock.ask_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert task.record is None and task.error is None
    assert write_back.answers_of(layer) == []
    assert not QgsProject.instance().mapLayersByName(map_notes.NOTES_LAYER_NAME)
    assert not warnings_of(qgis_iface)

    dock.ask_button.click()           # the engine still answers afterwards
    wait_idle(dock)
    assert len(write_back.answers_of(layer)) == 1


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
    assert write_back.answers_of(layer) == []
    assert not QgsProject.instance().mapLayersByName(map_notes.NOTES_LAYER_NAME)


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
    (record,) = write_back.answers_of(layer)
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
    assert write_back.answers_of(layer) == []


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


def test_settings_dialog_saves_settings(dock, engine_settings, tmp_path, clue_checkpoint):
    dialog = SettingsDialog(PluginSettings.load(), dock)
    dialog.device.setCurrentText("cuda")
    dialog.answers_gpkg.setFilePath(str(tmp_path / "elsewhere.gpkg"))
    dialog.clue_model_dir.setFilePath(str(tmp_path))         # not a checkpoint: refused, and why
    assert dialog.clue_info.text() == f"{tmp_path}/config.json: missing (expected the VILA-1.5 top-level config)"
    dialog.accept()
    assert PluginSettings.load().device != "cuda"
    dialog.clue_model_dir.setFilePath(str(clue_checkpoint))
    assert dialog.clue_info.text().startswith("vila-tiny (VILA-1.5, ")
    dialog.accept()
    try:
        saved = PluginSettings.load()
        assert saved.device == "cuda" and saved.answers_gpkg == str(tmp_path / "elsewhere.gpkg")
        assert saved.model_dir == engine_settings.model_dir and saved.mode == "subprocess"
        assert saved.clue_model_dir == str(clue_checkpoint)
    finally:
        engine_settings.save()


# --- notes on the map ------------------------------------------------------------------------------
def test_answers_about_one_area_share_a_note_that_no_other_note_covers(dock, qgis_iface, tmp_path):
    """Two questions about the visible area and a change about the whole pair, as a user asks them:
    the two answers are listed in one note, the change has its own, and the drawn notes don't overlap."""
    add_raster(tmp_path / "site_2019-04-15.tif", seed=1)
    after = add_raster(tmp_path / "site_2023-04-15.tif", seed=2)
    canvas = qgis_iface.mapCanvas()
    zoom_canvas(canvas, QgsRectangle(500_000, 4_499_520, 500_480, 4_500_000))    # the whole scene
    dock.tabs.setCurrentIndex(1)
    dock.change_button.click()
    wait_idle(dock)
    zoom_canvas(canvas, QgsRectangle(500_000, 4_499_520, 500_480, 4_499_760))    # its lower half
    dock.tabs.setCurrentIndex(0)
    dock.layer_combo.setLayer(after)
    for question in ("How many buildings are there?", "Is there a road?"):
        dock.question_edit.setPlainText(question)
        dock.ask_button.click()
        wait_idle(dock)

    assert not warnings_of(qgis_iface)
    change, first, second = write_back.answers_of(after)
    assert first["note"] == second["note"] != change["note"]
    notes = QgsProject.instance().mapLayersByName(map_notes.NOTES_LAYER_NAME)[0]
    assert len(notes.items()) == 2
    listed = notes.items()[first["note"]["item"]].text()
    assert listed.index("How many buildings are there?\n→ ") < listed.index("\nIs there a road?\n→ ")
    zoom_canvas(canvas, QgsRectangle(500_000, 4_499_520, 500_480, 4_500_000))
    boxes = [rendered_box(item, notes.crs(), canvas.mapSettings()) for item in notes.items().values()]
    assert all(boxes) and disjoint(*boxes)
    assert len(QgsProject.instance().mapLayersByName("UniRS answers (ask)")) == 1


# --- dates -----------------------------------------------------------------------------------------
def test_reversed_pair_is_swapped_with_a_warning(dock, qgis_iface, tmp_path):
    old = add_raster(tmp_path / "site_20190415.tif", seed=1)
    new = add_raster(tmp_path / "site_20230415.tif", seed=2)
    dock.use_canvas_extent.setChecked(False)
    dock.tabs.setCurrentIndex(1)
    dock.before_combo.setLayer(new)          # the wrong way round
    dock.after_combo.setLayer(old)
    assert dock.before_date.date() == QDate(2023, 4, 15)     # the fields show the layers' dates

    dock.change_button.click()
    assert dock.before_combo.currentLayer() is old and dock.after_combo.currentLayer() is new
    (warning,) = warnings_of(qgis_iface)
    assert warning == ("UniRS:'site_20190415' (2019-04-15) is older than 'site_20230415' (2023-04-15): "
                       "swapped them, before is now 'site_20190415'")
    assert warning[len("UniRS:"):] in dock.status_label.text()          # shown while it runs
    wait_idle(dock)
    assert warning[len("UniRS:"):] in dock.status_label.text()          # and under the answer
    (record,) = write_back.answers_of(new)
    assert record["layers"] == [old.id(), new.id()] and record["dates"] == ["2019-04-15", "2023-04-15"]
    feature = list(open_table(record["gpkg"]["path"], "change").getFeatures())[-1]
    assert (feature["date_before"], feature["date_after"]) == (QDate(2019, 4, 15), QDate(2023, 4, 15))
    assert feature["layer_before"] == "site_20190415"


def test_undated_layers_prompt_for_their_dates(dock, qgis_iface, tmp_path):
    first = add_raster(tmp_path / "survey_a.tif", seed=1)
    second = add_raster(tmp_path / "survey_b.tif", seed=2)
    dock.use_canvas_extent.setChecked(False)
    dock.tabs.setCurrentIndex(1)
    dock.before_combo.setLayer(second)
    dock.after_combo.setLayer(first)
    assert dock.before_date.isNull() and dock.after_date.isNull()

    dock.order_button.click()                # nothing to order by: say so, and where to type dates
    (message,) = warnings_of(qgis_iface)
    assert message.startswith("UniRS:No date found for 'survey_b': the order you chose is kept; give its "
                              "date in 'Before date' or put one in its name (e.g. survey_b_2021-06-30)")
    assert "No date found for 'survey_a'" in message
    assert dock.before_combo.currentLayer() is second

    dock.before_date.setDate(QDate(2022, 5, 1))   # typed dates count: here they say the pair is reversed
    dock.after_date.setDate(QDate(2020, 5, 1))
    dock.change_button.click()
    wait_idle(dock)
    (record,) = write_back.answers_of(first)
    assert record["layers"] == [first.id(), second.id()] and record["dates"] == ["2020-05-01", "2022-05-01"]


# --- sequence ------------------------------------------------------------------------------------
def test_sequence_uses_the_canvas_extent_and_keeps_its_history(dock, qgis_iface, tmp_path):
    layers = [add_raster(tmp_path / f"flood_2022-03-0{day}.tif", seed=day) for day in (1, 2)]
    visible = QgsRectangle(500_100, 4_499_700, 500_300, 4_499_900)
    zoom_canvas(qgis_iface.mapCanvas(), visible)
    dock.tabs.setCurrentIndex(2)
    classify_all(dock)

    assert not warnings_of(qgis_iface)
    (record,) = write_back.answers_of(layers[0])
    seen = qgis_iface.mapCanvas().extent().intersect(layers[0].extent())
    assert record["extent"] == pytest.approx(
        [seen.xMinimum(), seen.yMinimum(), seen.xMaximum(), seen.yMaximum()], abs=10)   # not the whole layer
    assert dock.history_label.text() == "History of flood_2022-03-01"      # the first ticked frame
    assert dock.history_model.rowCount() == 1
    dock.stack_list.setCurrentRow(1)
    add_raster(tmp_path / "other.tif")          # the list is rebuilt: selection and history stay
    assert dock.history_label.text() == "History of flood_2022-03-02" and dock.history_model.rowCount() == 1


# --- keyboard, progress, log ------------------------------------------------------------------------
def test_enter_asks_and_shift_enter_starts_a_new_line(dock, qgis_iface, tmp_path):
    layer = add_raster(tmp_path / "scene.tif")
    dock.use_canvas_extent.setChecked(False)
    dock.layer_combo.setLayer(layer)
    QTest.keyClicks(dock.question_edit, "Is there a road")
    QTest.keyClick(dock.question_edit, Qt.Key_Return, Qt.ShiftModifier)
    QTest.keyClicks(dock.question_edit, "near the river?")
    assert dock.question_edit.toPlainText() == "Is there a road\nnear the river?" and not dock.is_busy()

    QTest.keyClick(dock.question_edit, Qt.Key_Return)
    assert dock.is_busy()
    wait_idle(dock)
    (record,) = write_back.answers_of(layer)
    assert record["question"] == "Is there a road\nnear the river?"


def test_progress_counts_the_start_then_shows_the_usual_time(dock, qgis_iface, tmp_path, unirs_log):
    layer = add_raster(tmp_path / "scene.tif")
    dock.use_canvas_extent.setChecked(False)
    dock.layer_combo.setLayer(layer)
    dock.question_edit.setPlainText("Is there water?")
    engine_link.shutdown_client()            # this question starts the engine

    dock.ask_button.click()
    assert dock.progress.maximum() == 0      # a busy bar, not a 0 % that means nothing
    shown = wait_idle(dock)
    assert any(text.startswith("Starting the engine (loading the model)… ") and text.endswith(" s")
               for text in shown), shown
    assert dock.typical_seconds() is not None

    dock.ask_button.click()
    shown = wait_idle(dock)
    assert any(text.startswith("Working: ") and "(an answer usually takes " in text for text in shown), shown

    infos = [message for level, message in unirs_log if level == Qgis.Info]
    (started,) = [m for m in infos if m.startswith("engine started: ")]
    assert started.startswith("engine started: model unirs-tiny on cpu (subprocess, python ")
    written = [m for m in infos if m.startswith("answer written: ")]
    assert len(written) == 2 and "table 'ask' of " in written[0] and "history of 'scene'" in written[0]
    assert not [m for level, m in unirs_log if level != Qgis.Info]


# --- clue ----------------------------------------------------------------------------------------
def test_clue_box_needs_a_clue_model_then_asks_for_a_clue(dock, qgis_iface, tmp_path, engine_settings,
                                                          clue_checkpoint):
    assert not dock.clue_check.isEnabled() and dock.clue_check.toolTip() == NO_CLUE_TIP
    layer = add_raster(tmp_path / "scene.tif")
    dock.use_canvas_extent.setChecked(False)
    dock.layer_combo.setLayer(layer)
    settings = PluginSettings.load()
    settings.clue_model_dir = str(clue_checkpoint)
    settings.save()
    try:
        dock.refresh_clue()                  # what closing the settings dialog does
        assert dock.clue_check.isEnabled()
        dock.clue_check.setChecked(True)
        dock.question_edit.setPlainText("What is in the image?")
        dock.ask_button.click()
        wait_idle(dock)
        assert not warnings_of(qgis_iface)
        (record,) = write_back.answers_of(layer)
        assert isinstance(record["clue"], str) and record["clue"]       # the base model's clue
        assert engine_link.get_client().info()["clue_model_id"]
    finally:
        engine_settings.save()
        engine_link.shutdown_client()        # the next test gets a worker without the clue model
    dock.refresh_clue()
    assert not dock.clue_check.isEnabled() and not dock.clue_check.isChecked()


def test_short_answer_is_on_and_unticking_it_sends_the_question_as_typed(dock, qgis_iface, tmp_path, monkeypatch):
    layer = add_raster(tmp_path / "scene.tif")
    dock.use_canvas_extent.setChecked(False)
    dock.layer_combo.setLayer(layer)
    client = engine_link.get_client()
    results = []
    real_ask = client.ask

    def recording_ask(*args, **kwargs):   # the real request, its result kept
        results.append(real_ask(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(client, "ask", recording_ask)
    assert dock.short_answer_check.isChecked()
    for short in (True, False):
        dock.short_answer_check.setChecked(short)
        dock.question_edit.setPlainText("Is there a road?")
        dock.ask_button.click()
        wait_idle(dock)
    assert [prompts.SHORT_ANSWER_SUFFIX in r["prompt"] for r in results] == [True, False]
    assert [r["question"] for r in write_back.answers_of(layer)] == ["Is there a road?"] * 2  # as typed
