"""Screenshot of an archive review on the map in a real QGIS desktop, reviewed by the real engine.

    .venv/bin/python scripts/screenshot_archive.py [--model DIR] [--out docs/archive.png]

Writes two dated mosaic pairs (unirs synth-mosaic's writer, the second pair's after mosaic in
EPSG:3857) and a CSV manifest of them, then starts QGIS (qgis.bin, fresh profile, the repo as plugin
"unirs") under Xvfb with this file as its --code script, which runs unirs:review_archive as the toolbox does
(processing.runAndLoadResults), checks that both pairs' reviews loaded styled, shows the first pair's
changed tiles over its after mosaic with the toolbox open on the algorithm, and grabs the main window.
Without --model the engine's default model is used. The work folder is removed unless something failed.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

INSIDE = "UNIRS_ARCHIVE_SCREENSHOT_WORKDIR"   # set for the copy of this file QGIS runs
MANIFEST = "UNIRS_ARCHIVE_SCREENSHOT_MANIFEST"  # the manifest the driver wrote (QGIS's Python has no tqdm)
REPO = Path(os.environ.get("UNIRS_SCREENSHOT_REPO") or Path(__file__).resolve().parents[1])
PAIRS = {"harbour_2019_2023": dict(seed=3), "airport_2019_2023": dict(seed=4, after_crs="EPSG:3857")}


# --- inside: runs in the QGIS desktop's Python (qgis.bin --code) ------------------------------------
def run_inside_qgis(workdir: Path) -> None:
    import processing
    import qgis.utils
    from qgis.core import QgsGraduatedSymbolRenderer, QgsProject, QgsVectorLayer
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface

    if not (qgis.utils.loadPlugin(PLUGIN_NAME) and qgis.utils.startPlugin(PLUGIN_NAME)):
        return qgis_desktop.finish(workdir, {"ok": False, "errors": ["the plugin did not start"]})
    window = iface.mainWindow()
    window.resize(*WINDOW)
    manifest = Path(os.environ[MANIFEST])
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    first_after = iface.addRasterLayer(rows[0]["after"], Path(rows[0]["after"]).stem)
    status: dict = {"ok": False, "errors": [], "outputs": {}}

    def run() -> None:
        result = processing.runAndLoadResults("unirs:review_archive", {
            "MANIFEST": str(manifest), "OUTPUT_FOLDER": str(workdir / "reviews"), "TILE_SIZE": 256})
        status["result"] = {k: v for k, v in result.items() if k != "OUTPUT_FOLDER"}
        for layer in QgsProject.instance().mapLayers().values():
            if isinstance(layer, QgsVectorLayer):
                status["outputs"][layer.name()] = layer.featureCount()
                if not isinstance(layer.renderer(), QgsGraduatedSymbolRenderer):
                    status["errors"].append(f"'{layer.name()}' is not styled by score")
        if sorted(status["outputs"]) != sorted(f"{name} changes" for name in PAIRS):
            status["errors"].append(f"expected one review layer per pair, got {status['outputs']}")
        toolbox = qgis.utils.plugins["processing"].toolbox    # the user's way in: Processing ▸ Toolbox
        toolbox.setVisible(True)
        toolbox.searchBox.setText("archive")
        iface.mapCanvas().setExtent(first_after.extent())
        iface.mapCanvas().refreshAllLayers()
        iface.messageBar().clearWidgets()
        QTimer.singleShot(2500, grab)   # let the canvas draw the tiles

    def grab() -> None:
        save_window(window, status)
        qgis_desktop.finish(workdir, status)

    QTimer.singleShot(1000, lambda: qgis_desktop.guarded(lambda _: run(), workdir))


sys.path.insert(0, str(REPO / "scripts"))
from screenshot_dock import PLUGIN_NAME, WINDOW, launch, save_window  # noqa: E402 (needs the path)


def write_archive(folder: Path) -> Path:
    """The driver's part: the mosaic pairs and their manifest (absolute paths)."""
    from unirs_engine.data.synthetic.mosaic import write_mosaic_pair

    rows = []
    for name, options in PAIRS.items():
        before, after = write_mosaic_pair(folder / name, size=1024, tile=256, **options)
        rows.append({"name": name, "before": str(before), "after": str(after)})
    manifest = folder / "archive.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


if os.environ.get(INSIDE):
    import qgis_desktop

    qgis_desktop.guarded(run_inside_qgis, Path(os.environ[INSIDE]))
elif __name__ == "__main__":
    mosaics = Path(tempfile.mkdtemp(prefix="unirs-archive-mosaics-"))
    try:
        os.environ[MANIFEST] = str(write_archive(mosaics))   # launch() passes the environment on
        sys.exit(launch(Path(__file__).resolve(), INSIDE, REPO / "docs" / "archive.png"))
    finally:
        shutil.rmtree(mosaics, ignore_errors=True)
