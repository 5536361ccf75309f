"""The UniRS dock: ask about a layer, describe the change between two dated layers, or classify a
dated stack; answers run in a QgsTask and are written back into the project (annotations.py)."""

from __future__ import annotations

from qgis.core import (Qgis, QgsApplication, QgsCoordinateTransform, QgsCoordinateReferenceSystem,
                       QgsMapLayerProxyModel, QgsProject, QgsRasterLayer, QgsRectangle)
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QAbstractItemView, QCheckBox, QFormLayout, QHBoxLayout, QHeaderView,
                                 QLabel, QLineEdit, QListWidget, QListWidgetItem, QPlainTextEdit,
                                 QProgressBar, QPushButton, QTableView, QTabWidget, QVBoxLayout,
                                 QWidget)

from ..annotations import answers_of
from ..dates import layer_date, order_by_date
from ..settings import PluginSettings
from .engine_banner import EngineBanner
from .history import AnswerHistoryModel
from .review_panel import ReviewPanel
from .settings_dialog import SettingsDialog
from .task import DEFAULT_CHANGE_QUESTION, DEFAULT_CLASSIFY_QUESTION, EngineTask, Job

TITLE = "UniRS"
IDLE_ENGINE_TEXT = "Engine: starts with the first question"


def _engine_key(settings: PluginSettings) -> tuple:
    """The settings that choose the engine (a change restarts the worker)."""
    return settings.mode, settings.model_dir, settings.python, settings.device


def _raster_combo() -> QgsMapLayerComboBox:
    combo = QgsMapLayerComboBox()
    combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
    return combo


