"""The QGIS plugin object: registers the Processing provider and (with a GUI) the dock, its toggle and
the Raster ▸ UniRS menu (panel, Set up engine…, Settings…, Help, About)."""

from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices, QIcon
from qgis.PyQt.QtWidgets import QAction, QMessageBox

from unirs_qgis import ICON_PATH
from unirs_qgis.about import about_text, help_url
from unirs_qgis.engine_link import shutdown_client
from unirs_qgis.provider import UniRSProvider
from unirs_qgis.temp_files import sweep_stale

MENU = "&UniRS"


class UniRSPlugin:
    """classFactory's product. Under qgis_process iface is None and only initProcessing runs."""

    def __init__(self, iface):
        self.iface = iface
        self.provider: UniRSProvider | None = None
        self.action: QAction | None = None
        self.menu_actions: list[QAction] = []   # in Raster ▸ UniRS besides the panel toggle
        self.dock = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS hook)
        if self.provider is None:  # QGIS may call this and then initGui (which calls it again)
            sweep_stale()          # exports left by a QGIS that was killed (also under qgis_process)
            self.provider = UniRSProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS hook)
        self.initProcessing()
        self.action = QAction(QIcon(ICON_PATH), "UniRS", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.setToolTip("Show the UniRS panel: ask about layers, describe changes")
        self.action.toggled.connect(self.show_dock)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.iface.addToolBarIcon(self.action)
        for text, tip, slot in (
                ("Set up engine…", "Install or update the engine's Python environment (torch, transformers, "
                                   "rasterio…) in your user data folder", self.set_up_engine),
                ("Settings…", "Model, clue model, engine Python, device; Test engine", self.open_settings),
                ("Help", "The UniRS documentation", self.open_help),
                ("About UniRS…", "Version, model and device", self.show_about)):
            action = QAction(text, self.iface.mainWindow())
            action.setToolTip(tip)
            action.triggered.connect(slot)
            self.iface.addPluginToRasterMenu(MENU, action)
            self.menu_actions.append(action)
        self._create_dock()   # registered now, hidden: View ▸ Panels lists it from the start

    def _create_dock(self) -> None:
        from unirs_qgis.dock.widget import UniRSDockWidget

        self.dock = UniRSDockWidget(self.iface, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.dock.visibilityChanged.connect(self.action.setChecked)

    def show_dock(self, visible: bool = True) -> None:
        if self.dock is None:   # unload() ran: nothing to show
            return
        self.dock.setVisible(visible)
        if visible:
            self.dock.raise_()

    def set_up_engine(self) -> None:
        """Open the panel and run the setup there (its banner shows progress and Cancel)."""
        self.show_dock(True)
        self.dock.engine_banner.start_setup()

    def open_settings(self) -> None:
        self.show_dock(True)
        self.dock.open_settings()

    def open_help(self) -> None:
        QDesktopServices.openUrl(QUrl(help_url()))

    def show_about(self) -> None:
        QMessageBox.about(self.iface.mainWindow(), "About UniRS", about_text())

    def unload(self) -> None:
        if self.dock is not None:
            self.dock.cancel()  # a running task must not outlive the widgets it reports to
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        for action in self.menu_actions:
            self.iface.removePluginRasterMenu(MENU, action)
        self.menu_actions.clear()
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        shutdown_client()
