"""Screenshot of the UniRS dock in a real QGIS desktop, answering through the real engine.

    .venv/bin/python scripts/screenshot_dock.py [--model DIR] [--out docs/dock.png]

Renders a dated before/after pair of synthetic scenes (unirs_engine.data.synthetic) to GeoTIFFs,
starts QGIS (qgis.bin, fresh profile, the repo as plugin "unirs" on QGIS_PLUGINPATH) under Xvfb with
this same file as its --code script, which starts the plugin, opens its dock, describes the change,
asks a question and grabs the main window. Without --model the engine's default model is used
(UNIRS_MODEL, else the embedded demo model). The work folder is removed unless something failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

INSIDE = "UNIRS_SCREENSHOT_WORKDIR"   # set for the copy of this file QGIS runs
# QGIS runs --code files without __file__: the driver passes the repository along
REPO = Path(os.environ.get("UNIRS_SCREENSHOT_REPO") or Path(__file__).resolve().parents[1])
PLUGIN_NAME = "unirs"
QUESTION = "How many buildings are there?"
SCENE_PIXELS, PIXEL_M = 512, 1.0
WINDOW = (1500, 940)
TIMEOUT_S = 600


# --- outside: the driver, run with the repo venv ----------------------------------------------------
def write_scenes(folder: Path) -> list[Path]:
    """A construction event rendered before/after, as GeoTIFFs with the dates in their names."""
    import numpy as np
    from rasterio.transform import from_origin

    from unirs_engine.data.synthetic.events import make_pair
    from unirs_engine.data.synthetic.render import finish, render, write_geotiff

    rng = np.random.default_rng(7)
    before, change = make_pair(rng, "construction")
    transform = from_origin(500_000.0, 4_500_000.0, PIXEL_M, PIXEL_M)
    paths = []
    for scene, date in ((before, "2019-05-14"), (change.after, "2023-06-02")):
        rgb = finish(render(scene, SCENE_PIXELS), rng)                  # (H, W, 3) uint8
        paths.append(write_geotiff(folder / f"site_{date}.tif", rgb, "EPSG:32633", transform))
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: the engine's default model)")
    parser.add_argument("--out", default=str(REPO / "docs" / "dock.png"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="unirs-screenshot-"))
    write_scenes(workdir)
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / PLUGIN_NAME).symlink_to(REPO, target_is_directory=True)
    env = {**os.environ, INSIDE: str(workdir), "UNIRS_SCREENSHOT_OUT": str(Path(args.out).resolve()),
           "UNIRS_SCREENSHOT_REPO": str(REPO), "QGIS_PLUGINPATH": str(plugins)}
    if args.model:
        env["UNIRS_MODEL"] = str(Path(args.model).resolve())
    return run_qgis_desktop(Path(__file__).resolve(), workdir, env, WINDOW, TIMEOUT_S)


# --- inside: runs in the QGIS desktop's Python (qgis.bin --code) ------------------------------------
def run_inside_qgis(workdir: Path) -> None:
    import qgis.utils
    from qgis.core import QgsRectangle
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface

    # the plugin is loaded the way QGIS loads it: from QGIS_PLUGINPATH, via classFactory
    if not (qgis.utils.loadPlugin(PLUGIN_NAME) and qgis.utils.startPlugin(PLUGIN_NAME)):
        return qgis_desktop.finish(workdir, {"ok": False, "errors": ["the plugin did not start"]})
    plugin = qgis.utils.plugins[PLUGIN_NAME]
    from unirs_qgis.settings import PluginSettings   # importable once the plugin started

    PluginSettings(answers_gpkg=str(workdir / "answers.gpkg")).save()
    window = iface.mainWindow()
    window.resize(*WINDOW)
    _, after = (iface.addRasterLayer(str(p), p.stem) for p in sorted(workdir.glob("site_*.tif")))
    canvas = iface.mapCanvas()
    whole = after.extent()
    canvas.setExtent(whole)
    plugin.action.setChecked(True)            # the toolbar button: creates and shows the dock
    dock = plugin.dock
    dock.setMinimumWidth(430)
    status = {"ok": False, "answers": [], "errors": []}
    lower_half = QgsRectangle(whole.xMinimum(), whole.yMinimum(), whole.xMaximum(), whole.center().y())
    steps = [lambda: (dock.tabs.setCurrentIndex(1), dock.change_button.click()),
             lambda: (canvas.setExtent(lower_half), dock.tabs.setCurrentIndex(0),
                      dock.layer_combo.setLayer(after), dock.question_edit.setPlainText(QUESTION),
                      dock.ask_button.click())]
    launched: list = []
    timer = QTimer()
    elapsed = {"ms": 0}

    def finish(ok: bool) -> None:
        status["ok"] = ok
        qgis_desktop.finish(workdir, status)

    def grab() -> None:
        out = Path(os.environ["UNIRS_SCREENSHOT_OUT"])
        partial = out.with_suffix(".part.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        if window.grab().save(str(partial), "PNG"):
            os.replace(partial, out)
            status["png"] = str(out)
        finish(bool(status.get("png")) and not status["errors"])

    def tick() -> None:
        elapsed["ms"] += 250
        if elapsed["ms"] > TIMEOUT_S * 1000:
            status["errors"].append("timed out waiting for the engine")
            timer.stop()
            return finish(False)
        if dock.is_busy():
            return
        if launched:   # every step records one answer on the after layer, shown in the history
            ok = dock.history_model.rowCount() == len(launched)
            status["answers" if ok else "errors"].append(dock.status_label.text())
            status["engine"] = dock.engine_label.text()
        if steps and not status["errors"]:
            launched.append(steps.pop(0))
            launched[-1]()
            return
        timer.stop()
        canvas.setExtent(whole)
        canvas.refreshAllLayers()
        QTimer.singleShot(2000, grab)   # let the canvas draw the notes and labels

    timer.timeout.connect(tick)
    timer.start(250)
    run_inside_qgis.keep = (dock, timer, steps)   # QGIS drops the script's locals after it runs


if os.environ.get(INSIDE):
    sys.path.insert(0, str(REPO / "scripts"))
    import qgis_desktop

    qgis_desktop.guarded(run_inside_qgis, Path(os.environ[INSIDE]))
elif __name__ == "__main__":
    from qgis_desktop import run_qgis_desktop

    sys.exit(main())
