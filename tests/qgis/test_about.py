"""Raster ▸ UniRS ▸ Help and About: where the documentation is, and what About says (version, model,
device) before and after the engine answered."""

from __future__ import annotations

from pathlib import Path

from unirs_qgis import about, engine_link
from unirs_qgis.settings import PluginSettings

REPO = Path(__file__).resolve().parents[2]


def test_help_opens_the_readme_of_a_checkout_else_the_project_page(monkeypatch, tmp_path):
    assert about.help_url() == (REPO / "README.md").as_uri()
    assert "\n## The QGIS plugin\n" in (REPO / "README.md").read_text()    # the anchor below
    (tmp_path / "metadata.txt").write_text((REPO / "metadata.txt").read_text())
    monkeypatch.setattr(about, "PLUGIN_DIR", str(tmp_path))                # as installed: no README
    assert about.help_url() == "https://github.com/unirs-for-qgis/unirs-for-qgis#the-qgis-plugin"


def test_about_names_version_model_and_device(monkeypatch):
    monkeypatch.setattr(engine_link, "_last_info", None)
    monkeypatch.delenv("UNIRS_MODEL", raising=False)
    version = about.metadata()["version"]
    text = about.about_text(PluginSettings(device="cuda"))
    assert f"<b>UniRS {version}</b>" in text
    assert "the embedded demo model · device cuda (not started yet" in text and "<b>Clue model:</b> none" in text

    engine_link.remember_info({"model_id": "unirs-7b", "device": "cuda:0", "device_name": "NVIDIA H200",
                               "mode": "subprocess"})
    assert "<b>Engine:</b> unirs-7b · CUDA NVIDIA H200<br>" in about.about_text(PluginSettings())
