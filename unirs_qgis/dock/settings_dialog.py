"""The engine settings (model, clue model, worker interpreter, device, mode, answers file, torch index),
with what the chosen checkpoints hold (checkpoint_info.py: tasks, parameters, expected memory, or the
loader's reason to refuse one) and the engine's runtime: which Python runs the engine and why,
*Set up engine…* and *Test engine*."""

from __future__ import annotations

from html import escape

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QPalette
from qgis.PyQt.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFormLayout, QFrame, QHBoxLayout, QLabel,
                                 QLineEdit, QProgressBar, QPushButton)

from unirs_engine.checkpoint_info import (CheckpointError, CheckpointInfo, default_model_dir, describe, headline,
                                          inspect_checkpoint)
from unirs_engine.runtime.check import summary

from ..engine_runtime import CheckEngineTask, SetupEngineTask, engine_status, start_setup
from ..settings import DEVICES, MODES, PluginSettings
from .engine_banner import SETUP_TOOLTIP

RESOLUTION_HELP = ("The engine's Python is the first of: this setting, the UNIRS_ENGINE_PYTHON environment "
                   "variable, the managed engine environment (Set up engine…), and in a repository checkout "
                   "its .venv.")
# Expected memory is shown for the devices the Device setting may run on ("auto": CUDA when present).
MEMORY_DEVICES = {"auto": ("cpu", "cuda"), "cpu": ("cpu",), "cuda": ("cuda",)}
PROBLEM_STYLE = "QLabel { color: #b00020; }"


class _Panel(QLabel):
    """A word-wrapped label that keeps the height its text needs at its width: a dialog's layout sizes
    it by its minimum size hint only, which would clip the wrapped lines."""

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setMinimumHeight(self.heightForWidth(self.width()))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.setMinimumHeight(self.heightForWidth(self.width()))


def _table(lines: list[str]) -> str:
    """describe()'s "Label: text" lines as a two-column table."""
    rows = "".join(f"<tr><td style='padding-right: 8px'><b>{escape(label)}</b></td><td>{escape(text)}</td></tr>"
                   for label, _, text in (line.partition(": ") for line in lines))
    return f"<table cellspacing='0' cellpadding='1'>{rows}</table>"


class SettingsDialog(QDialog):
    """Edits a copy of `settings`; accept() saves it (the engine restarts with the next question)."""

    def __init__(self, settings: PluginSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("UniRS settings")
        self.setMinimumWidth(820)
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
        # What each folder holds, or in red why the loader would refuse it (read-only).
        self.model_info = _Panel()
        self.clue_info = _Panel()
        for panel in (self.model_info, self.clue_info):
            panel.setWordWrap(True)
            panel.setTextInteractionFlags(Qt.TextSelectableByMouse)
            panel.setBackgroundRole(QPalette.Base)
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
        form.addRow("", self.model_info)
        form.addRow("Clue model directory", self.clue_model_dir)
        form.addRow("", self.clue_info)
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
        self.device.currentTextChanged.connect(self.check_model_dirs)
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
        """Inspects the two checkpoint folders as the engine's loader does before loading (no torch:
        instant) and shows what each holds, or the loader's reason to refuse it in red. Returns the
        problems of the folders typed in (an empty model field shows the default model, which
        this dialog cannot fix)."""
        problems = []
        model = self.model_dir.filePath().strip()
        info = self._inspect(self.model_info, model or default_model_dir())
        if isinstance(info, str):
            problems += [f"Model directory: {info}"] if model else []
        else:
            lines = describe(info, MEMORY_DEVICES[self.device.currentText()])
            if not model:
                lines[0] = lines[0].replace("Model:", "Default model:", 1)
            self.model_info.setText(_table(lines))
        clue = self.clue_model_dir.filePath().strip()
        self.clue_info.setVisible(bool(clue))
        if clue:
            info = self._inspect(self.clue_info, clue)
            if isinstance(info, str):
                problems.append(f"Clue model directory: {info}")
            else:
                self.clue_info.setText(escape(headline(info)))
        return problems

    @staticmethod
    def _inspect(panel: QLabel, folder) -> CheckpointInfo | str:
        """The folder's CheckpointInfo with `panel` styled for it, or the loader's line shown in red."""
        try:
            info = inspect_checkpoint(folder)
        except CheckpointError as exc:
            problem = str(exc)
        else:
            problem = None
        # A framed panel on the base colour, or red text. Frame and margin, not a style sheet's
        # border and padding: QLabel sizes its wrapped text without the latter, and would clip it.
        panel.setStyleSheet(PROBLEM_STYLE if problem else "")
        panel.setFrameShape(QFrame.NoFrame if problem else QFrame.StyledPanel)
        panel.setMargin(0 if problem else 4)
        panel.setAutoFillBackground(not problem)
        panel.setTextFormat(Qt.PlainText if problem else Qt.RichText)
        if problem:
            panel.setText(problem)
        return problem or info

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
