"""Bad and unusual input through `qgis_process.bin` (the zipped plugin, a fresh profile): every case
ends with the exit status it should, one error line that names the problem (no traceback), and no
file left behind; the cases that must work write their output where the caller meant it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsVectorLayer
from rasterio.transform import Affine

from tests.e2e.conftest import qgis_process
from unirs_engine.testing.rasters import ORIGIN, RES, pattern, write_pair, write_raster

TRACEBACK = re.compile(r"Traceback|File \"|Error\(|terminate called", re.MULTILINE)


def scene(folder: Path, name: str = "scene.tif", **kw) -> Path:
    return write_raster(folder / name, pattern(64, 64, seed=1), **kw)


def made(path: Path, content: bytes | None) -> Path:
    """A file with `content`, or a folder when content is None."""
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


def all_nodata(folder: Path) -> Path:
    return write_raster(folder / "empty_area.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)


def all_nan(folder: Path) -> Path:
    return write_raster(folder / "nan.tif", np.full((3, 64, 64), np.nan, np.float32))


ROTATION_DEG = 30.0


def rotated(folder: Path) -> Path:
    """64 x 64 px at 10 m, turned 30° about the top-left corner: its true corners span more than the
    unrotated square."""
    transform = Affine.translation(*ORIGIN) * Affine.rotation(ROTATION_DEG) * Affine.scale(RES, -RES)
    return scene(folder, "rotated.tif", transform=transform)


def footprint_is_the_true_corners(folder: Path) -> None:
    """The answer's footprint spans the rotated raster's four corners (not its unrotated square)."""
    transform = Affine.translation(*ORIGIN) * Affine.rotation(ROTATION_DEG) * Affine.scale(RES, -RES)
    xs, ys = zip(*(transform * (col, row) for col in (0, 64) for row in (0, 64)))
    (feature,) = list(QgsVectorLayer(str(folder / "rotated.gpkg"), "out", "ogr").getFeatures())
    box = feature.geometry().boundingBox()
    assert (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()) == pytest.approx(
        (min(xs), min(ys), max(xs), max(ys)), abs=RES * math.sqrt(2))   # within a (rotated) pixel


def pair_without_after_data(folder: Path) -> tuple[Path, Path]:
    before, _ = write_pair(folder)
    after = write_raster(folder / "after_empty.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    return before, after


@dataclass
class Case:
    id: str
    args: Callable[[Path], list[str]]     # algorithm and its parameters, given the case's folder
    error: str | None                     # a regular expression the one error line must match; None: works
    outputs: tuple[str, ...] = ()         # files (relative to the folder) a working case writes
    check: Callable[[Path], None] | None = None   # more about a working case's output


CASES = [
    Case("missing file", lambda d: ["unirs:ask", f"INPUT={d / 'missing.tif'}", "QUESTION=What?",
                                    f"OUTPUT={d / 'o.gpkg'}"], r"missing\.tif does not exist"),
    Case("directory", lambda d: ["unirs:ask", f"INPUT={made(d / 'folder.tif', None)}",
                                 "QUESTION=What?", f"OUTPUT={d / 'o.gpkg'}"], r"folder\.tif is a directory"),
    Case("empty file", lambda d: ["unirs:ask", f"INPUT={made(d / 'empty.tif', b'')}",
                                  "QUESTION=What?", f"OUTPUT={d / 'o.gpkg'}"], r"empty\.tif is empty"),
    Case("text named .tif", lambda d: ["unirs:ask", f"INPUT={made(d / 'notes.tif', b'hi')}",
                                       "QUESTION=What?", f"OUTPUT={d / 'o.gpkg'}"],
         r"notes\.tif is not a raster GDAL can read"),
    Case("all nodata", lambda d: ["unirs:ask", f"INPUT={all_nodata(d)}", "QUESTION=How many buildings?",
                                  f"OUTPUT={d / 'o.gpkg'}"], r"only 0 % of the pixels of \S*empty_area\.tif have data"),
    Case("all NaN", lambda d: ["unirs:ask", f"INPUT={all_nan(d)}", "QUESTION=How many buildings?",
                               f"OUTPUT={d / 'o.gpkg'}"], r"only 0 % of the pixels of \S*nan\.tif have data"),
    Case("question longer than the context", lambda d: ["unirs:ask", f"INPUT={scene(d)}",
                                                        "QUESTION=" + "is there a road " * 2_000,
                                                        f"OUTPUT={d / 'o.gpkg'}"], r"tokens"),
    Case("after image without data", lambda d: ["unirs:describe_change",
                                                *(f"{k}={v}" for k, v in zip(("BEFORE", "AFTER"),
                                                                              pair_without_after_data(d))),
                                                f"OUTPUT={d / 'o.gpkg'}"],
         r"only 0 % of the pixels of .*after_empty\.tif \(valid in both\) have data"),
    Case("sequence of one layer", lambda d: ["unirs:classify_sequence", f"LAYERS={scene(d)}",
                                             f"OUTPUT={d / 'o.gpkg'}"], r"\b1 frame"),
    Case("review into a folder that cannot exist", lambda d: [
        "unirs:review_changes", *(f"{k}={v}" for k, v in zip(("BEFORE", "AFTER"), write_pair(d))),
        "TILE_SIZE=32", f"OUTPUT={made(d / 'file', b'x') / 'review.gpkg'}"],
        r"review\.gpkg"),
    Case("relative paths are the caller's", lambda d: ["unirs:ask", f"INPUT={scene(d).name}",
                                                       "QUESTION=What is in the image?", "OUTPUT=o.gpkg"],
         None, outputs=("o.gpkg",)),
    Case("relative review output", lambda d: [
        "unirs:review_changes", *(f"{k}={v.name}" for k, v in zip(("BEFORE", "AFTER"), write_pair(d))),
        "TILE_SIZE=32", "OUTPUT=reviews/r.gpkg"], None, outputs=("reviews/r.gpkg",)),
    Case("rotated raster", lambda d: ["unirs:ask", f"INPUT={rotated(d)}", "QUESTION=What is in the image?",
                                      f"OUTPUT={d / 'rotated.gpkg'}"], None, outputs=("rotated.gpkg",),
         check=footprint_is_the_true_corners),
]


def files_in(folder: Path) -> set[str]:
    """Files under `folder`, but GDAL's .aux.xml sidecars: QGIS writes band statistics beside every
    raster it loads as a layer, ours or not."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix != ".xml"}


