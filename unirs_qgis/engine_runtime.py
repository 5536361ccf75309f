"""The engine's runtime seen from QGIS: is there a working engine, set it up, test it.

The work is the engine's runtime package (unirs_engine.runtime: no torch, no Qt); this module runs it
in QgsTasks so QGIS never waits on pip or a model load, and streams its lines to the "UniRS" log tab.
One setup runs at a time plugin-wide: the dock's banner, the settings dialog and the menu share it.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from unirs_engine.runtime import requirements
from unirs_engine.runtime.check import check_engine, run_check
from unirs_engine.runtime.environment import (EngineNotSetUp, ManagedEnvironment, missing_modules,
                                              resolve_engine_python)
from unirs_engine.runtime.installer import SetupCancelled, SetupError, SetupOutcome, setup_engine

from .engine_link import shutdown_client
from .settings import PluginSettings

LOG_TAG = "UniRS"


def log(message: str, level=Qgis.Info) -> None:
    QgsMessageLog.logMessage(message, LOG_TAG, level)


@dataclass
class EngineStatus:
    """What the dock's banner and the settings show about the engine's runtime."""

    ready: bool                   # a Python was found that has every runtime module
    python: str | None
    source: str                   # which rule found it (see runtime/environment.py), or ""
    problem: str = ""             # one line when something needs doing
    action: str = ""              # what to offer: "setup" | "update" | ""

    def describe(self) -> str:
        return f"{self.python} ({self.source})" if self.python else "none found"


def engine_status(settings: PluginSettings, probe: bool = True) -> EngineStatus:
    """Resolve the engine's Python as a worker start would; with `probe`, also look for every runtime
    module in it (a subprocess of ~0.1 s: call it from a task, not on the main thread)."""
    if settings.mode == "inprocess":
        missing = requirements.missing_here()
        if missing:
            return EngineStatus(False, sys.executable, "QGIS's own Python",
                                f"in-process mode needs '{missing[0]}' in QGIS's own Python, which lacks it: "
                                "set Engine mode to subprocess (it uses the managed engine environment)", "setup")
        return EngineStatus(True, sys.executable, "QGIS's own Python")
    try:
        found = resolve_engine_python(settings.python or None)
    except EngineNotSetUp as exc:
        return EngineStatus(False, None, "", str(exc), "setup")
    status = EngineStatus(True, found.python, found.source)
    managed = found.source == "managed environment"
    if probe:
        missing = missing_modules(found.python)
        if missing is None:
            status.ready, status.problem = False, f"the engine's Python ({found.python}) does not run"
        elif missing:
            status.ready = False
            status.problem = requirements.missing_module_message(missing[0], found.python, managed)
        if not status.ready:
            status.action = "setup"
            if not managed:
                status.problem += " (a managed environment is used once the Worker Python setting and " \
                                  "UNIRS_ENGINE_PYTHON are empty)"
            return status
    if managed and ManagedEnvironment().outdated():
        status.problem = "this plugin version needs other engine packages than the ones set up"
        status.action = "update"
    return status


class EngineStatusTask(QgsTask):
    """engine_status(probe=True) off the main thread; `done` carries the status."""

    done = pyqtSignal(object)

    def __init__(self, settings: PluginSettings):
        super().__init__("UniRS: looking for the engine", QgsTask.Flag(0))
        self.settings = settings
        self.status: EngineStatus | None = None

    def run(self) -> bool:
        self.status = engine_status(self.settings)
        return True

    def finished(self, ok: bool) -> None:
        self.done.emit(self.status)


class SetupEngineTask(QgsTask):
    """Builds or updates the managed engine environment. `status` carries progress text; `done` fires
    on the main thread; then `outcome` is set, or `error` (one line), or neither when cancelled."""

    status = pyqtSignal(str)
    done = pyqtSignal()

    def __init__(self, torch_index_url: str = "", force: bool = False):
        super().__init__("UniRS: setting up the engine", QgsTask.CanCancel)
        self.torch_index_url, self.force = torch_index_url, force
        self.outcome: SetupOutcome | None = None
        self.error: str | None = None

    def run(self) -> bool:
        try:
            self.outcome = setup_engine(torch_index_url=self.torch_index_url, force=self.force,
                                        log=lambda line: log(line), progress=self._progress,
                                        is_cancelled=self.isCanceled)
            return True
        except SetupCancelled as exc:
            log(str(exc))
            return False
        except SetupError as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # a bug: keep its traceback for the report
            log(f"engine setup failed unexpectedly:\n{traceback.format_exc()}", Qgis.Critical)
            self.error = f"the engine setup failed unexpectedly ({type(exc).__name__}: {exc}); see the UniRS log"
            return False

    def _progress(self, fraction: float, message: str) -> None:
        self.setProgress(100.0 * fraction)
        self.status.emit(message)

    def finished(self, ok: bool) -> None:
        global _running_setup
        _running_setup = None
        if self.outcome is not None:
            shutdown_client()  # the next request starts a worker with the new environment
            log(self.outcome.summary(), Qgis.Success)
        elif self.error:
            log(f"engine setup failed: {self.error}", Qgis.Warning)
        self.done.emit()


_running_setup: SetupEngineTask | None = None


def start_setup(settings: PluginSettings, force: bool = False) -> SetupEngineTask:
    """Start a setup, or return the one already running (so every surface shows the same progress)."""
    global _running_setup
    if _running_setup is None:
        _running_setup = SetupEngineTask(settings.torch_index_url, force)
        QgsApplication.taskManager().addTask(_running_setup)
    return _running_setup


def running_setup() -> SetupEngineTask | None:
    return _running_setup


class CheckEngineTask(QgsTask):
    """The "Test engine" check (imports, model load, one answer) with the configured engine; `done`
    fires with the report dict (report["ok"], and "problem" when it failed)."""

    done = pyqtSignal(object)

    def __init__(self, settings: PluginSettings):
        super().__init__("UniRS: testing the engine", QgsTask.CanCancel)
        self.settings = settings
        self.report: dict = {}

    def run(self) -> bool:
        self.report = check_engine_with(self.settings)
        return True

    def finished(self, ok: bool) -> None:
        self.done.emit(self.report or {"ok": False, "problem": "the check was cancelled"})


def check_engine_with(settings: PluginSettings) -> dict:
    """The check run by the Python the settings resolve to (a report even when there is none)."""
    status = engine_status(settings, probe=False)
    device = None if settings.device == "auto" else settings.device
    if not status.ready or status.python is None:
        return {"ok": False, "python": status.python, "problem": status.problem}
    if settings.mode == "inprocess":  # the engine is meant to run in QGIS's Python: check it there
        return {**check_engine(settings.model_dir or None, device), "source": status.source}
    report = run_check(status.python, model_dir=settings.model_dir or None,
                       device=device)
    report["source"] = status.source
    return report
