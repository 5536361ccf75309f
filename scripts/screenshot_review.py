"""Screenshot of the dock's Review tab mid-review in a real QGIS desktop: two dated synthetic mosaics
reviewed by the engine's default model (the embedded demo model unless UNIRS_MODEL says otherwise),
two tiles judged, the current tile outlined over the after image.

    .venv/bin/python scripts/screenshot_review.py [--out docs/review.png]

Runs QGIS (qgis.bin, fresh profile, this repository as plugin "unirs") under Xvfb with this file as
its --code script; the engine runs in this repository's .venv. The work folder is removed unless
something failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

INSIDE = "UNIRS_REVIEW_SCREENSHOT_WORKDIR"   # set for the copy of this file QGIS runs
REPO = Path(os.environ.get("UNIRS_SCREENSHOT_REPO") or Path(__file__).resolve().parents[1])
WINDOW = (1500, 940)
TIMEOUT_S = 900


# --- outside: the driver, run with the repo venv ----------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "review.png"))
    args = parser.parse_args()
    from unirs_engine.data.synthetic.mosaic import write_mosaic_pair

    workdir = Path(tempfile.mkdtemp(prefix="unirs-review-shot-"))
    write_mosaic_pair(workdir / "mosaics", size=1024, tile=256, seed=3)
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / "unirs").symlink_to(REPO, target_is_directory=True)
    env = {**os.environ, INSIDE: str(workdir), "UNIRS_SCREENSHOT_OUT": str(Path(args.out).resolve()),
           "UNIRS_SCREENSHOT_REPO": str(REPO), "QGIS_PLUGINPATH": str(plugins),
           "UNIRS_HOME": str(workdir / "unirs-home")}
    return run_qgis_desktop(Path(__file__).resolve(), workdir, env, WINDOW, TIMEOUT_S)


# --- inside: runs in the QGIS desktop's Python (qgis.bin --code) ------------------------------------
def run_inside_qgis(workdir: Path) -> None:
    import qgis.utils
    from qgis.core import QgsApplication, QgsProject
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface

    if not (qgis.utils.loadPlugin("unirs") and qgis.utils.startPlugin("unirs")):
        return qgis_desktop.finish(workdir, {"ok": False, "errors": ["the plugin did not start"]})
    plugin = qgis.utils.plugins["unirs"]
    import processing

    window = iface.mainWindow()
    window.resize(*WINDOW)
    project = QgsProject.instance()
    project.setFileName(str(workdir / "review.qgz"))   # the review's default output goes beside it
    before, after = (iface.addRasterLayer(str(p), p.stem) for p in sorted((workdir / "mosaics").glob("*_20*.tif"),
                                                                          key=lambda p: p.name.startswith("after")))
    status: dict = {"ok": False, "errors": []}
    # The output the algorithm's dialog offers by default: review_<before>_<after>.gpkg beside the project.
    dialog_alg = QgsApplication.processingRegistry().createAlgorithmById("unirs:review_changes")
    result = processing.runAndLoadResults("unirs:review_changes", {
        "BEFORE": before.id(), "AFTER": after.id(), "TILE_SIZE": 256,
        "OUTPUT": dialog_alg.parameterDefinition("OUTPUT").defaultValue()})
    status["review"] = {k: v for k, v in result.items() if k != "OUTPUT"}
    plugin.action.setChecked(True)
    dock = plugin.dock
    dock.setMinimumWidth(460)
    dock.tabs.setCurrentWidget(dock.review_panel)
    panel = dock.review_panel
    steps = [lambda: panel.confirm_button.click(), lambda: panel.reject_button.click(),
             lambda: panel.flicker_button.click(),   # shows the after image under the current tile
             lambda: None, lambda: None]              # two ticks: the canvas draws the imagery
    timer = QTimer()

    def tick() -> None:
        if panel.layer is None:
            status["errors"].append("the review was not loaded in the Review tab")
            status["layers"] = [lyr.source() for lyr in project.mapLayers().values()]
        elif steps:
            return steps.pop(0)()
        timer.stop()
        out = Path(os.environ["UNIRS_SCREENSHOT_OUT"])
        if qgis_desktop.grab_window(window, out):
            status["png"] = str(out)
        status["tile"] = panel.info_label.text()
        status["ok"] = bool(status.get("png")) and not status["errors"]
        qgis_desktop.finish(workdir, status)

    timer.timeout.connect(tick)
    timer.start(1000)
    run_inside_qgis.keep = (dock, timer, steps, dialog_alg)   # QGIS drops the script's locals after it runs


if os.environ.get(INSIDE):
    sys.path.insert(0, str(REPO / "scripts"))
    import qgis_desktop

    qgis_desktop.guarded(run_inside_qgis, Path(os.environ[INSIDE]))
elif __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "scripts")]
    from qgis_desktop import run_qgis_desktop

    sys.exit(main())
