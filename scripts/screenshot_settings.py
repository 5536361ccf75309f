"""Screenshot of the UniRS settings dialog in a real QGIS desktop, telling what the model folder holds.

    .venv/bin/python scripts/screenshot_settings.py [--model DIR] [--out docs/settings.png]

Starts QGIS (qgis.bin, fresh profile, the repo as plugin "unirs") under Xvfb with this file as its
--code script, which opens the dock's settings dialog with the Model directory left empty (the
engine's default model: UNIRS_MODEL, else the embedded demo model, or --model) and the device on
auto, and grabs the dialog: the model's tasks, parameters, expected memory on the CPU and a GPU,
thresholds. No torch is loaded: the panel reads config files and safetensors headers. The work
folder is removed unless something failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

INSIDE = "UNIRS_SETTINGS_SCREENSHOT_WORKDIR"   # set for the copy of this file QGIS runs
REPO = Path(os.environ.get("UNIRS_SCREENSHOT_REPO") or Path(__file__).resolve().parents[1])


# --- inside: runs in the QGIS desktop's Python (qgis.bin --code) ------------------------------------
def run_inside_qgis(workdir: Path) -> None:
    import qgis.utils
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface

    if not (qgis.utils.loadPlugin(PLUGIN_NAME) and qgis.utils.startPlugin(PLUGIN_NAME)):
        return qgis_desktop.finish(workdir, {"ok": False, "errors": ["the plugin did not start"]})
    plugin = qgis.utils.plugins[PLUGIN_NAME]
    from unirs_qgis.dock.settings_dialog import SettingsDialog   # importable once the plugin started
    from unirs_qgis.settings import PluginSettings

    PluginSettings().save()                   # the default model, device auto
    iface.mainWindow().resize(*WINDOW)
    plugin.action.setChecked(True)            # the dock, the dialog's parent as when Settings… opens it
    dialog = SettingsDialog(PluginSettings.load(), plugin.dock)
    dialog.show()
    status: dict = {"ok": False, "errors": [], "panel": dialog.model_info.text()}
    if "#b00020" in dialog.model_info.styleSheet():
        status["errors"].append(f"the default model is refused: {dialog.model_info.text()}")

    def grab() -> None:
        dialog.adjustSize()                   # the height the panel's wrapped lines need
        QTimer.singleShot(500, lambda: qgis_desktop.guarded(lambda _: save(), workdir))

    def save() -> None:
        save_window(dialog, status)
        qgis_desktop.finish(workdir, status)

    QTimer.singleShot(1500, lambda: qgis_desktop.guarded(lambda _: grab(), workdir))
    run_inside_qgis.keep = (dialog,)          # QGIS drops the script's locals after it runs


sys.path.insert(0, str(REPO / "scripts"))
from screenshot_dock import PLUGIN_NAME, WINDOW, launch, save_window  # noqa: E402 (needs the path)

if os.environ.get(INSIDE):
    import qgis_desktop

    qgis_desktop.guarded(run_inside_qgis, Path(os.environ[INSIDE]))
elif __name__ == "__main__":
    sys.exit(launch(Path(__file__).resolve(), INSIDE, REPO / "docs" / "settings.png"))
