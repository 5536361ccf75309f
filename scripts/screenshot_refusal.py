"""Screenshot of a refused question in a real QGIS desktop: the engine says there is no data to answer
about instead of answering with confidence.

    .venv/bin/python scripts/screenshot_refusal.py [--model DIR] [--out docs/refusal.png]

Renders the dock screenshot's dated pair of synthetic scenes (screenshot_dock.write_scenes), starts
QGIS (qgis.bin, fresh profile, the repo as plugin "unirs") under Xvfb with this file as its --code
script, which writes a copy of the after scene whose lower three quarters have no data (a cloud mask,
a strip outside the acquisition), zooms to its lower half, asks about it from the dock and grabs the
main window with the refusal in the message bar. Without --model the engine's default model is used. The work
folder is removed unless something failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

INSIDE = "UNIRS_REFUSAL_SCREENSHOT_WORKDIR"   # set for the copy of this file QGIS runs
REPO = Path(os.environ.get("UNIRS_SCREENSHOT_REPO") or Path(__file__).resolve().parents[1])
QUESTION = "How many buildings are there?"
NODATA = 0


def write_masked(scene: Path, out: Path) -> Path:
    """A copy of `scene` whose lower three quarters are nodata (GDAL-written, nodata = 0)."""
    from osgeo import gdal

    copy = gdal.Translate(str(out), str(scene), noData=NODATA)
    for index in range(1, copy.RasterCount + 1):
        band = copy.GetRasterBand(index)
        pixels = band.ReadAsArray()                        # (H, W)
        pixels[pixels.shape[0] // 4:] = NODATA
        band.WriteArray(pixels)
    copy = None   # closes and flushes the file
    return out


# --- inside: runs in the QGIS desktop's Python (qgis.bin --code) ------------------------------------
def run_inside_qgis(workdir: Path) -> None:
    import qgis.utils
    from qgis.core import QgsRectangle
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface

    if not (qgis.utils.loadPlugin(PLUGIN_NAME) and qgis.utils.startPlugin(PLUGIN_NAME)):
        return qgis_desktop.finish(workdir, {"ok": False, "errors": ["the plugin did not start"]})
    plugin = qgis.utils.plugins[PLUGIN_NAME]
    window = iface.mainWindow()
    window.resize(*WINDOW)
    after = sorted(workdir.glob("site_*.tif"))[-1]
    masked = write_masked(after, workdir / f"{after.stem}_cloud-masked.tif")
    layer = iface.addRasterLayer(str(masked), masked.stem)
    whole = layer.extent()
    lower_half = QgsRectangle(whole.xMinimum(), whole.yMinimum(), whole.xMaximum(), whole.center().y())
    plugin.action.setChecked(True)
    dock = plugin.dock
    dock.setMinimumWidth(430)
    dock.tabs.setCurrentIndex(0)
    dock.layer_combo.setLayer(layer)
    dock.use_canvas_extent.setChecked(True)
    status: dict = {"ok": False, "errors": []}
    timer = QTimer()

    def ask() -> None:   # once the window is laid out: the canvas keeps the extent it is given
        iface.mapCanvas().setExtent(lower_half)
        iface.mapCanvas().refresh()
        iface.messageBar().clearWidgets()
        dock.question_edit.setPlainText(QUESTION)
        dock.ask_button.click()
        timer.start(250)

    def tick() -> None:
        if dock.is_busy():
            return
        timer.stop()
        shown = [item.text() for item in iface.messageBar().items()]
        status["message_bar"] = shown
        status["dock_status"] = dock.status_label.text()
        if not any("have data" in text for text in shown):
            status["errors"].append(f"no refusal in the message bar: {shown}")
        if dock.history_model.rowCount():
            status["errors"].append("an answer was recorded about an area without data")
        iface.mapCanvas().setExtent(whole)   # the masked half in view beside the half with data
        iface.mapCanvas().refresh()
        QTimer.singleShot(1500, lambda: qgis_desktop.guarded(lambda _: grab(), workdir))

    def grab() -> None:
        save_window(window, status)
        qgis_desktop.finish(workdir, status)

    # every step guarded: an exception in a slot would leave a headless QGIS waiting forever
    timer.timeout.connect(lambda: qgis_desktop.guarded(lambda _: tick(), workdir))
    QTimer.singleShot(1000, lambda: qgis_desktop.guarded(lambda _: ask(), workdir))
    run_inside_qgis.keep = (dock, timer)   # QGIS drops the script's locals after it runs


sys.path.insert(0, str(REPO / "scripts"))
from screenshot_dock import PLUGIN_NAME, WINDOW, launch, save_window  # noqa: E402 (needs the path)

if os.environ.get(INSIDE):
    import qgis_desktop

    qgis_desktop.guarded(run_inside_qgis, Path(os.environ[INSIDE]))
elif __name__ == "__main__":
    sys.exit(launch(Path(__file__).resolve(), INSIDE, REPO / "docs" / "refusal.png"))
