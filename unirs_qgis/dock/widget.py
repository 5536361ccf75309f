"""The UniRS dock: ask about a layer, describe the change between two dated layers, or classify a
dated stack; answers run in a QgsTask and are written back into the project (write_back.py)."""

from __future__ import annotations

import statistics
import time

from qgis.core import (Qgis, QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransform,
                       QgsMapLayerProxyModel, QgsMapSettings, QgsProject, QgsRasterLayer, QgsRectangle)
from qgis.gui import QgsDateEdit, QgsDockWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QDate, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (QAbstractItemView, QCheckBox, QFormLayout, QHBoxLayout, QHeaderView,
                                 QLabel, QLineEdit, QListWidget, QListWidgetItem, QPlainTextEdit,
                                 QProgressBar, QPushButton, QTableView, QTabWidget, QVBoxLayout,
                                 QWidget)

from .. import answers_store
from ..answers import change_details
from ..answers_store import answers_of
from ..dates import DatedPair, dated_pair, layer_date, order_by_date, undated_warning
from ..engine_link import engine_key, last_info
from ..settings import PluginSettings
from .engine_banner import EngineBanner
from .history import AnswerHistoryModel
from .review_panel import ReviewPanel
from .settings_dialog import SettingsDialog
from .task import DEFAULT_CHANGE_QUESTION, DEFAULT_CLASSIFY_QUESTION, STARTING, EngineTask, Job

TITLE = "UniRS"
IDLE_ENGINE_TEXT = "Engine: starts with the first question"
BEFORE_DATE, AFTER_DATE = "Before date", "After date"     # the Change tab's date fields
CLUE_TIP = "Ask the base model for a clue first (Settings… ▸ Clue model directory)"
NO_CLUE_TIP = "Needs a clue model: set Clue model directory in Settings… first"
TYPICAL_OF = 5                # the typical request time is the median of the last answers


def _raster_combo() -> QgsMapLayerComboBox:
    combo = QgsMapLayerComboBox()
    combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
    return combo


def _date_edit() -> QgsDateEdit:
    edit = QgsDateEdit()
    edit.setAllowNull(True)
    edit.setNullRepresentation("no date: type one")
    edit.setDisplayFormat("yyyy-MM-dd")
    edit.clear()
    return edit


def _date_of(edit: QgsDateEdit) -> QDate | None:
    return None if edit.isNull() else edit.date()


def _date_of_layer(layer: QgsRasterLayer | None) -> QDate | None:
    return layer_date(layer) if layer is not None else None


def _set_date(edit: QgsDateEdit, date: QDate | None) -> None:
    if date is None:
        edit.clear()
    else:
        edit.setDate(date)