def error_messages(output: str) -> set[str]:
    """The messages qgis_process prints as "ERROR:\t<text>", each with its tab-indented continuation
    lines (QGIS prints a failed run's message more than once, and a failed check under a heading)."""
    messages, current = set(), None
    for line in output.splitlines():
        if line.startswith("ERROR:"):
            current = line.removeprefix("ERROR:").strip()
        elif current is not None and line.startswith("\t"):
            current = line.strip()             # the message under "An error was encountered while…"
        else:
            current = None
            continue
        if current and not current.startswith("An error was encountered while"):
            messages.add(current)
    return messages


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_through_qgis_process(case, qgis_profile, tmp_path):
    args = case.args(tmp_path)
    inputs = files_in(tmp_path)
    done = qgis_process(["run", args[0], "--", *args[1:]], qgis_profile, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert not TRACEBACK.search(output), output[-3000:]
    written = files_in(tmp_path) - inputs
    if case.error is None:
        assert done.returncode == 0, output[-3000:]
        assert written >= set(case.outputs), written
        for name in case.outputs:
            assert QgsVectorLayer(str(tmp_path / name), "out", "ogr").isValid()
        if case.check is not None:
            case.check(tmp_path)
        return
    assert done.returncode != 0
    (message,) = error_messages(output)       # one line, naming the problem
    assert re.search(case.error, message), message
    assert not written, f"left behind: {written}"

