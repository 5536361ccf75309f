"""The plugin's user settings, stored in QgsSettings under "unirs/"."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from qgis.core import QgsProject, QgsSettings

PREFIX = "unirs/"
DEVICES = ("auto", "cpu", "cuda")
MODES = ("subprocess", "inprocess")
ANSWERS_FILE = "unirs_answers.gpkg"


@dataclass
class PluginSettings:
    model_dir: str = ""          # "" = the default model (env UNIRS_MODEL, else the embedded demo)
    python: str = ""             # worker interpreter; "" = UNIRS_ENGINE_PYTHON, else the managed environment
    device: str = "auto"         # "auto" | "cpu" | "cuda"
    mode: str = "subprocess"     # "subprocess" | "inprocess"
    clue: bool = False           # ask the base VLM for a clue first
    answers_gpkg: str = ""       # "" = <project dir or home>/unirs_answers.gpkg
    torch_index_url: str = ""    # where the engine setup takes torch from ("" = automatic)

    @classmethod
    def load(cls) -> PluginSettings:
        """Read every key (missing or invalid ones fall back to the defaults)."""
        qs = QgsSettings()
        default = cls()
        values = {}
        for f in fields(cls):
            fallback = getattr(default, f.name)
            values[f.name] = qs.value(PREFIX + f.name, fallback, type=type(fallback))
        if values["device"] not in DEVICES:
            values["device"] = default.device
        if values["mode"] not in MODES:
            values["mode"] = default.mode
        return cls(**values)

    def save(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        qs = QgsSettings()
        for f in fields(self):
            qs.setValue(PREFIX + f.name, getattr(self, f.name))

    def answers_path(self, project: QgsProject | None = None) -> str:
        """Where answers are written: the setting, else next to the project file, else in home."""
        if self.answers_gpkg:
            return self.answers_gpkg
        project = project or QgsProject.instance()
        folder = project.absolutePath() or str(Path.home())
        return os.path.join(folder, ANSWERS_FILE)


load = PluginSettings.load  # `settings.load()` reads like the contract's wording
