"""The banner at the top of the dock: shown when no working engine is found (or an update of the
engine environment is due), it runs the setup with progress and Cancel. Hidden while all is well."""

from __future__ import annotations

import time

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout

from unirs_engine.runtime.environment import NOT_SET_UP

from ..engine_runtime import EngineStatus, EngineStatusTask, SetupEngineTask, running_setup, start_setup
from ..settings import PluginSettings

STYLES = {  # background, border: QGIS's message bar colours for warning / critical / success
    "warning": ("#fff6d6", "#e0b43c"), "critical": ("#fbe3e1", "#d9534f"), "success": ("#e3f4e1", "#5cb85c")}
SETUP_TOOLTIP = ("Installs torch, transformers, rasterio and the engine's other packages into UniRS's own "
                 "Python environment in your user data folder (about 1.3 GiB for the CPU build; a few "
                 "minutes). QGIS's own Python is not changed. Progress and pip's output: UniRS log tab.")


class EngineBanner(QFrame):
    """`ready_changed(bool)` fires when a status check or a setup finishes."""

    ready_changed = pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("UniRSEngineBanner")
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.setup_button = QPushButton("Set up…")
        self.setup_button.setToolTip(SETUP_TOOLTIP)
        self.dismiss_button = QPushButton("OK")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the setup; the previous engine environment (if any) stays as it was")
        buttons = QHBoxLayout()
        buttons.addWidget(self.progress, 1)
        buttons.addStretch(0)
        for button in (self.setup_button, self.cancel_button, self.dismiss_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addWidget(self.message)
        layout.addLayout(buttons)
        self.setup_button.clicked.connect(self.start_setup)
        self.cancel_button.clicked.connect(self.cancel)
        self.dismiss_button.clicked.connect(self.hide)
        self.status: EngineStatus | None = None
        self._status_task: EngineStatusTask | None = None
        self._setup: SetupEngineTask | None = None
        self._setup_started = 0.0
        self.hide()

    # --- status ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Look for a working engine in a background task (the probe runs the engine's Python)."""
        if running_setup() is not None:
            return self._follow(running_setup())
        if self._status_task is not None:
            return
        self._status_task = EngineStatusTask(PluginSettings.load())
        self._status_task.done.connect(self.show_status)
        QgsApplication.taskManager().addTask(self._status_task)

    def show_status(self, status: EngineStatus) -> None:
        self._status_task = None
        self.status = status
        if self._setup is not None:
            return
        if status.ready and not status.action:
            self.hide()
        elif status.action == "update":
            self._show("warning", f"An update of the UniRS engine is available: {status.problem}.", "Update…")
        elif status.problem == NOT_SET_UP:
            self._show("warning", "<b>The UniRS engine is not set up.</b> <i>Set up…</i> installs it into its "
                                  "own Python environment (about 1.3 GiB, a few minutes); QGIS's Python is not "
                                  "changed. Headless: <tt>qgis_process.bin run unirs:setup_engine</tt>.", "Set up…")
        else:
            self._show("critical", f"<b>The UniRS engine cannot run.</b> {status.problem}", "Set up…")
        self.ready_changed.emit(status.ready)

    # --- setup -----------------------------------------------------------------------------------
    def start_setup(self) -> None:
        self._follow(start_setup(PluginSettings.load()))

    def cancel(self) -> None:
        if self._setup is not None:
            self.message.setText("Cancelling the engine setup…")
            self._setup.cancel()

    def is_setting_up(self) -> bool:
        return self._setup is not None

    def _follow(self, task: SetupEngineTask) -> None:
        if self._setup is task:
            return
        self._setup, self._setup_started = task, time.monotonic()
        task.progressChanged.connect(self._on_setup_progress)
        task.status.connect(self._on_setup_status)
        task.done.connect(self._on_setup_done)
        self._show("warning", "Setting up the UniRS engine…", None, busy=True)

    def _on_setup_progress(self, value: float) -> None:
        self.progress.setValue(int(value))

    def _on_setup_status(self, text: str) -> None:
        elapsed = time.monotonic() - self._setup_started
        self.message.setText(f"Setting up the UniRS engine ({elapsed:.0f} s): {text}")

    def _on_setup_done(self) -> None:
        task, self._setup = self._setup, None
        if task.outcome is not None:
            r = task.outcome.record
            self._show("success", f"<b>The UniRS engine is ready</b>: torch {r.torch_version} on {r.device}, "
                                  f"Python {r.python_version}; set up in {task.outcome.seconds:.0f} s "
                                  f"({r.size_mb:.0f} MB in {r.env_dir}).", None, dismiss=True)
            self.ready_changed.emit(True)
        elif task.error:
            self._show("critical", f"<b>The engine setup failed:</b> {task.error}", "Retry…")
        else:
            self._show("warning", "The engine setup was cancelled; the previous environment is unchanged.",
                       "Set up…")

    def _show(self, style: str, text: str, action: str | None, *, busy: bool = False,
              dismiss: bool = False) -> None:
        background, border = STYLES[style]
        self.setStyleSheet(f"#UniRSEngineBanner {{ background: {background}; border: 1px solid {border}; "
                           "border-radius: 3px; }")
        self.message.setText(text)
        self.setup_button.setVisible(action is not None)
        self.setup_button.setText(action or "")
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.dismiss_button.setVisible(dismiss)
        if busy:
            self.progress.setValue(0)
        self.show()
