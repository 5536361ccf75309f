"""The background task behind the dock: export layers if needed, ask the engine, record the answer.

run() executes in a worker thread and touches no widget, layer tree or project state: it only reads
the layers through layer_source (which clones the data provider) and blocks on the engine client.
finished() runs on the main thread and writes the answer back with write_back.record_answer.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field

from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsMapSettings, QgsMessageLog, QgsProject,
                       QgsRasterLayer, QgsRectangle, QgsTask)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QDate, pyqtSignal

from unirs_engine.errors import UnirsError

from .. import engine_link, write_back
from ..algorithms.base import bounds_of, crs_for_engine
from ..layer_source import raster_path_for_engine
from ..settings import PluginSettings

DEFAULT_CHANGE_QUESTION = "Describe the change"
DEFAULT_CLASSIFY_QUESTION = "What event does this sequence show?"
STARTING = "starting the engine (loading the model)"
LOG_TAG = "UniRS"


@dataclass
class Job:
    """Everything the task needs, gathered on the main thread before it starts."""

    op: str                                  # "ask" | "change" | "classify"
    layers: list[QgsRasterLayer]             # ask: [layer]; change: [before, after]; classify: frames
    question: str                            # what is recorded and shown in the history
    settings: PluginSettings
    instruction: str | None = None           # change: custom instruction (None = the engine default)
    extent: QgsRectangle | None = None       # in extent_crs; None = the whole layer(s)
    extent_crs: QgsCoordinateReferenceSystem | None = None
    dates: list[QDate | None] = field(default_factory=list)   # of the layers; [] = their own
    view: QgsMapSettings | None = None        # the canvas when asked: places the map note
    short_answer: bool = True                 # ask: a word or phrase (prompts.question_instruction)


class EngineTask(QgsTask):
    """One question to the engine. Emits `status` (a progress message, from the worker thread: Qt
    queues it to the dock) and `done` on the main thread when finished, cancelled or failed; then
    `record` (the answer written back) or `error` (a one-line message) is set, neither if cancelled.
    `started_engine` says whether this request waited for the engine to start; `request_s` is how
    long the engine took to answer."""

    status = pyqtSignal(str)
    done = pyqtSignal()

    def __init__(self, job: Job):
        names = ", ".join(layer.name() for layer in job.layers)
        super().__init__(f"UniRS {job.op}: {names}", QgsTask.Flag.CanCancel)
        self.job = job
        self.setDependentLayers(job.layers)   # removing an input layer cancels the task
        self.result: dict | None = None
        self.record: dict | None = None
        self.error: str | None = None
        self.engine_text: str | None = None
        self.started_engine = False
        self.request_s: float | None = None    # the whole engine call
        self.ready_s: float | None = None      # into the call when a starting engine was ready
        self._call_started = 0.0
        self._progress_calls = 0

    # --- worker thread -------------------------------------------------------------------------
    def run(self) -> bool:
        temporary: list[str] = []
        try:
            paths = []
            for layer in self.job.layers:   # a sequence has no bounds: its frames are cut to the extent
                path, is_temp = raster_path_for_engine(layer, self.job.extent, self.job.extent_crs,
                                                       clip=self.job.op == "classify")
                paths.append(path)
                if is_temp:
                    temporary.append(path)
            if self.isCanceled():
                return False
            client = engine_link.get_client(self.job.settings)
            self.started_engine = not engine_link.is_running(client)
            self.status.emit(STARTING if self.started_engine else "waiting for the engine")
            self._call_started = time.monotonic()
            self.result = self._call(client, paths)
            self.request_s = time.monotonic() - self._call_started
            self.engine_text = engine_link.format_engine(engine_link.remember_info(client.info()))
            return True
        except Exception as exc:  # run() must not raise: report it from finished()
            if self.isCanceled():
                return False
            self.error = str(exc) or type(exc).__name__
            if isinstance(exc, UnirsError):  # a user-facing message: one line
                QgsMessageLog.logMessage(self.error, LOG_TAG, Qgis.Warning)
            else:  # a bug: its traceback is what a report needs
                QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Critical)
            return False
        finally:
            for path in temporary:
                if os.path.exists(path):
                    os.remove(path)

    def _call(self, client, paths: list[str]) -> dict:
        job = self.job
        common = {"clue": job.settings.clue, "on_progress": self._on_progress,
                  "is_cancelled": self.isCanceled}
        if job.op == "classify":
            return client.classify_sequence(paths, **common)
        if job.extent is not None and job.extent_crs is not None:
            common["bounds"] = bounds_of(job.extent)
            common["bounds_crs"] = crs_for_engine(job.extent_crs)
        if job.op == "change":
            return client.describe_change(paths[0], paths[1], instruction=job.instruction, **common)
        return client.ask(paths[0], job.question, short_answer=job.short_answer, **common)

    def _on_progress(self, fraction: float, message: str) -> None:
        # A starting engine first says so itself; its next report is about the request: it is ready.
        self._progress_calls += 1
        if self.started_engine and self._progress_calls == 2:
            self.ready_s = time.monotonic() - self._call_started
        self.status.emit(STARTING if self.started_engine and self._progress_calls == 1 else message)
        self.setProgress(100.0 * fraction)

    def answer_seconds(self) -> float | None:
        """How long the engine took to answer, its start excluded (None when unknown)."""
        if self.request_s is None or (self.started_engine and self.ready_s is None):
            return None
        return self.request_s - (self.ready_s or 0.0)

    # --- main thread ---------------------------------------------------------------------------
    def finished(self, ok: bool) -> None:
        if ok and not self.isCanceled():
            if self.started_engine:
                QgsMessageLog.logMessage(self.engine_started_text(), LOG_TAG, Qgis.Info)
            self._record()
        self.done.emit()

    def engine_started_text(self) -> str:
        info = engine_link.last_info() or {}
        gpu = f", GPU {info['device_name']}" if str(info.get("device", "")).startswith("cuda") else ""
        return (f"engine started: model {info.get('model_id', '?')} on {info.get('device', '?')}{gpu} "
                f"({info.get('mode', '?')}, python {info.get('python', '?')}) in "
                f"{self.ready_s or self.request_s:.1f} s")

    def _record(self) -> None:
        if any(sip.isdeleted(layer) for layer in self.job.layers):
            self.error = "an input layer was removed before the answer arrived; nothing was recorded"
            return
        project = QgsProject.instance()
        try:
            self.record = write_back.record_answer(
                project, self.job.layers, self.result, self.job.question,
                answers_gpkg=self.job.settings.answers_path(project), view=self.job.view,
                dates=self.job.dates)
        except Exception as exc:  # a write failure is reported in the dock, never a crash
            self.error = f"the answer could not be saved: {exc}"
            if isinstance(exc, OSError):   # e.g. an answers file that cannot be written: one line
                QgsMessageLog.logMessage(self.error, LOG_TAG, Qgis.Warning)
            else:
                QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Critical)