class QuestionEdit(QPlainTextEdit):
    """The question box: Enter (or Ctrl+Enter) asks, Shift+Enter starts a new line."""

    submitted = pyqtSignal()

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        if event.key() in (Qt.Key_Return, Qt.Key_Enter) and not event.modifiers() & Qt.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class UniRSDockWidget(QgsDockWidget):
    """Dock with tabs (Ask / Change / Sequence / Review), extent and clue options, progress + Cancel,
    the last answer and the per-layer history of answers."""

    def __init__(self, iface, parent=None):
        super().__init__(TITLE, parent)
        self.setObjectName("UniRSDockWidget")
        self.iface = iface
        self.task: EngineTask | None = None   # a Python reference keeps the running task alive
        self._started = 0.0                   # time.monotonic() when the task started
        self._message = ""                    # the task's last status message
        self._notices: list[str] = []         # warnings about the running job (e.g. a swapped pair)
        self._durations: list[float] = []     # how long the engine took to answer, this session
        self._start_seconds: float | None = None   # how long the engine took to start, last time
        self._clock = QTimer(self)            # counts the seconds of a running task
        self._clock.setInterval(1000)
        self._build()
        self._connect()
        self.refresh_layers()
        self.refresh_clue()
        self._set_busy(False)
        answers_store.watch(QgsProject.instance())   # the answers store follows the project's saves

    def showEvent(self, event) -> None:  # noqa: N802 (Qt)
        super().showEvent(event)
        if self.engine_banner.status is None:   # first shown: look for the engine now, not at QGIS start
            self.engine_banner.refresh()

    # --- construction --------------------------------------------------------------------------
    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        self.engine_banner = EngineBanner()
        layout.addWidget(self.engine_banner)

        top = QHBoxLayout()
        self.engine_label = QLabel(IDLE_ENGINE_TEXT)
        self.engine_label.setWordWrap(True)
        self.settings_button = QPushButton("Settings…")
        top.addWidget(self.engine_label, 1)
        top.addWidget(self.settings_button)
        layout.addLayout(top)

        self.tabs = QTabWidget()
        self.layer_combo = _raster_combo()
        self.question_edit = QuestionEdit()
        self.question_edit.setPlaceholderText("e.g. How many buildings are there?\n"
                                              "Enter asks; Shift+Enter starts a new line")
        self.question_edit.setMaximumHeight(70)
        self.short_answer_check = QCheckBox("Short answer (a word or phrase)")
        self.short_answer_check.setChecked(True)
        self.short_answer_check.setToolTip("Ask for yes/no, a number or a class, as the VQA benchmarks and "
                                           "the demo model's training do; untick for a free answer")
        self.ask_button = QPushButton("Ask")
        self.ask_page = QWidget()
        ask_form = QFormLayout(self.ask_page)
        ask_form.addRow("Layer", self.layer_combo)
        ask_form.addRow("Question", self.question_edit)
        ask_form.addRow("", self.short_answer_check)
        ask_form.addRow(self.ask_button)
        self.tabs.addTab(self.ask_page, "Ask")

        self.before_combo = _raster_combo()
        self.after_combo = _raster_combo()
        self.before_date = _date_edit()
        self.after_date = _date_edit()
        for edit in (self.before_date, self.after_date):
            edit.setToolTip("Filled from the layer (metadata, TIFF date tag, or a date in its name); "
                            "type it when none was found")
        self.order_button = QPushButton("Order by date")
        self.instruction_edit = QLineEdit()
        self.instruction_edit.setPlaceholderText("optional: your own instruction")
        self.change_button = QPushButton("Describe change")
        self.change_page = QWidget()
        change_form = QFormLayout(self.change_page)
        change_form.addRow("Before", self.before_combo)
        change_form.addRow(BEFORE_DATE, self.before_date)
        change_form.addRow("After", self.after_combo)
        change_form.addRow(AFTER_DATE, self.after_date)
        change_form.addRow("", self.order_button)
        change_form.addRow("Instruction", self.instruction_edit)
        change_form.addRow(self.change_button)
        self.tabs.addTab(self.change_page, "Change")

        self.stack_list = QListWidget()
        self.stack_list.setToolTip("Tick the frames of the sequence; they are sent oldest first "
                                   "(over the canvas extent when Use canvas extent is ticked).")
        self.classify_button = QPushButton("Classify event")
        self.stack_page = QWidget()
        stack_layout = QVBoxLayout(self.stack_page)
        stack_layout.addWidget(self.stack_list)
        stack_layout.addWidget(self.classify_button)
        self.tabs.addTab(self.stack_page, "Sequence")
        self.review_panel = ReviewPanel(self.iface)
        self.tabs.addTab(self.review_panel, "Review")
        layout.addWidget(self.tabs)

        options = QHBoxLayout()
        self.use_canvas_extent = QCheckBox("Use canvas extent")
        self.use_canvas_extent.setChecked(True)
        self.use_canvas_extent.setToolTip("Send only what the map shows (all tabs); otherwise whole layers")
        self.clue_check = QCheckBox("Clue from base model")
        options.addWidget(self.use_canvas_extent)
        options.addWidget(self.clue_check)
        layout.addLayout(options)

        running = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.cancel_button = QPushButton("Cancel")
        running.addWidget(self.progress, 1)
        running.addWidget(self.cancel_button)
        layout.addLayout(running)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.status_label)

        self.history_label = QLabel("History")
        self.history_model = AnswerHistoryModel(self)
        self.history_view = QTableView()
        self.history_view.setModel(self.history_model)
        self.history_view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.history_view.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.history_view.setWordWrap(True)
        self.history_view.verticalHeader().setVisible(False)
        header = self.history_view.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Interactive)
        header.setStretchLastSection(True)
        self.history_view.setToolTip("Double-click an answer to zoom to where it was asked")
        layout.addWidget(self.history_label)
        layout.addWidget(self.history_view, 1)
        self.setWidget(body)

    def _connect(self) -> None:
        self.ask_button.clicked.connect(self.ask)
        self.question_edit.submitted.connect(self.ask)
        self.change_button.clicked.connect(self.describe_change)
        self.classify_button.clicked.connect(self.classify)
        self.cancel_button.clicked.connect(self.cancel)
        self.order_button.clicked.connect(self.order_pair_by_date)
        self.settings_button.clicked.connect(self.open_settings)
        self.clue_check.toggled.connect(self._save_clue)
        self.tabs.currentChanged.connect(self.refresh_history)
        self.layer_combo.layerChanged.connect(self.refresh_history)
        self.before_combo.layerChanged.connect(self._before_changed)
        self.after_combo.layerChanged.connect(self._after_changed)
        self.after_combo.layerChanged.connect(self.refresh_history)
        self.stack_list.currentItemChanged.connect(self.refresh_history)
        self.stack_list.itemChanged.connect(self.refresh_history)    # a tick changes the fallback
        self.history_view.doubleClicked.connect(self._zoom_to_record)
        self._clock.timeout.connect(self._show_status)
        project = QgsProject.instance()
        project.layersAdded.connect(self.refresh_layers)
        project.layersRemoved.connect(self.refresh_layers)
        project.readProject.connect(self.refresh_layers)

    # --- user actions --------------------------------------------------------------------------
    def ask(self) -> None:
        layer = self.layer_combo.currentLayer()
        question = self.question_edit.toPlainText().strip()
        if layer is None:
            return self.warn("Pick a raster layer to ask about.")
        if not question:
            return self.warn("Type a question first.")
        self._start(self._job("ask", [layer], question, short_answer=self.short_answer_check.isChecked()))

    def describe_change(self) -> None:
        before, after = self.before_combo.currentLayer(), self.after_combo.currentLayer()
        if before is None or after is None or before.id() == after.id():
            return self.warn("Pick two different raster layers (before and after).")
        pair, notices = self._ordered_pair()
        instruction = self.instruction_edit.text().strip() or None
        self._start(self._job("change", [pair.before, pair.after], instruction or DEFAULT_CHANGE_QUESTION,
                              instruction=instruction, dates=[pair.date_before, pair.date_after]), notices)

    def classify(self) -> None:
        frames = order_by_date(self.checked_stack_layers())
        if len(frames) < 2:
            return self.warn("Tick at least two layers of the sequence.")
        warning = undated_warning(frames)
        notices = [warning] if warning else []
        if warning:
            self.warn(warning)
        self._start(self._job("classify", frames, DEFAULT_CLASSIFY_QUESTION), notices)

    def cancel(self) -> None:
        if self.task is not None:
            self.status_label.setText("Cancelling…")
            self.task.cancel()

    def order_pair_by_date(self) -> None:
        if None in (self.before_combo.currentLayer(), self.after_combo.currentLayer()):
            return self.warn("Pick the before and after layers first.")
        _, notices = self._ordered_pair()
        if not notices:
            self.status_label.setText("Before and after are in date order.")

    def _ordered_pair(self) -> tuple[DatedPair, list[str]]:
        """The Change tab's pair in date order (dates typed, else the layers') and the warnings shown:
        swapped in the tab when needed; a prompt for a missing date."""
        pair = dated_pair(self.before_combo.currentLayer(), self.after_combo.currentLayer(),
                          _date_of(self.before_date), _date_of(self.after_date))
        if pair.swapped:
            self.before_combo.setLayer(pair.before)
            self.after_combo.setLayer(pair.after)
        _set_date(self.before_date, pair.date_before)
        _set_date(self.after_date, pair.date_after)
        notices = pair.warnings(BEFORE_DATE, AFTER_DATE)
        if notices:
            self.warn("\n".join(notices))
        if pair.date_before is None:
            self.before_date.setFocus()
        elif pair.date_after is None:
            self.after_date.setFocus()
        return pair, notices

    def open_settings(self) -> None:
        before = self._settings()
        dialog = SettingsDialog(before, self)
        if dialog.exec_() and engine_key(dialog.settings()) != engine_key(before):
            self.engine_label.setText(IDLE_ENGINE_TEXT)   # another engine answers the next question
        self.refresh_clue()
        self.engine_banner.refresh()

    def warn(self, text: str) -> None:
        """Show `text` in the QGIS message bar and in the dock."""
        self.status_label.setText(text)
        if self.iface is not None:
            self.iface.messageBar().pushMessage(TITLE, text, Qgis.Warning, 8)

    # --- clue ----------------------------------------------------------------------------------
    def refresh_clue(self) -> None:
        """The clue box works only with a clue model (Settings…): disabled and explained otherwise."""
        settings = PluginSettings.load()
        available = settings.clue_available()
        self.clue_check.blockSignals(True)
        self.clue_check.setChecked(available and settings.clue)
        self.clue_check.blockSignals(False)
        self.clue_check.setEnabled(available)
        self.clue_check.setToolTip(CLUE_TIP if available else NO_CLUE_TIP)

    def _save_clue(self, checked: bool) -> None:
        settings = PluginSettings.load()
        settings.clue = checked
        settings.save()

    # --- task lifecycle ------------------------------------------------------------------------
    def _settings(self) -> PluginSettings:
        settings = PluginSettings.load()
        settings.clue = self.clue_check.isChecked() and self.clue_check.isEnabled()
        return settings

    # A date field shows its layer's own date (empty when none is known) until the user types one.
    def _before_changed(self, *_) -> None:
        _set_date(self.before_date, _date_of_layer(self.before_combo.currentLayer()))

    def _after_changed(self, *_) -> None:
        _set_date(self.after_date, _date_of_layer(self.after_combo.currentLayer()))

    def _job(self, op: str, layers: list[QgsRasterLayer], question: str, **kw) -> Job:
        extent, crs = self._extent_for(layers[0])
        view = QgsMapSettings(self.iface.mapCanvas().mapSettings()) if self.iface is not None else None
        return Job(op, layers, question, self._settings(), extent=extent, extent_crs=crs, view=view, **kw)

    def _extent_for(self, layer: QgsRasterLayer
                    ) -> tuple[QgsRectangle | None, QgsCoordinateReferenceSystem | None]:
        """The canvas extent in the layer's CRS when "Use canvas extent" is on, else the whole layer."""
        if not self.use_canvas_extent.isChecked() or self.iface is None:
            return None, None
        canvas = self.iface.mapCanvas()
        extent, crs = canvas.extent(), canvas.mapSettings().destinationCrs()
        if crs.isValid() and layer.crs().isValid() and crs != layer.crs():
            extent = QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()
                                            ).transformBoundingBox(extent)
        return QgsRectangle(extent), layer.crs()

    def _start(self, job: Job, notices: list[str] = ()) -> None:
        """Run `job`; `notices` (warnings about it) stay under the status until it is answered."""
        if self.task is not None:
            return self.warn("UniRS is still answering the previous question.")
        self._notices = list(notices)
        self.task = EngineTask(job)
        self.task.done.connect(self._on_done)
        self.task.progressChanged.connect(self._on_progress)
        self.task.status.connect(self._on_status)
        self._set_busy(True)
        self._started = time.monotonic()
        self._message = f"asking: {job.question}"
        self._show_status()
        self._clock.start()
        QgsApplication.taskManager().addTask(self.task)

    def typical_seconds(self) -> float | None:
        """The median time the engine took to answer lately (engine starts excluded)."""
        return statistics.median(self._durations[-TYPICAL_OF:]) if self._durations else None

    def _show_status(self) -> None:
        """What the running task is doing, for how long, and how long it usually takes."""
        if self.task is None:
            return
        elapsed = time.monotonic() - self._started
        text = f"Working: {self._message} · {elapsed:.0f} s"
        typical = self.typical_seconds()
        if self._message == STARTING:
            text = f"Starting the engine (loading the model)… {elapsed:.0f} s"
            if self._start_seconds is not None:
                text += f" (it took {self._start_seconds:.0f} s last time)"
        elif typical is not None:
            text += f" (an answer usually takes {typical:.0f} s)"
        self.status_label.setText("\n".join([text, *self._notices]))

    def _on_progress(self, value: float) -> None:
        if value > 0 and self.progress.maximum() == 0:   # real progress: leave the busy indicator
            self.progress.setRange(0, 100)
        self.progress.setValue(int(value))

    def _on_status(self, message: str) -> None:
        if self.task is not None:
            self._message = message
            self._show_status()

    def _on_done(self) -> None:
        task, self.task = self.task, None
        self._clock.stop()
        self._set_busy(False)
        if task.engine_text:
            self.engine_label.setText(f"Engine: {task.engine_text}")
            warning = (last_info() or {}).get("warning")
            self.engine_label.setToolTip(warning or "")
            if warning and task.started_engine and self.iface is not None:
                self.iface.messageBar().pushMessage(TITLE, warning, Qgis.Warning, 15)
        answer_s = task.answer_seconds()
        if answer_s is not None:
            self._durations.append(answer_s)
        if task.started_engine and task.ready_s is not None:
            self._start_seconds = task.ready_s
        notices, self._notices = self._notices, []
        if task.error:
            self.warn(task.error)
            self.engine_banner.refresh()   # e.g. the engine is not set up: the banner offers the fix
        elif task.record is not None:
            details = [change_details(task.record)] if task.record["task"] == "change" else []
            self.status_label.setText("\n".join([f"{task.record['question']}\n→ {task.record['answer']}",
                                                 *details, *notices]))
            self.refresh_history()
        else:
            self.status_label.setText("Cancelled.")

    def _set_busy(self, busy: bool) -> None:
        for button in (self.ask_button, self.change_button, self.classify_button,
                       self.settings_button):
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.progress.setVisible(busy)
        self.progress.setRange(0, 0)      # busy indicator until the engine reports progress
        self.progress.setValue(0)

    def is_busy(self) -> bool:
        return self.task is not None

    # --- layers and history --------------------------------------------------------------------
    def raster_layers(self) -> list[QgsRasterLayer]:
        return [layer for layer in QgsProject.instance().mapLayers().values()
                if isinstance(layer, QgsRasterLayer)]

    def checked_stack_layers(self) -> list[QgsRasterLayer]:
        project = QgsProject.instance()
        items = (self.stack_list.item(row) for row in range(self.stack_list.count()))
        return [project.mapLayer(item.data(Qt.UserRole)) for item in items
                if item.checkState() == Qt.Checked and project.mapLayer(item.data(Qt.UserRole))]

    def refresh_layers(self, *_) -> None:
        """Rebuild the sequence list (date order, ticks and selection kept) and pick a dated
        before/after pair."""
        rasters = order_by_date(self.raster_layers())
        ticked = {layer.id() for layer in self.checked_stack_layers()}
        current = self.stack_list.currentItem()
        current_id = current.data(Qt.UserRole) if current is not None else None
        self.stack_list.blockSignals(True)
        self.stack_list.clear()
        for layer in rasters:
            date = layer_date(layer)
            item = QListWidgetItem(f"{layer.name()}  ({date.toString('yyyy-MM-dd')})" if date
                                   else layer.name())
            item.setData(Qt.UserRole, layer.id())
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if layer.id() in ticked else Qt.Unchecked)
            self.stack_list.addItem(item)
            if layer.id() == current_id:
                self.stack_list.setCurrentItem(item)
        self.stack_list.blockSignals(False)
        before, after = self.before_combo.currentLayer(), self.after_combo.currentLayer()
        if len(rasters) >= 2 and (before is None or after is None or before.id() == after.id()):
            self.before_combo.setLayer(rasters[0])
            self.after_combo.setLayer(rasters[-1])
        self.refresh_history()

    def history_layer(self) -> QgsRasterLayer | None:
        """The layer whose history is shown: the one in focus on the current tab (on Sequence: the
        selected frame, else the first ticked one)."""
        page = self.tabs.currentWidget()
        if page is self.ask_page:
            return self.layer_combo.currentLayer()
        if page is self.change_page:
            return self.after_combo.currentLayer()
        if page is not self.stack_page:  # the Review tab has no answer history
            return None
        item = self.stack_list.currentItem()
        if item is not None:
            return QgsProject.instance().mapLayer(item.data(Qt.UserRole))
        ticked = self.checked_stack_layers()
        return ticked[0] if ticked else None

    def refresh_history(self, *_) -> None:
        layer = self.history_layer()
        self.history_label.setText(f"History of {layer.name()}" if layer else "History")
        records = []
        if layer is not None:
            try:
                records = answers_of(layer)
            except ValueError as exc:
                self.warn(str(exc))
        self.history_model.set_records(records)
        self.history_view.resizeRowsToContents()

    def _zoom_to_record(self, index) -> None:
        record = self.history_model.record(index.row())
        if self.iface is None or not record.get("extent"):
            return
        canvas = self.iface.mapCanvas()
        extent = QgsRectangle(*record["extent"])
        crs = QgsCoordinateReferenceSystem(record.get("extent_crs", ""))
        target = canvas.mapSettings().destinationCrs()
        if crs.isValid() and target.isValid() and crs != target:
            extent = QgsCoordinateTransform(crs, target, QgsProject.instance()
                                            ).transformBoundingBox(extent)
        canvas.setExtent(extent)
        canvas.refresh()
