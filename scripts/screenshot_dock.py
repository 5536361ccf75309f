"""Screenshot of the UniRS dock in a real QGIS desktop, answering through the real engine.

    .venv/bin/python scripts/screenshot_dock.py [--model DIR] [--out docs/dock.png]

Renders a dated before/after pair of synthetic scenes (unirs_engine.data.synthetic) to GeoTIFFs,
starts QGIS (qgis.bin, fresh profile, the repo as plugin "unirs" on QGIS_PLUGINPATH) under Xvfb with
this same file as its --code script, which starts the plugin, checks View ▸ Panels lists its dock,
opens the dock, describes the change of the whole scene, asks two questions about its lower half and
grabs the main window: two notes on the map (the two answers listed in one), the footprints outlined.
Without --model the engine's default model is used (UNIRS_MODEL, else the embedded demo model). The
work folder is removed unless something failed.
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
QUESTIONS = ("Is there a water area?", "Is it a rural or an urban area?")
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


def launch(script: Path, inside: str, default_out: Path) -> int:
    """The driver of a screenshot of the dated scenes: parse --model/--out, write the scenes into a
    work folder, link the repo as plugin "unirs" and run `script` in QGIS with `inside` set to it."""
    from qgis_desktop import run_qgis_desktop

    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: the engine's default model)")
    parser.add_argument("--out", default=str(default_out))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="unirs-screenshot-"))
    write_scenes(workdir)
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / PLUGIN_NAME).symlink_to(REPO, target_is_directory=True)
    env = {**os.environ, inside: str(workdir), "UNIRS_SCREENSHOT_OUT": str(Path(args.out).resolve()),
           "UNIRS_SCREENSHOT_REPO": str(REPO), "QGIS_PLUGINPATH": str(plugins)}
    if args.model:
        env["UNIRS_MODEL"] = str(Path(args.model).resolve())
    return run_qgis_desktop(script, workdir, env, WINDOW, TIMEOUT_S)


def save_window(window, status: dict) -> None:
    """Inside QGIS: the main window to UNIRS_SCREENSHOT_OUT (written whole, then moved), unless
    something failed (the committed screenshot stays); sets status["png"] and status["ok"]."""
    import qgis_desktop   # (also when another screenshot script imports this function)

    out = Path(os.environ["UNIRS_SCREENSHOT_OUT"])
    if not status["errors"] and qgis_desktop.grab_window(window, out):
        status["png"] = str(out)
    status["ok"] = bool(status.get("png")) and not status["errors"]


# --- inside: runs in the QGIS desktop's Python (qgis.bin --code) ------------------------------------
def run_inside_qgis(workdir: Path) -> None:
    import qgis.utils
    from qgis.core import QgsProject, QgsRectangle
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QDockWidget
    from qgis.utils import iface

    # the plugin is loaded the way QGIS loads it: from QGIS_PLUGINPATH, via classFactory
    if not (qgis.utils.loadPlugin(PLUGIN_NAME) and qgis.utils.startPlugin(PLUGIN_NAME)):
        return qgis_desktop.finish(workdir, {"ok": False, "errors": ["the plugin did not start"]})
    plugin = qgis.utils.plugins[PLUGIN_NAME]
    from unirs_qgis.settings import PluginSettings   # importable once the plugin started

    PluginSettings().save()                   # answers go to the project's own store
    window = iface.mainWindow()
    window.resize(*WINDOW)
    status = {"ok": False, "answers": [], "errors": []}
    panels = [a.text() for a in window.createPopupMenu().actions()]   # View ▸ Panels, before first use
    if window.findChild(QDockWidget, "UniRSDockWidget") is None or "UniRS Panel" not in panels:
        status["errors"].append(f"the UniRS panel is not registered at start-up; panels: {panels}")
    _, after = (iface.addRasterLayer(str(p), p.stem) for p in sorted(workdir.glob("site_*.tif")))
    canvas = iface.mapCanvas()
    whole = after.extent()
    canvas.setExtent(whole)
    plugin.action.setChecked(True)            # the toolbar button: shows the dock
    dock = plugin.dock
    dock.setMinimumWidth(430)
    lower_half = QgsRectangle(whole.xMinimum(), whole.yMinimum(), whole.xMaximum(), whole.center().y())

    def ask(question: str) -> None:
        dock.question_edit.setPlainText(question)
        dock.ask_button.click()

    steps = [lambda: (dock.tabs.setCurrentIndex(1), dock.change_button.click()),
             lambda: (canvas.setExtent(lower_half), dock.tabs.setCurrentIndex(0),
                      dock.layer_combo.setLayer(after), ask(QUESTIONS[0])),
             lambda: ask(QUESTIONS[1])]
    launched: list = []
    timer = QTimer()
    elapsed = {"ms": 0}

    def grab() -> None:
        save_window(window, status)
        qgis_desktop.finish(workdir, status)

    def tick() -> None:
        elapsed["ms"] += 250
        if elapsed["ms"] > TIMEOUT_S * 1000:
            status["errors"].append("timed out waiting for the engine")
            timer.stop()
            return qgis_desktop.finish(workdir, status)
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
        notes = [layer for layer in QgsProject.instance().mapLayers().values() if layer.name() == "UniRS notes"]
        status["notes"] = [item.text() for item in notes[0].items().values()] if notes else []
        if len(status["notes"]) != 2:
            status["errors"].append(f"expected two notes (one listing both answers): {status['notes']}")
        canvas.setExtent(whole)
        canvas.refreshAllLayers()
        iface.messageBar().clearWidgets()   # QGIS's own "Task complete" notices would cover the map
        QTimer.singleShot(2000, grab)   # let the canvas draw the notes and labels

    timer.timeout.connect(tick)
    timer.start(250)
    run_inside_qgis.keep = (dock, timer, steps)   # QGIS drops the script's locals after it runs


if os.environ.get(INSIDE):
    sys.path.insert(0, str(REPO / "scripts"))
    import qgis_desktop

    qgis_desktop.guarded(run_inside_qgis, Path(os.environ[INSIDE]))
elif __name__ == "__main__":
    sys.exit(launch(Path(__file__).resolve(), INSIDE, REPO / "docs" / "dock.png"))
