"""Screenshot of Processing outputs on the map in a real QGIS desktop, answered by the real engine.

    .venv/bin/python scripts/screenshot_processing.py [--model DIR] [--out docs/processing.png]

Renders the dock screenshot's dated pair of synthetic scenes (screenshot_dock.write_scenes), starts
QGIS (qgis.bin, fresh profile, the repo as plugin "unirs") under Xvfb with this file as its --code
script, which runs unirs:describe_change over the whole pair and unirs:ask over a corner of it as the
toolbox does (processing.runAndLoadResults), checks the loaded outputs are outlined and labelled,
opens the Processing toolbox on the UniRS algorithms and grabs the main window. Without --model the
engine's default model is used. The work folder is removed unless something failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

INSIDE = "UNIRS_PROCESSING_SCREENSHOT_WORKDIR"   # set for the copy of this file QGIS runs
REPO = Path(os.environ.get("UNIRS_SCREENSHOT_REPO") or Path(__file__).resolve().parents[1])
QUESTION = "How many buildings are there?"


# --- inside: runs in the QGIS desktop's Python (qgis.bin --code) ------------------------------------
def run_inside_qgis(workdir: Path) -> None:
    import processing
    import qgis.utils
    from qgis.core import QgsProject, QgsRectangle, QgsVectorLayer
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface

    if not (qgis.utils.loadPlugin(PLUGIN_NAME) and qgis.utils.startPlugin(PLUGIN_NAME)):
        return qgis_desktop.finish(workdir, {"ok": False, "errors": ["the plugin did not start"]})
    window = iface.mainWindow()
    window.resize(*WINDOW)
    before, after = (iface.addRasterLayer(str(p), p.stem) for p in sorted(workdir.glob("site_*.tif")))
    whole = after.extent()
    iface.mapCanvas().setExtent(whole)
    corner = QgsRectangle(whole.xMinimum(), whole.yMinimum(), whole.center().x(), whole.center().y())
    status: dict = {"ok": False, "errors": [], "outputs": {}}

    def run() -> None:
        processing.runAndLoadResults("unirs:describe_change", {
            "BEFORE": before, "AFTER": after, "OUTPUT": str(workdir / "change.gpkg")})
        processing.runAndLoadResults("unirs:ask", {
            "INPUT": after, "QUESTION": QUESTION, "OUTPUT": str(workdir / "ask.gpkg"),
            "EXTENT": f"{corner.xMinimum()},{corner.xMaximum()},{corner.yMinimum()},{corner.yMaximum()} "
                      "[EPSG:32633]"})
        for layer in QgsProject.instance().mapLayers().values():
            if isinstance(layer, QgsVectorLayer):
                feature = next(layer.getFeatures())
                text = feature["caption"] if "caption" in layer.fields().names() else feature["answer"]
                status["outputs"][layer.name()] = text
                text_format = layer.labeling().settings().format()   # kept: buffer() points into it
                if not (layer.labelsEnabled() and text_format.buffer().enabled()):
                    status["errors"].append(f"output '{layer.name()}' is not labelled")
        if len(status["outputs"]) != 2:
            status["errors"].append(f"expected two loaded outputs, got {status['outputs']}")
        toolbox = qgis.utils.plugins["processing"].toolbox    # the user's way in: Processing ▸ Toolbox
        toolbox.setVisible(True)
        toolbox.searchBox.setText("unirs")
        iface.mapCanvas().setExtent(whole)
        iface.mapCanvas().refreshAllLayers()
        iface.messageBar().clearWidgets()
        QTimer.singleShot(2500, grab)   # let the canvas draw the outlines and labels

    def grab() -> None:
        save_window(window, status)
        qgis_desktop.finish(workdir, status)

    QTimer.singleShot(1000, lambda: qgis_desktop.guarded(lambda _: run(), workdir))


sys.path.insert(0, str(REPO / "scripts"))
from screenshot_dock import PLUGIN_NAME, WINDOW, launch, save_window  # noqa: E402 (needs the path)

if os.environ.get(INSIDE):
    import qgis_desktop

    qgis_desktop.guarded(run_inside_qgis, Path(os.environ[INSIDE]))
elif __name__ == "__main__":
    sys.exit(launch(Path(__file__).resolve(), INSIDE, REPO / "docs" / "processing.png"))
