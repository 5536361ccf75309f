"""What the screenshot scripts share: a real QGIS desktop (qgis.bin) under Xvfb running a script of
theirs as --code, with a JSON report written back to the work folder.

The driver side calls `run_qgis_desktop`; the script's inside part runs under `guarded` and ends with
`finish`. Inside QGIS the scripts find this module through UNIRS_SCREENSHOT_REPO (QGIS runs --code
files without __file__).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

REPORT = "report.json"


def run_qgis_desktop(script: Path, workdir: Path, env: dict[str, str], window: tuple[int, int],
                     timeout_s: float) -> int:
    """Start QGIS with a fresh profile in `workdir` running `script`; print its report; remove
    `workdir` when the report says ok. Returns the exit status for the driver."""
    command = ["xvfb-run", "-a", "-s", f"-screen 0 {window[0] + 100}x{window[1] + 60}x24",
               "qgis.bin", "--noversioncheck", "--nologo", "--profiles-path", str(workdir / "profiles"),
               "--code", str(script)]
    qgis = subprocess.Popen(command, env={**env, "QT_QPA_PLATFORM": "xcb"}, start_new_session=True)
    try:
        qgis.wait(timeout_s + 120)
    except subprocess.TimeoutExpired:   # stop xvfb-run, Xvfb and QGIS together
        os.killpg(qgis.pid, signal.SIGTERM)
        qgis.wait()
    report = workdir / REPORT
    if not report.is_file():
        print(f"QGIS exited without a report; see the output above (workdir {workdir})", file=sys.stderr)
        return 1
    status = json.loads(report.read_text())
    print(json.dumps(status, indent=2))
    if not status.get("ok"):
        print(f"failed; the work folder is kept: {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir)
    return 0


def grab_window(window, out: Path) -> bool:
    """Inside QGIS: save a screenshot of `window` to `out` (written whole, then moved into place)."""
    partial = out.with_suffix(".part.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(partial), "PNG"):
        return False
    os.replace(partial, out)
    return True


def finish(workdir: Path, status: dict) -> None:
    """Inside QGIS: write the report and quit."""
    from qgis.core import QgsApplication, QgsProject

    (workdir / REPORT).write_text(json.dumps(status))
    QgsProject.instance().clear()   # QGIS 3.22 crashes removing layers during its own exit
    QgsApplication.exit(0)


def guarded(run: Callable[[Path], None], workdir: Path) -> None:
    """Inside QGIS: run `run(workdir)`; an exception is reported and QGIS quits (an error dialog would
    keep a headless QGIS waiting forever)."""
    try:
        run(workdir)
    except Exception:
        (workdir / REPORT).write_text(json.dumps({"ok": False, "errors": [traceback.format_exc()]}))
        from qgis.core import QgsApplication

        QgsApplication.exit(1)
