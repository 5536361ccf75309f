"""Plugin plumbing in real QGIS: provider and algorithms, plugin lifecycle, settings, engine link."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject

from unirs_qgis.engine_link import describe_engine, format_engine, get_client, shutdown_client
from unirs_qgis.plugin import UniRSPlugin
from unirs_qgis.settings import PluginSettings

REPO = Path(__file__).resolve().parents[2]
ALGORITHMS = {
    "unirs:ask": ("Ask about a raster layer",
                  ["INPUT", "QUESTION", "EXTENT", "BANDS", "SHORT_ANSWER", "CLUE", "OUTPUT"]),
    "unirs:describe_change": ("Describe change between two dated layers",
                              ["BEFORE", "AFTER", "EXTENT", "DATE_BEFORE", "DATE_AFTER", "INSTRUCTION",
                               "OUTPUT"]),
    "unirs:classify_sequence": ("Classify a dated stack or a video", ["LAYERS", "VIDEO", "CLASSES", "OUTPUT"]),
    "unirs:review_changes": ("Review changes between dated mosaics",
                             ["BEFORE", "AFTER", "DATE_BEFORE", "DATE_AFTER", "TILE_SIZE", "TILE_UNITS", "OVERLAP",
                              "CRS", "RESOLUTION", "THRESHOLD", "CAPTION_ALL", "SCORE", "MAX_TILES", "OUTPUT"]),
    "unirs:review_archive": ("Review an archive of dated mosaic pairs",
                             ["MANIFEST", "OUTPUT_FOLDER", "TILE_SIZE", "TILE_UNITS", "THRESHOLD", "CAPTION_ALL",
                              "MAX_TILES", "RAY", "ACTORS"]),
    "unirs:setup_engine": ("Set up the UniRS engine", ["CHECK_ONLY", "FORCE", "TORCH_INDEX_URL"]),
}


@pytest.fixture()
def default_settings():
    """Leave the saved settings at their defaults after the test."""
    yield
    PluginSettings().save()


def test_provider_lists_the_algorithms(unirs_provider):
    registry = QgsApplication.processingRegistry()
    assert registry.providerById("unirs") is unirs_provider
    assert unirs_provider.defaultVectorFileExtension(True) == "gpkg"
    assert not unirs_provider.icon().isNull()
    assert {a.id() for a in unirs_provider.algorithms()} == set(ALGORITHMS)
    for alg_id, (title, params) in ALGORITHMS.items():
        alg = registry.algorithmById(alg_id)
        assert alg.displayName() == title
        assert alg.group() == ("Engine" if alg_id == "unirs:setup_engine" else "Vision-language")
        assert [p.name() for p in alg.parameterDefinitions()] == params
        assert alg.shortHelpString() and not alg.icon().isNull()
        assert type(alg.createInstance()) is type(alg)


def test_classify_default_classes_are_the_25_era_classes(unirs_provider):
    from unirs_engine.prompts import ERA_CLASSES

    alg = QgsApplication.processingRegistry().algorithmById("unirs:classify_sequence")
    default = alg.parameterDefinition("CLASSES").defaultValue()
    assert [c.strip() for c in default.split(",")] == list(ERA_CLASSES) and len(ERA_CLASSES) == 25


def test_root_init_is_the_deployed_entry_point():
    """Imported as QGIS does (the folder as package `unirs`), classFactory gives the same plugin class
    as the top-level import: one import layout in tests and when deployed."""
    spec = importlib.util.spec_from_file_location("unirs", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package)
    plugin = package.classFactory(None)
    assert type(plugin) is UniRSPlugin and str(REPO) in sys.path
    assert plugin.provider is None  # nothing registered before QGIS asks


def test_plugin_gui_lifecycle(qgis_iface, processing_ready, engine_env, monkeypatch):
    # pytest-qgis's iface stub lacks the raster-menu and dock-removal methods of QgisInterface
    menu: list = []
    monkeypatch.setattr(qgis_iface, "addPluginToRasterMenu", lambda name, action: menu.append(action),
                        raising=False)
    monkeypatch.setattr(qgis_iface, "removePluginRasterMenu", lambda name, action: menu.remove(action),
                        raising=False)
    monkeypatch.setattr(qgis_iface, "removeDockWidget", lambda dock: dock.hide(), raising=False)
    registry = QgsApplication.processingRegistry()
    plugin = UniRSPlugin(qgis_iface)
    plugin.initProcessing()
    plugin.initGui()  # calls initProcessing again: still one provider
    assert registry.providerById("unirs") is plugin.provider
    assert len([p for p in registry.providers() if p.id() == "unirs"]) == 1
    assert plugin.action.isCheckable() and plugin.action.text() == "UniRS"
    assert [a.text() for a in menu] == ["UniRS", "Set up engine…", "Settings…", "Help", "About UniRS…"]
    assert menu[0] is plugin.action
    assert plugin.dock is not None and plugin.dock.isHidden()   # registered at start-up (View ▸ Panels)
    plugin.action.setChecked(True)  # the toggle shows the dock
    assert not plugin.dock.isHidden()
    worker_pid = get_client().info()["pid"]
    plugin.unload()
    assert registry.providerById("unirs") is None
    with pytest.raises(ProcessLookupError):  # unload stopped (and reaped) the engine worker
        os.kill(worker_pid, 0)
    assert plugin.dock is None and plugin.action is None and menu == []


def test_settings_round_trip_and_validation(default_settings):
    saved = PluginSettings(model_dir="/models/unirs", python="/opt/py/bin/python", device="cpu",
                           mode="inprocess", clue=True, answers_gpkg="/data/a.gpkg",
                           torch_index_url="https://mirror.example/torch")
    saved.save()
    assert PluginSettings.load() == saved
    with pytest.raises(ValueError, match="device must be one of"):
        PluginSettings(device="tpu").save()
    from qgis.core import QgsSettings

    QgsSettings().setValue("unirs/mode", "cloud")  # e.g. written by a newer version
    assert PluginSettings.load().mode == "subprocess"


def test_answers_path_defaults_beside_the_project(tmp_path, default_settings):
    project = QgsProject()
    unsaved = PluginSettings().answers_path(project)       # one file per unsaved project, in the profile
    assert unsaved.startswith(QgsApplication.qgisSettingsDirPath()) and unsaved.endswith(".gpkg")
    assert PluginSettings().answers_path(project) == unsaved != PluginSettings().answers_path(QgsProject())
    project.setFileName(str(tmp_path / "work.qgz"))
    assert PluginSettings().answers_path(project) == str(tmp_path / "work_unirs_answers.gpkg")
    assert PluginSettings(answers_gpkg="/x/y.gpkg").answers_path(project) == "/x/y.gpkg"


def test_format_engine_names_model_device_and_mode():
    cuda = {"model_id": "unirs-7b", "device": "cuda:0", "device_name": "NVIDIA RTX 4090", "mode": "subprocess"}
    assert format_engine(cuda) == "unirs-7b · CUDA NVIDIA RTX 4090"
    cpu = {"model_id": "UniRS demo", "device": "cpu", "device_name": "CPU", "mode": "inprocess"}
    assert format_engine(cpu) == "UniRS demo · CPU · in-process"


def test_engine_link_shares_one_worker_and_follows_settings(engine_env, default_settings):
    client = get_client()
    assert get_client() is client
    info = client.info()
    assert info["mode"] == "subprocess" and info["pid"] != os.getpid()
    assert os.path.realpath(info["python"]) == os.path.realpath(os.environ["UNIRS_ENGINE_PYTHON"])
    assert describe_engine() == f"{info['model_id']} · CPU"

    cpu = PluginSettings(device="cpu")
    other = get_client(cpu)
    assert other is not client and get_client(cpu) is other  # device changed: a new client
    shutdown_client()
    assert get_client() is not other


def test_inprocess_mode_is_opt_in_and_answers_here(engine_env, default_settings, tmp_path):
    from unirs_engine.testing.rasters import pattern, write_raster

    settings = PluginSettings(mode="inprocess")
    settings.save()
    try:
        scene = write_raster(tmp_path / "scene.tif", pattern(32, 32))
        answer = get_client().ask(str(scene), "What is this?")
        info = get_client().info()
        assert info["mode"] == "inprocess" and info["pid"] == os.getpid()
        assert answer["model_id"] == info["model_id"] and answer["georef"][0]["width"] == 32
        assert describe_engine().endswith("· CPU · in-process")
    finally:
        shutdown_client()
