"""One answers store per project: in the profile's data folder before the first save, moved beside
the project when it is saved, copied on Save As; one layer per kind in the "UniRS" group throughout
(real QGIS 3.22, real GeoPackages)."""

from __future__ import annotations

import os

import pytest
from qgis.core import QgsProject

from tests.qgis.test_write_back import LAYER_BOUNDS, _raster, _result, ogr_messages  # noqa: F401 (fixture)
from unirs_qgis import write_back
from unirs_qgis.answers import open_table
from unirs_qgis.answers_store import GROUP_NAME, answer_layers, store_of
from unirs_qgis.settings import PluginSettings, unsaved_folder


@pytest.fixture()
def default_store(qgis_new_project):
    """A new project (file name and entries too, as Project ▸ New does) and saved settings without
    an answers file: the per-project store decides."""
    QgsProject.instance().clear()
    previous = PluginSettings.load()
    PluginSettings().save()
    yield
    previous.save()


def _ask(project, raster, question):
    return write_back.record_answer(project, [raster], _result("ask", "Yes.", raster.source(), LAYER_BOUNDS),
                                     question)


def _layer_names(project) -> list[str]:
    return sorted(layer.name() for layer in project.mapLayers().values())


def test_answers_before_and_after_saving_end_in_one_store(default_store, tmp_path, ogr_messages):
    project = QgsProject.instance()
    raster = _raster(tmp_path / "scene_2021-06-30.tif")
    unsaved = PluginSettings.load().answers_path(project)
    assert os.path.dirname(unsaved) == os.path.normpath(unsaved_folder())

    first = _ask(project, raster, "Is there a road?")
    write_back.record_answer(project, [raster], _result("change", "New houses.", raster.source(), LAYER_BOUNDS,
                                                         changed=True), "Describe the change")
    assert first["gpkg"]["path"] == unsaved and os.path.isfile(unsaved)

    assert project.write(str(tmp_path / "survey.qgz"))
    store = str(tmp_path / "survey_unirs_answers.gpkg")
    assert os.path.isfile(store) and not os.path.exists(unsaved)        # moved, not duplicated
    second = _ask(project, raster, "Is there a lake?")

    layers = answer_layers(project)
    assert set(layers) == {"ask", "change"}
    assert {store_of(layer) for layer in layers.values()} == {store}
    assert _layer_names(project) == ["UniRS answers (ask)", "UniRS answers (change)", "UniRS notes",
                                     "scene_2021-06-30"]
    assert [f["question"] for f in layers["ask"].getFeatures()] == ["Is there a road?", "Is there a lake?"]
    assert {r["gpkg"]["path"] for r in write_back.answers_of(raster)} == {store} == {second["gpkg"]["path"]}
    group = project.layerTreeRoot().findGroup(GROUP_NAME)
    assert len(group.findLayers()) == 3

    assert project.write()          # saved again in place: nothing moves
    project.clear()
    assert project.read(str(tmp_path / "survey.qgz"))
    (ask,) = project.mapLayersByName("UniRS answers (ask)")
    assert ask.isValid() and store_of(ask) == store and ask.featureCount() == 2
    assert not ogr_messages       # e.g. "Cannot open …gpkg" or "Cannot find layer change"


def test_save_as_copies_the_store_and_keeps_the_original(default_store, tmp_path):
    project = QgsProject.instance()
    raster = _raster(tmp_path / "scene.tif")
    assert project.write(str(tmp_path / "a.qgz"))
    _ask(project, raster, "Is there a road?")
    original = str(tmp_path / "a_unirs_answers.gpkg")

    (tmp_path / "copy").mkdir()
    assert project.write(str(tmp_path / "copy" / "b.qgz"))
    copy = str(tmp_path / "copy" / "b_unirs_answers.gpkg")
    assert os.path.isfile(original) and os.path.isfile(copy)
    (ask,) = answer_layers(project).values()
    assert store_of(ask) == copy and ask.featureCount() == 1
    _ask(project, raster, "Is there a lake?")
    assert ask.featureCount() == 2
    assert open_table(original, "ask").featureCount() == 1    # project a keeps its own answers


def test_saving_where_a_store_exists_appends_to_it(default_store, tmp_path):
    project = QgsProject.instance()
    raster = _raster(tmp_path / "scene.tif")
    assert project.write(str(tmp_path / "a.qgz"))
    _ask(project, raster, "First project?")
    project.clear()

    raster = _raster(tmp_path / "scene.tif")
    _ask(project, raster, "Second project, before saving?")
    assert project.write(str(tmp_path / "a.qgz"))       # over the first project: its store stays
    (ask,) = answer_layers(project).values()
    assert [f["question"] for f in ask.getFeatures()] == ["First project?", "Second project, before saving?"]


def test_a_file_the_user_chose_stays_where_it_is(default_store, tmp_path):
    chosen = str(tmp_path / "all my answers.gpkg")
    PluginSettings(answers_gpkg=chosen).save()
    project = QgsProject.instance()
    raster = _raster(tmp_path / "scene.tif")
    _ask(project, raster, "Is there a road?")
    assert project.write(str(tmp_path / "a.qgz"))
    (ask,) = answer_layers(project).values()
    assert store_of(ask) == chosen and not (tmp_path / "a_unirs_answers.gpkg").exists()

    PluginSettings().save()          # the setting cleared: that file is still the user's, not moved
    assert project.write(str(tmp_path / "b.qgz"))
    assert store_of(ask) == chosen and not (tmp_path / "b_unirs_answers.gpkg").exists()
