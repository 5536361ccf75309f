"""Screenshots of a new user's first minutes: the plugin from `pb_tool zip` in a fresh QGIS desktop
profile with no engine configured, the dock's banner, *Set up…* with its progress, then a question
answered on the map. Nothing is typed in a terminal inside QGIS.

    .venv/bin/python scripts/screenshot_setup.py [--out-dir docs]

Writes setup-1-banner.png, setup-2-progress.png and setup-3-answer.png. Runs QGIS (qgis.bin) under
Xvfb with this file as its --code script. UNIRS_HOME is a temp folder (the ~1.3 GB environment is
removed afterwards); pip uses your pip configuration and cache. The work folder is removed unless
something failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path

INSIDE = "UNIRS_SETUP_SCREENSHOT_WORKDIR"   # set for the copy of this file QGIS runs
QUESTION = "How many buildings are there?"
REPO = Path(os.environ.get("UNIRS_SCREENSHOT_REPO") or Path(__file__).resolve().parents[1])
WINDOW = (1500, 940)
TIMEOUT_S = 1200


# --- outside: the driver, run with the repo venv ----------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(REPO / "docs"))
    args = parser.parse_args()
    from screenshot_dock import write_scenes   # the dock screenshot's dated synthetic scenes
    from tests.plugin_zip import build_plugin_zip

    workdir = Path(tempfile.mkdtemp(prefix="unirs-setup-shots-"))
    with zipfile.ZipFile(build_plugin_zip(workdir / "build")) as zf:
        zf.extractall(workdir / "plugins")
    (workdir / "scenes").mkdir()
    write_scenes(workdir / "scenes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIRS_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({INSIDE: str(workdir), "UNIRS_SCREENSHOT_OUT": str(Path(args.out_dir).resolve()),
                "UNIRS_SCREENSHOT_REPO": str(REPO), "QGIS_PLUGINPATH": str(workdir / "plugins"),
                "UNIRS_HOME": str(workdir / "unirs-home")})
    return run_qgis_desktop(Path(__file__).resolve(), workdir, env, WINDOW, TIMEOUT_S)


# --- inside: runs in the QGIS desktop's Python (qgis.bin --code) ------------------------------------
def run_inside_qgis(workdir: Path) -> None:
    import qgis.utils
    from qgis.PyQt.QtCore import QTimer
    from qgis.utils import iface

    if not (qgis.utils.loadPlugin("unirs") and qgis.utils.startPlugin("unirs")):
        return qgis_desktop.finish(workdir, {"ok": False, "errors": ["the plugin did not start"]})
    plugin = qgis.utils.plugins["unirs"]
    from unirs_qgis.settings import PluginSettings   # importable once the plugin started

    PluginSettings(answers_gpkg=str(workdir / "answers.gpkg")).save()
    window = iface.mainWindow()
    window.resize(*WINDOW)
    layers = [iface.addRasterLayer(str(p), p.stem) for p in sorted((workdir / "scenes").glob("site_*.tif"))]
    iface.mapCanvas().setExtent(layers[-1].extent())
    plugin.action.setChecked(True)            # the toolbar button: creates and shows the dock
    dock = plugin.dock
    dock.setMinimumWidth(430)
    banner = dock.engine_banner
    out = Path(os.environ["UNIRS_SCREENSHOT_OUT"])
    status: dict = {"ok": False, "shots": [], "errors": []}

    def shoot(name: str) -> None:
        if qgis_desktop.grab_window(window, out / f"{name}.png"):
            status["shots"].append(str(out / f"{name}.png"))
        else:
            status["errors"].append(f"could not save {name}")

    def ask() -> None:
        dock.tabs.setCurrentIndex(0)
        dock.layer_combo.setLayer(layers[-1])
        dock.question_edit.setPlainText(QUESTION)
        dock.ask_button.click()

    # (what must hold before the step, the step): one step per timer tick once its condition holds
    steps = [(lambda: banner.status is not None and banner.isVisible(), lambda: shoot("setup-1-banner")),
             (lambda: True, banner.setup_button.click),
             (lambda: banner.progress.value() >= 10, lambda: shoot("setup-2-progress")),
             (lambda: not banner.is_setting_up(), lambda: status.update(banner=banner.message.text())),
             (lambda: True, ask),
             (lambda: not dock.is_busy(), lambda: status.update(answer=dock.status_label.text())),
             (lambda: True, iface.mapCanvas().refreshAllLayers),
             (lambda: True, lambda: None),   # one more tick: the canvas draws the new note
             (lambda: True, lambda: shoot("setup-3-answer"))]
    total = len(steps)
    timer = QTimer()
    elapsed = {"ms": 0}

    def tick() -> None:
        elapsed["ms"] += 500
        if elapsed["ms"] > TIMEOUT_S * 1000:
            status["errors"].append(f"timed out before step {total - len(steps) + 1} of {total}")
        elif steps and steps[0][0]():
            steps.pop(0)[1]()
        if steps and not status["errors"]:
            return
        timer.stop()
        status["ok"] = not status["errors"] and len(status["shots"]) == 3
        qgis_desktop.finish(workdir, status)

    timer.timeout.connect(tick)
    timer.start(500)
    run_inside_qgis.keep = (dock, timer, steps)   # QGIS drops the script's locals after it runs


if os.environ.get(INSIDE):
    sys.path.insert(0, str(REPO / "scripts"))
    import qgis_desktop

    qgis_desktop.guarded(run_inside_qgis, Path(os.environ[INSIDE]))
elif __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "scripts")]
    from qgis_desktop import run_qgis_desktop

    sys.exit(main())
