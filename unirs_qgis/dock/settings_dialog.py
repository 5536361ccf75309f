"""The engine settings (model, clue model, worker interpreter, device, mode, answers file, torch index),
with the engine's runtime: which Python runs the engine and why, *Set up engine…* and *Test engine*."""

from __future__ import annotations

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout, QLabel,
                                 QLineEdit, QProgressBar, QPushButton)

from unirs_engine.runtime.check import summary

from ..engine_runtime import CheckEngineTask, SetupEngineTask, engine_status, start_setup
from ..settings import DEVICES, MODES, PluginSettings, checkpoint_problem
from .engine_banner import SETUP_TOOLTIP

RESOLUTION_HELP = ("The engine's Python is the first of: this setting, the UNIRS_ENGINE_PYTHON environment "
                   "variable, the managed engine environment (Set up engine…), and in a repository checkout "
                   "its .venv.")


class SettingsDialog(QDialog):
    """Edits a copy of `settings`; accept() saves it (the engine restarts with the next question)."""

    def __init__(self, settings: PluginSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("UniRS settings")
        self.setMinimumWidth(560)
        self._clue = settings.clue      # edited in the dock itself
        self._task: CheckEngineTask | SetupEngineTask | None = None

        self.model_dir = QgsFileWidget()
        self.model_dir.setStorageMode(QgsFileWidget.GetDirectory)
        self.model_dir.setFilePath(settings.model_dir)
        self.model_dir.lineEdit().setPlaceholderText("default: the embedded demo model")
        self.clue_model_dir = QgsFileWidget()
        self.clue_model_dir.setStorageMode(QgsFileWidget.GetDirectory)
        self.clue_model_dir.setFilePath(settings.clue_model_dir)
        self.clue_model_dir.lineEdit().setPlaceholderText("none: Clue from base model stays off")
        self.clue_model_dir.setToolTip("A base VLM checkpoint (VILA-1.5 layout) that writes a clue before "
                                       "each answer when Clue from base model is ticked")
        self.checkpoint_problems = QLabel()
        self.checkpoint_problems.setWordWrap(True)
        self.checkpoint_problems.setStyleSheet("color: #b00020")
        self.checkpoint_problems.hide()
        self.python = QgsFileWidget()
        self.python.setFilePath(settings.python)
        self.python.lineEdit().setPlaceholderText("default: UNIRS_ENGINE_PYTHON, else the managed environment")
        self.python.setToolTip(RESOLUTION_HELP)
        self.engine_python = QLabel()
        self.engine_python.setWordWrap(True)
        self.engine_python.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.engine_python.setToolTip(RESOLUTION_HELP)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setCurrentText(settings.device)
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.mode.setCurrentText(settings.mode)
        self.mode.setToolTip("subprocess: torch runs in a separate worker (safe); "
                             "inprocess: torch is loaded into QGIS itself")
        self.answers_gpkg = QgsFileWidget()
        self.answers_gpkg.setStorageMode(QgsFileWidget.SaveFile)
        self.answers_gpkg.setFilter("GeoPackage (*.gpkg)")
        self.answers_gpkg.setFilePath(settings.answers_gpkg)
        self.answers_gpkg.lineEdit().setPlaceholderText("default: <project>_unirs_answers.gpkg beside the project")
        self.torch_index_url = QLineEdit(settings.torch_index_url)
        self.torch_index_url.setPlaceholderText("automatic: the CPU build, or CUDA when an NVIDIA GPU is found")
        self.torch_index_url.setToolTip("Where Set up engine… downloads torch from: a mirror, or a CUDA wheel "
                                        "index such as https://download.pytorch.org/whl/cu128")

        self.setup_button = QPushButton("Set up engine…")
        self.setup_button.setToolTip(SETUP_TOOLTIP)
        self.test_button = QPushButton("Test engine")
        self.test_button.setToolTip("Imports every engine module, loads the model and answers one question "
                                    "on a generated raster; reports the model, device and GPU")
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.hide()
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        engine_buttons = QHBoxLayout()
        engine_buttons.addWidget(self.setup_button)
        engine_buttons.addWidget(self.test_button)
        engine_buttons.addWidget(self.progress, 1)

        form = QFormLayout(self)
        form.addRow("Model directory", self.model_dir)
        form.addRow("Clue model directory", self.clue_model_dir)
        form.addRow(self.checkpoint_problems)
        form.addRow("Worker Python", self.python)
        form.addRow("Engine Python", self.engine_python)
        form.addRow("Device", self.device)
        form.addRow("Engine mode", self.mode)
        form.addRow("Answers GeoPackage", self.answers_gpkg)
        form.addRow("Torch index URL", self.torch_index_url)
        form.addRow(engine_buttons)
        form.addRow(self.result)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

        self.setup_button.clicked.connect(self.set_up_engine)
        self.test_button.clicked.connect(self.test_engine)
        self.python.fileChanged.connect(self.show_engine_python)
        self.mode.currentTextChanged.connect(self.show_engine_python)
        self.model_dir.fileChanged.connect(self.check_model_dirs)
        self.clue_model_dir.fileChanged.connect(self.check_model_dirs)
        self.show_engine_python()
        self.check_model_dirs()

    def settings(self) -> PluginSettings:
        """The settings as edited (not saved)."""
        return PluginSettings(model_dir=self.model_dir.filePath().strip(),
                              python=self.python.filePath().strip(),
                              device=self.device.currentText(), mode=self.mode.currentText(),
                              clue=self._clue, answers_gpkg=self.answers_gpkg.filePath().strip(),
                              torch_index_url=self.torch_index_url.text().strip(),
                              clue_model_dir=self.clue_model_dir.filePath().strip())

    def check_model_dirs(self, *_) -> list[str]:
        """The two checkpoint folders checked the same way (the layout the engine loads); the problems
        are shown under them and returned."""
        problems = [f"{label}: {problem}" for label, widget in (("Model directory", self.model_dir),
                                                                ("Clue model directory", self.clue_model_dir))
                    if widget.filePath().strip()
                    and (problem := checkpoint_problem(widget.filePath().strip()))]
        self.checkpoint_problems.setText("\n".join(problems))
        self.checkpoint_problems.setVisible(bool(problems))
        return problems

    def show_engine_python(self, *_) -> None:
        """Which Python the engine would run with now, and which rule chose it (no probe: instant)."""
        status = engine_status(self.settings(), probe=False)
        self.engine_python.setText(status.describe() if status.python else status.problem)

    # Slots are bound methods, not lambdas: Qt drops them if the dialog is closed while a task runs.
    def set_up_engine(self) -> None:
        task = start_setup(self.settings())
        self._run(task, "Setting up the engine…")
        self.progress.setRange(0, 100)
        task.progressChanged.connect(self._setup_progress)
        task.status.connect(self._setup_status)
        task.done.connect(self._setup_done)

    def _setup_progress(self, value: float) -> None:
        self.progress.setValue(int(value))

    def _setup_status(self, text: str) -> None:
        self.result.setText(f"Setting up the engine: {text}")

    def test_engine(self) -> None:
        task = CheckEngineTask(self.settings())
        self._run(task, "Testing the engine: imports, model load, one answer…")
        task.done.connect(self._test_done)
        QgsApplication.taskManager().addTask(task)

    def _run(self, task, text: str) -> None:
        self._task = task
        self.result.setText(text)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.setup_button.setEnabled(False)
        self.test_button.setEnabled(False)

    def _finish(self, text: str) -> None:
        self._task = None
        self.result.setText(text)
        self.progress.hide()
        self.setup_button.setEnabled(True)
        self.test_button.setEnabled(True)
        self.show_engine_python()

    def _setup_done(self) -> None:
        task = self._task
        if task.outcome is not None:
            self._finish(task.outcome.summary())
        else:
            self._finish(f"The engine setup failed: {task.error}" if task.error
                         else "The engine setup was cancelled; the previous environment is unchanged.")

    def _test_done(self, report: dict) -> None:
        self._finish(summary(report))

    def is_working(self) -> bool:
        return self._task is not None

    def accept(self) -> None:
        if self.check_model_dirs():   # kept open: the problem is shown in red
            return
        self.settings().save()
        super().accept()
