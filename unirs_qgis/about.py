"""What Help and About show: the plugin's metadata, where its documentation is, which engine runs."""

from __future__ import annotations

import configparser
import os

from qgis.PyQt.QtCore import QUrl

from .engine_link import format_engine, last_info
from .settings import PluginSettings

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELP_ANCHOR = "the-qgis-plugin"    # README.md's "## The QGIS plugin"


def metadata() -> configparser.SectionProxy:
    """metadata.txt's [general] section (version, homepage…)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(PLUGIN_DIR, "metadata.txt"), encoding="utf-8")
    return parser["general"]


def help_url() -> str:
    """The plugin's documentation: the README beside the plugin (a repository checkout), else the
    project page (the README's QGIS plugin section)."""
    readme = os.path.join(PLUGIN_DIR, "README.md")
    if os.path.isfile(readme):
        return QUrl.fromLocalFile(readme).toString()
    return f"{metadata().get('homepage', '')}#{HELP_ANCHOR}"


def about_text(settings: PluginSettings | None = None) -> str:
    """Version, model, device (as the engine reported it, else as set) and where answers go."""
    settings = settings or PluginSettings.load()
    meta = metadata()
    info = last_info()
    if info:
        engine = format_engine(info)
    else:
        model = settings.model_dir or os.environ.get("UNIRS_MODEL") or "the embedded demo model"
        engine = f"{model} · device {settings.device} (not started yet: it starts with the first question)"
    clue = settings.clue_model_dir or "none"
    return (f"<b>UniRS {meta.get('version', '?')}</b><br>{meta.get('description', '')}<br><br>"
            f"<b>Engine:</b> {engine}<br><b>Clue model:</b> {clue}<br>"
            f"<b>Engine mode:</b> {settings.mode}<br><br>"
            f"<a href=\"{help_url()}\">Documentation</a> · "
            f"<a href=\"{meta.get('tracker', '')}\">Report a problem</a>")
