"""The engine runtime in the QGIS GUI (real QGIS 3.22, offscreen): the dock's banner when no working
engine is found, an update due or a Python without torch; Set up… then Cancel from the banner; the
settings dialog's engine Python line and its *Test engine* check against a real checkpoint."""

from __future__ import annotations

import time

import pytest
from pytest_qgis.utils import wait

from unirs_engine.runtime import paths
from unirs_engine.runtime.environment import ENV_VARIABLE, EnvRecord, ManagedEnvironment
from unirs_qgis.dock.settings_dialog import SettingsDialog
from unirs_qgis.dock.widget import UniRSDockWidget
from unirs_qgis.settings import PluginSettings
from tests.qgis.conftest import REPO, VENV_PYTHON

TIMEOUT_S = 240


@pytest.fixture()
def user(monkeypatch, tmp_path):
    """A user with no engine configured: saved settings at their defaults, UNIRS_HOME empty, no
    UNIRS_ENGINE_PYTHON, and the plugin as installed from the zip (not a repository checkout)."""
    previous = PluginSettings.load()
    PluginSettings().save()
    monkeypatch.setenv("UNIRS_HOME", str(tmp_path / "unirs-home"))
    monkeypatch.delenv(ENV_VARIABLE, raising=False)
    monkeypatch.setattr(paths, "is_repository_checkout", lambda: False)
    yield tmp_path / "unirs-home"
    previous.save()


def wait_for(condition, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        wait(50)


def open_dock(qgis_iface) -> UniRSDockWidget:
    dock = UniRSDockWidget(qgis_iface)
    dock.show()
    wait_for(lambda: dock.engine_banner.status is not None)   # the status check ran in a task
    return dock


def test_the_banner_offers_setup_when_no_engine_is_found(qgis_iface, user):
    dock = open_dock(qgis_iface)
    banner = dock.engine_banner
    assert banner.isVisible() and not banner.status.ready and banner.status.action == "setup"
    assert banner.message.text().startswith("<b>The UniRS engine is not set up.</b> <i>Set up…</i> installs it")
    assert "qgis_process.bin run unirs:setup_engine" in banner.message.text()
    assert banner.setup_button.isVisible() and banner.setup_button.text() == "Set up…"
    assert "1.3 GiB" in banner.setup_button.toolTip()
    dock.close()


def test_the_banner_names_what_a_chosen_python_lacks(qgis_iface, user):
    settings = PluginSettings(python="/usr/bin/python3")   # Debian's: no torch
    settings.save()
    dock = open_dock(qgis_iface)
    status = dock.engine_banner.status
    assert dock.engine_banner.isVisible() and status.source == "setting"
    assert dock.engine_banner.message.text().startswith("<b>The UniRS engine cannot run.</b> the engine's Python")
    assert "has no module 'torch'" in status.problem and "Worker Python setting" in status.problem
    dock.close()


def test_the_banner_names_a_missing_engine_python(qgis_iface, user, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VARIABLE, str(tmp_path / "gone" / "python"))
    dock = open_dock(qgis_iface)
    assert dock.engine_banner.message.text() == ("<b>The UniRS engine cannot run.</b> the engine Python named by "
                                                 f"UNIRS_ENGINE_PYTHON does not exist: {tmp_path}/gone/python")
    dock.close()


def test_the_banner_offers_an_update_after_the_requirements_changed(qgis_iface, user):
    """A managed environment made by an older plugin version (here: this venv, recorded with another
    requirements hash) still works, and the banner offers to update it."""
    ManagedEnvironment(user).write_record(EnvRecord(
        env_dir=str(REPO / ".venv"), fingerprint="old", requirements_hash="old", python_version="3.11",
        torch_version="2.13.0+cpu", torch_variant="cpu", cuda=None, device="cpu", torch_index_url="",
        base_python="/usr/bin/python3", created="2026-01-01T00:00:00", seconds=60.0, size_mb=1300.0))
    dock = open_dock(qgis_iface)
    banner = dock.engine_banner
    assert banner.status.ready and banner.status.source == "managed environment"
    assert banner.isVisible() and banner.setup_button.text() == "Update…"
    assert banner.message.text().startswith("An update of the UniRS engine is available")
    dock.close()


def test_the_banner_hides_when_the_engine_works(qgis_iface, engine_env):
    dock = open_dock(qgis_iface)
    assert dock.engine_banner.status.ready and not dock.engine_banner.isVisible()
    dock.close()


def test_set_up_then_cancel_from_the_banner_leaves_nothing(qgis_iface, user):
    dock = open_dock(qgis_iface)
    banner = dock.engine_banner
    banner.setup_button.click()
    assert banner.is_setting_up() and banner.cancel_button.isVisible() and banner.progress.isVisible()
    wait_for(lambda: banner.message.text().startswith("Setting up the UniRS engine ("))   # progress arrives
    banner.cancel_button.click()
    wait_for(lambda: not banner.is_setting_up())
    assert banner.message.text() == "The engine setup was cancelled; the previous environment is unchanged."
    env = ManagedEnvironment(user)
    assert env.record() is None and not any(env.envs.glob("*"))
    dock.close()


def test_settings_show_the_engine_python_and_test_it(qgis_iface, engine_env, tmp_path):
    previous = PluginSettings.load()
    PluginSettings(device="cpu").save()
    try:
        dialog = SettingsDialog(PluginSettings.load())
        assert dialog.engine_python.text() == f"{VENV_PYTHON} ({ENV_VARIABLE})"
        dialog.test_button.click()
        wait_for(lambda: not dialog.is_working())
        assert dialog.result.text().startswith("Engine works: unirs-tiny on cpu, torch 2.")
        assert "\"Is there a water area?\" → \"" in dialog.result.text()

        dialog.model_dir.setFilePath(str(tmp_path))   # a folder that is not a checkpoint
        dialog.test_button.click()
        wait_for(lambda: not dialog.is_working())
        assert dialog.result.text().startswith("Engine check failed: could not load the model: ")
        assert "config.json" in dialog.result.text()
        dialog.reject()
    finally:
        previous.save()
