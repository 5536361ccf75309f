"""A small dialog for the engine settings (model, worker interpreter, device, mode, answers file)."""

from __future__ import annotations

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout

from ..settings import DEVICES, MODES, PluginSettings


class SettingsDialog(QDialog):
    """Edits a copy of `settings`; accept() saves it (the engine restarts with the next question)."""

    def __init__(self, settings: PluginSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("UniRS settings")
        self._clue = settings.clue      # edited in the dock itself

        self.model_dir = QgsFileWidget()
        self.model_dir.setStorageMode(QgsFileWidget.GetDirectory)
        self.model_dir.setFilePath(settings.model_dir)
        self.model_dir.lineEdit().setPlaceholderText("default: the embedded demo model")
        self.python = QgsFileWidget()
        self.python.setFilePath(settings.python)
        self.python.lineEdit().setPlaceholderText("default: UNIRS_ENGINE_PYTHON or the plugin's .venv")
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
        self.answers_gpkg.lineEdit().setPlaceholderText("default: unirs_answers.gpkg beside the project")

        form = QFormLayout(self)
        form.addRow("Model directory", self.model_dir)
        form.addRow("Worker Python", self.python)
        form.addRow("Device", self.device)
        form.addRow("Engine mode", self.mode)
        form.addRow("Answers GeoPackage", self.answers_gpkg)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def settings(self) -> PluginSettings:
        """The settings as edited (not saved)."""
        return PluginSettings(model_dir=self.model_dir.filePath().strip(),
                              python=self.python.filePath().strip(),
                              device=self.device.currentText(), mode=self.mode.currentText(),
                              clue=self._clue, answers_gpkg=self.answers_gpkg.filePath().strip())

    def accept(self) -> None:
        self.settings().save()
        super().accept()
