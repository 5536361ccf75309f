"""The settings dialog says what a chosen checkpoint folder holds, in real QGIS 3.22 (offscreen): the
model id, its kind and tasks, the expected memory for the chosen device; for a folder the engine
cannot load, the loader's own line in red, and OK refused."""

from __future__ import annotations

import shutil

import pytest
from qgis.PyQt.QtGui import QTextDocument
from qgis.PyQt.QtWidgets import QDialog

from unirs_engine.checkpoint_info import CheckpointError
from unirs_engine.model.checkpoint import load_checkpoint
from unirs_engine.testing.tiny import build_tiny_vila_checkpoint
from unirs_qgis.dock.settings_dialog import SettingsDialog
from unirs_qgis.settings import PluginSettings


@pytest.fixture()
def saved(qgis_app, monkeypatch):
    """Saved settings at their defaults on the CPU, no UNIRS_MODEL: an empty field is the demo model."""
    previous = PluginSettings.load()
    PluginSettings(device="cpu").save()
    monkeypatch.delenv("UNIRS_MODEL", raising=False)
    yield
    previous.save()


@pytest.fixture(scope="module")
def vila(tmp_path_factory):
    return build_tiny_vila_checkpoint(tmp_path_factory.mktemp("vila") / "vila-tiny")


def shown(panel) -> str:
    """A panel's text as the user reads it (the rich-text table as plain text)."""
    doc = QTextDocument()
    doc.setHtml(panel.text())
    return doc.toPlainText()


def test_a_checkpoint_is_described_and_saved(saved, tiny_checkpoint, vila):
    dialog = SettingsDialog(PluginSettings.load())
    text = shown(dialog.model_info)                           # the empty field's model
    assert "Default model" in text and "unirs-demo (UniRS, " in text
    dialog.model_dir.setFilePath(str(tiny_checkpoint))
    text = shown(dialog.model_info)
    assert "unirs-tiny (UniRS, " in text and "fused by the Change Extraction module (CEM)" in text
    assert "Memory on CPU" in text and "in float32 for 1 request" in text and "Memory on GPU" not in text
    dialog.device.setCurrentText("cuda")                      # the memory follows the device
    text = shown(dialog.model_info)
    assert "Memory on GPU" in text and "in bfloat16 for 1 request" in text and "Memory on CPU" not in text
    dialog.device.setCurrentText("auto")
    assert "Memory on CPU" in shown(dialog.model_info) and "Memory on GPU" in shown(dialog.model_info)
    assert dialog.clue_info.isHidden()
    dialog.clue_model_dir.setFilePath(str(vila))
    assert dialog.clue_info.text().startswith("vila-tiny (VILA-1.5, ") and not dialog.clue_info.isHidden()
    dialog.model_dir.setFilePath(str(vila))
    assert "two images in one prompt (no CEM)" in shown(dialog.model_info)
    dialog.accept()
    stored = PluginSettings.load()
    assert (stored.model_dir, stored.clue_model_dir) == (str(vila), str(vila))


@pytest.mark.parametrize("field", ["model_dir", "clue_model_dir"])
def test_a_folder_the_loader_refuses_is_refused_with_its_line(saved, tiny_checkpoint, tmp_path, field):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    (broken / "vision_tower" / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError) as loader:
        load_checkpoint(broken)
    dialog = SettingsDialog(PluginSettings.load())
    getattr(dialog, field).setFilePath(str(broken))
    panel = dialog.model_info if field == "model_dir" else dialog.clue_info
    assert panel.text() == str(loader.value) == f"{broken}/vision_tower/preprocessor_config.json: missing " \
                                                "(expected the SigLIP image processor config)"
    assert "#b00020" in panel.styleSheet()
    dialog.device.setCurrentText("cuda")
    dialog.accept()                                           # refused: nothing saved, the dialog stays
    assert PluginSettings.load() == PluginSettings(device="cpu") and QDialog.result(dialog) == QDialog.Rejected
    getattr(dialog, field).setFilePath(str(tiny_checkpoint))
    assert "#b00020" not in panel.styleSheet()
    dialog.accept()
    assert PluginSettings.load().device == "cuda"
