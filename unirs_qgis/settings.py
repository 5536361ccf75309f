"""The plugin's user settings, stored in QgsSettings under "unirs/"."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, fields

from qgis.core import QgsApplication, QgsProject, QgsSettings

from unirs_engine.checkpoint_info import CheckpointError, inspect_checkpoint

PREFIX = "unirs/"
DEVICES = ("auto", "cpu", "cuda")
MODES = ("subprocess", "inprocess")
STORE_SUFFIX = "_unirs_answers.gpkg"     # <project name>_unirs_answers.gpkg beside a saved project
UNSAVED_FOLDER = "unirs/unsaved"         # in the profile folder: stores of projects not saved yet
PROJECT_SCOPE = "UniRS"                  # QgsProject entries of the plugin


@dataclass
class PluginSettings:
    model_dir: str = ""          # "" = the default model (env UNIRS_MODEL, else the embedded demo)
    python: str = ""             # worker interpreter; "" = UNIRS_ENGINE_PYTHON, else the managed environment
    device: str = "auto"         # "auto" | "cpu" | "cuda"
    mode: str = "subprocess"     # "subprocess" | "inprocess"
    clue: bool = False           # ask the base VLM for a clue first (needs clue_model_dir)
    answers_gpkg: str = ""       # "" = one store per project (see answers_path)
    torch_index_url: str = ""    # where the engine setup takes torch from ("" = automatic)
    clue_model_dir: str = ""     # base VLM checkpoint that writes clues; "" = no clues

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

    def clue_available(self) -> bool:
        """A clue can be asked for: a clue model is set and looks like a checkpoint."""
        return bool(self.clue_model_dir) and checkpoint_problem(self.clue_model_dir) is None

    def answers_path(self, project: QgsProject | None = None) -> str:
        """Where answers are written: the setting; else <name>_unirs_answers.gpkg beside the saved
        project; else, before the first save, a file of this project in the profile's data folder
        (answers_store moves it beside the project when it is saved)."""
        if self.answers_gpkg:
            return self.answers_gpkg
        project = project or QgsProject.instance()
        if project.fileName():
            return os.path.join(project.absolutePath(), project.baseName() + STORE_SUFFIX)
        return os.path.join(unsaved_folder(), f"{_store_id(project)}.gpkg")


def unsaved_folder() -> str:
    """The profile's folder for stores of unsaved projects (created when missing)."""
    folder = os.path.join(QgsApplication.qgisSettingsDirPath(), UNSAVED_FOLDER)
    os.makedirs(folder, exist_ok=True)
    return folder


def _store_id(project: QgsProject) -> str:
    """A random id kept in the project, naming its store until the project is saved."""
    store_id, found = project.readEntry(PROJECT_SCOPE, "store_id", "")
    if not found or not store_id:
        store_id = uuid.uuid4().hex
        project.writeEntry(PROJECT_SCOPE, "store_id", store_id)
    return store_id


def checkpoint_problem(folder: str) -> str | None:
    """The engine loader's one line saying why `folder` is not a checkpoint it can load, or None.
    Reads config files and safetensors headers only (checkpoint_info.py): instant, no torch."""
    try:
        inspect_checkpoint(folder)
    except CheckpointError as exc:
        return str(exc)
    return None


load = PluginSettings.load  # `settings.load()` reads like the contract's wording