class UniRSDockWidget(QgsDockWidget):
    """Dock with three tabs (Ask / Change / Sequence), extent and clue options, progress + Cancel,
    the last answer and the per-layer history of answers."""

    def __init__(self, iface, parent=None):
        super().__init__(TITLE, parent)
        self.setObjectName("UniRSDockWidget")
        self.iface = iface
        self.task: EngineTask | None = None   # a Python reference keeps the running task alive
        self._build()
        self._connect()
        self.refresh_layers()
        self._set_busy(False)
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
        self.question_edit = QPlainTextEdit()
        self.question_edit.setPlaceholderText("e.g. How many buildings are there?")
        self.question_edit.setMaximumHeight(70)
        self.ask_button = QPushButton("Ask")
        ask_page = QWidget()
        ask_form = QFormLayout(ask_page)
        ask_form.addRow("Layer", self.layer_combo)
        ask_form.addRow("Question", self.question_edit)
        ask_form.addRow(self.ask_button)
        self.tabs.addTab(ask_page, "Ask")

        self.before_combo = _raster_combo()
        self.after_combo = _raster_combo()
        self.order_button = QPushButton("Order by date")
        self.instruction_edit = QLineEdit()
        self.instruction_edit.setPlaceholderText("optional: your own instruction")
        self.change_button = QPushButton("Describe change")
        change_page = QWidget()
        change_form = QFormLayout(change_page)
        change_form.addRow("Before", self.before_combo)
        change_form.addRow("After", self.after_combo)
        change_form.addRow("", self.order_button)
        change_form.addRow("Instruction", self.instruction_edit)
        change_form.addRow(self.change_button)
        self.tabs.addTab(change_page, "Change")

        self.stack_list = QListWidget()
        self.stack_list.setToolTip("Tick the frames of the sequence; they are sent oldest first. "
                                   "Whole layers are used.")
        self.classify_button = QPushButton("Classify event")
        stack_page = QWidget()
        stack_layout = QVBoxLayout(stack_page)
        stack_layout.addWidget(self.stack_list)
        stack_layout.addWidget(self.classify_button)
        self.tabs.addTab(stack_page, "Sequence")
        self.review_panel = ReviewPanel(self.iface)
        self.tabs.addTab(self.review_panel, "Review")
        layout.addWidget(self.tabs)

        options = QHBoxLayout()
        self.use_canvas_extent = QCheckBox("Use canvas extent")
        self.use_canvas_extent.setChecked(True)
        self.clue_check = QCheckBox("Clue from base model")
        self.clue_check.setChecked(PluginSettings.load().clue)
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
        self.change_button.clicked.connect(self.describe_change)
        self.classify_button.clicked.connect(self.classify)
        self.cancel_button.clicked.connect(self.cancel)
        self.order_button.clicked.connect(self.order_pair_by_date)
        self.settings_button.clicked.connect(self.open_settings)
        self.clue_check.toggled.connect(self._save_clue)
        self.tabs.currentChanged.connect(self.refresh_history)
        self.layer_combo.layerChanged.connect(self.refresh_history)
        self.after_combo.layerChanged.connect(self.refresh_history)
        self.stack_list.currentItemChanged.connect(self.refresh_history)
        self.history_view.doubleClicked.connect(self._zoom_to_record)
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
        extent, crs = self._extent_for(layer)
        self._start(Job("ask", [layer], question, self._settings(), extent=extent, extent_crs=crs))

    def describe_change(self) -> None:
        before, after = self.before_combo.currentLayer(), self.after_combo.currentLayer()
        if before is None or after is None or before.id() == after.id():
            return self.warn("Pick two different raster layers (before and after).")
        instruction = self.instruction_edit.text().strip() or None
        extent, crs = self._extent_for(before)
        self._start(Job("change", [before, after], instruction or DEFAULT_CHANGE_QUESTION,
                        self._settings(), instruction=instruction, extent=extent, extent_crs=crs))

    def classify(self) -> None:
        frames = order_by_date(self.checked_stack_layers())
        if len(frames) < 2:
            return self.warn("Tick at least two layers of the sequence.")
        self._start(Job("classify", frames, DEFAULT_CLASSIFY_QUESTION, self._settings()))

    def cancel(self) -> None:
        if self.task is not None:
            self.status_label.setText("Cancelling…")
            self.task.cancel()

    def order_pair_by_date(self) -> None:
        pair = [self.before_combo.currentLayer(), self.after_combo.currentLayer()]
        if None in pair:
            return
        before, after = order_by_date(pair)
        self.before_combo.setLayer(before)
        self.after_combo.setLayer(after)

    def open_settings(self) -> None:
        before = self._settings()
        dialog = SettingsDialog(before, self)
        if dialog.exec_() and _engine_key(dialog.settings()) != _engine_key(before):
            self.engine_label.setText(IDLE_ENGINE_TEXT)   # another engine answers the next question
        self.engine_banner.refresh()

    def warn(self, text: str) -> None:
        """Show `text` in the QGIS message bar and in the dock."""
        self.status_label.setText(text)
        if self.iface is not None:
            self.iface.messageBar().pushMessage(TITLE, text, Qgis.Warning, 8)

    # --- task lifecycle ------------------------------------------------------------------------
    def _settings(self) -> PluginSettings:
        settings = PluginSettings.load()
        settings.clue = self.clue_check.isChecked()
        return settings

    def _save_clue(self, checked: bool) -> None:
        settings = PluginSettings.load()
        settings.clue = checked
        settings.save()

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

    def _start(self, job: Job) -> None:
        if self.task is not None:
            return self.warn("UniRS is still answering the previous question.")
        self.task = EngineTask(job)
        self.task.done.connect(self._on_done)
        self.task.progressChanged.connect(self._on_progress)
        self.task.status.connect(self._on_status)
        self._set_busy(True)
        self.status_label.setText(f"Asking: {job.question}")
        QgsApplication.taskManager().addTask(self.task)

    def _on_progress(self, value: float) -> None:
        self.progress.setValue(int(value))

    def _on_status(self, message: str) -> None:
        if self.task is not None:
            self.status_label.setText(f"Working: {message}")

    def _on_done(self) -> None:
        task, self.task = self.task, None
        self._set_busy(False)
        if task.engine_text:
            self.engine_label.setText(f"Engine: {task.engine_text}")
        if task.error:
            self.warn(task.error)
            self.engine_banner.refresh()   # e.g. the engine is not set up: the banner offers the fix
        elif task.record is not None:
            self.status_label.setText(f"{task.record['question']}\n→ {task.record['answer']}")
            self.refresh_history()
        else:
            self.status_label.setText("Cancelled.")

    def _set_busy(self, busy: bool) -> None:
        for button in (self.ask_button, self.change_button, self.classify_button,
                       self.settings_button):
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.progress.setVisible(busy)
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
        """Rebuild the sequence list (date order, ticks kept) and pick a dated before/after pair."""
        rasters = order_by_date(self.raster_layers())
        ticked = {layer.id() for layer in self.checked_stack_layers()}
        self.stack_list.clear()
        for layer in rasters:
            date = layer_date(layer)
            item = QListWidgetItem(f"{layer.name()}  ({date.toString('yyyy-MM-dd')})" if date
                                   else layer.name())
            item.setData(Qt.UserRole, layer.id())
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if layer.id() in ticked else Qt.Unchecked)
            self.stack_list.addItem(item)
        before, after = self.before_combo.currentLayer(), self.after_combo.currentLayer()
        if len(rasters) >= 2 and (before is None or after is None or before.id() == after.id()):
            self.before_combo.setLayer(rasters[0])
            self.after_combo.setLayer(rasters[-1])
        self.refresh_history()

    def history_layer(self) -> QgsRasterLayer | None:
        """The layer whose history is shown: the one in focus on the current tab."""
        page = self.tabs.currentIndex()
        if page == 0:
            return self.layer_combo.currentLayer()
        if page == 1:
            return self.after_combo.currentLayer()
        item = self.stack_list.currentItem()
        if page != 2 or item is None:  # the Review tab has no answer history
            return None
        return QgsProject.instance().mapLayer(item.data(Qt.UserRole))

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
