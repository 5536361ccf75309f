"""Issue 21's corpus on the worker protocol: bad and unusual requests through a real worker process
(SubprocessClient, the tiny checkpoint, GDAL-written inputs). Each must come back as an error whose
message is one line naming the problem (no traceback, no exception class), leave no file behind, and
leave the worker answering the next question; the cases marked ok must succeed.

The worker runs from the caller's folder's point of view: the test's working folder is `caller/`,
which holds `in/good.tif`; the worker itself runs in its cache folder. As root the worker runs without
CAP_DAC_OVERRIDE (setpriv), so that a read-only folder is read-only to it too.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.review import ReviewJob
from unirs_engine.runtime.paths import cache_dir
from unirs_engine.testing.rasters import pattern, write_raster
from unirs_engine.worker.client import EngineClientError, RequestTimedOut, SubprocessClient

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
REQUEST_TIMEOUT_S = 120  # a case that hangs fails as "did not answer", not as a stuck test run
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
CAN_DROP_ROOT_POWERS = AS_ROOT and shutil.which("setpriv") is not None
# Signs of an error that is not a message for the user.
NOT_A_MESSAGE = re.compile(r"Traceback|File \"|<class |\b[A-Z]\w*(Error|Exception)(\(|: )")


@dataclass(frozen=True)
class Case:
    name: str
    op: str
    params: Callable[[dict], dict]    # from the corpus inputs
    expect: tuple[str, ...] = ()      # regexes (case-insensitive) the one-line message must all match
    creates: str | None = None        # ok cases: the file (relative to caller/) they write
    needs_read_only: bool = False     # needs a folder the worker cannot write to

    @property
    def ok(self) -> bool:
        return not self.expect


def _ask(image, **extra) -> Callable[[dict], dict]:
    return lambda f: {"image": f[image] if image in f else image, "question": "How many buildings are there?",
                      **extra}


LONG_QUESTION = "Is there a building? " * 10_000  # 210,000 characters

CASES = [
    Case("missing file", "ask", _ask("missing"), (r"missing\.tif", r"no such file|does not exist|not found")),
    Case("directory", "ask", _ask("folder"), (r"scene-folder", r"directory|folder")),
    Case("0-byte file", "ask", _ask("empty"), (r"empty\.tif", r"empty|0 bytes")),
    Case("text file named .tif", "ask", _ask("text"),
         (r"notes\.tif", r"not a raster|not recognized|cannot be read|not readable|not a supported")),
    Case("all-nodata raster", "ask", _ask("nodata"), (r"nodata\.tif", r"(no|valid|have) data|valid")),
    Case("all-NaN float raster", "ask", _ask("nan"), (r"nan\.tif", r"(no|valid|have) data|valid")),
    Case("pair sharing 4 valid pixels", "change", lambda f: {"before": f["sparse_before"], "after": f["sparse_after"]},
         (r"no (valid )?data|valid|overlap",)),
    Case("pair with an all-nodata after image", "change",
         lambda f: {"before": f["good"], "after": f["nodata"]}, (r"nodata\.tif|after", r"(no|valid|have) data|valid")),
    Case("one-frame sequence", "classify", lambda f: {"frames": [f["good"]]},
         (r"frame", r"at least 2|2 or more|fewer than 2|two")),
    Case("200k-character question", "ask", lambda f: {"image": f["good"], "question": LONG_QUESTION},
         (r"token", r"\d")),
    Case("bounds of the wrong type", "ask", _ask("good", bounds="a"), (r"'bounds' must be 4 numbers", r"'a'")),
    Case("bands of the wrong type", "ask", _ask("good", bands=["red"]), (r"'bands' must be", r"'red'")),
    Case("unknown param", "ask", _ask("good", boundz=[0, 0, 1, 1]), (r"unknown param", r"boundz")),
    Case("unknown bounds_crs", "ask",
         _ask("good", bounds=[0, 0, 1, 1], bounds_crs="EPSG:999999"), (r"EPSG:999999", r"CRS")),
    Case("relative path of the caller", "ask", lambda f: {"image": "in/good.tif", "question": "What is here?"}),
    Case("unknown op", "paint", lambda f: {}, (r"unknown op 'paint'", r"known: .*ask")),
    Case("missing param", "ask", lambda f: {"question": "What is this?"}, (r"needs params\.image",)),
    Case("review into a read-only folder", "review",
         lambda f: ReviewJob(f["good"], f["good_after"], f["read_only_out"], tile_size=32).to_dict(),
         (r"read-only|x\.gpkg", r"permission|read-only|not writable|cannot (write|create)"), needs_read_only=True),
    Case("review to a relative out", "review",
         lambda f: ReviewJob(f["good"], f["good_after"], "qo/x.gpkg", tile_size=32).to_dict(), creates="qo/x.gpkg"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The inputs, GDAL-written; `caller` is the working folder the tests run from."""
    root = tmp_path_factory.mktemp("corpus")
    caller = root / "caller"
    (caller / "in").mkdir(parents=True)
    good = write_raster(caller / "in" / "good.tif", pattern(64, 64))
    data = root / "data"
    data.mkdir()
    (data / "scene-folder").mkdir()
    (data / "empty.tif").write_bytes(b"")
    (data / "notes.tif").write_text("not a raster\n")
    # 128 x 128 (16,384 px) pair: valid before in the top-left 66 x 66, after in the bottom-right 64 x 64:
    # they share the 2 x 2 pixels at rows/cols 64-65.
    picture = np.maximum(pattern(128, 128), 1)  # no valid pixel equals nodata (0)
    before, after = picture.copy(), picture.copy()
    before[:, 66:, :] = 0
    before[:, :, 66:] = 0
    after[:, :64, :] = 0
    after[:, :, :64] = 0
    read_only = root / "read-only"
    read_only.mkdir()
    inputs = {
        "root": root, "caller": caller, "good": str(good),
        "good_after": str(write_raster(data / "good-after.tif", pattern(64, 64, seed=7))),
        "missing": str(data / "missing.tif"), "folder": str(data / "scene-folder"),
        "empty": str(data / "empty.tif"), "text": str(data / "notes.tif"),
        "nodata": str(write_raster(data / "nodata.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)),
        "nan": str(write_raster(data / "nan.tif", np.full((3, 64, 64), np.nan, np.float32))),
        "sparse_before": str(write_raster(data / "sparse-before.tif", before, nodata=0)),
        "sparse_after": str(write_raster(data / "sparse-after.tif", after, nodata=0)),
        "read_only_out": str(read_only / "x.gpkg"),
    }
    read_only.chmod(0o555)
    yield inputs
    read_only.chmod(0o755)


@pytest.fixture(scope="module")
def worker(tiny_checkpoint, tmp_path_factory) -> SubprocessClient:
    """One worker for the whole corpus (each case also checks that it keeps serving)."""
    folder = tmp_path_factory.mktemp("corpus-worker")
    python = PYTHON
    if CAN_DROP_ROOT_POWERS:  # root writes anywhere; without these capabilities it obeys the folder's mode
        python = folder / "python-without-dac-override"
        python.write_text(f'#!/bin/sh\nexec setpriv --bounding-set -dac_override,-dac_read_search -- '
                          f'"{PYTHON}" "$@"\n')
        python.chmod(0o755)
    client = SubprocessClient(model_dir=tiny_checkpoint, python=str(python), device="cpu",
                              log_path=folder / "worker.log", heartbeat_s=0.2, cancel_grace=30.0)
    client.info()
    yield client
    client.close()


def _files(*folders: Path) -> set[Path]:
    return {p for folder in folders for p in folder.rglob("*") if p.is_file()}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request_is_a_one_line_error_and_the_worker_keeps_serving(case, corpus, worker, monkeypatch):
    if case.needs_read_only and AS_ROOT and not CAN_DROP_ROOT_POWERS:
        pytest.skip("as root without setpriv no folder is read-only to the worker")
    monkeypatch.chdir(corpus["caller"])  # relative paths are the caller's
    watched = (corpus["root"], cache_dir())  # cache_dir(): the worker's own working folder
    files_before = _files(*watched)
    pid = worker.pid
    params = case.params(corpus)
    if case.ok:
        result = worker.run(case.op, params, timeout=REQUEST_TIMEOUT_S)
        if case.creates:  # where the caller meant, not in the worker's folder
            assert result["out"] == str(corpus["caller"] / case.creates)
        else:
            assert result["task"] == case.op
    else:
        with pytest.raises(EngineClientError) as caught:
            worker.run(case.op, params, timeout=REQUEST_TIMEOUT_S)
        message = str(caught.value)
        assert not isinstance(caught.value, RequestTimedOut), message
        assert "\n" not in message and not NOT_A_MESSAGE.search(message), message
        for expected in case.expect:
            assert re.search(expected, message, re.IGNORECASE), f"{expected!r} not in: {message}"

    created = _files(*watched) - files_before
    expected_files = {corpus["caller"] / case.creates} if case.creates else set()
    assert created == expected_files, f"stray files: {sorted(map(str, created - expected_files))}"
    for path in expected_files:
        path.unlink()  # the next run of this case starts afresh
    assert worker.ask(corpus["good"], "Still answering?")["task"] == "ask"
    assert worker.pid == pid  # the same worker: nothing crashed


@pytest.mark.timeout(300)
def test_a_timeout_is_honoured_while_heartbeats_come(worker, tmp_path):
    """A review that takes longer than its timeout: heartbeats (every 0.2 s here) keep coming, yet the
    call raises at the deadline once the worker confirmed the cancel, and the worker serves on."""
    before, after = write_mosaic_pair(tmp_path / "mosaic", size=256, tile=64, seed=3)
    job = ReviewJob(str(before), str(after), str(tmp_path / "review.gpkg"), tile_size=32, batch_size=1,
                    caption_all=True).to_dict()
    pid, t0 = worker.pid, time.monotonic()
    with pytest.raises(RequestTimedOut, match=r"did not answer 'review' within 1 s"):
        worker.review(job, timeout=1.0)
    assert 1.0 <= time.monotonic() - t0 < 10.0
    assert worker.pid == pid and worker.ask(str(before), "Still answering?")["task"] == "ask"


@pytest.mark.timeout(300)
def test_a_timeout_is_honoured_while_the_model_loads(tiny_checkpoint, corpus, tmp_path):
    """The first call starts the worker; its timeout counts the model's load (heartbeats with id null
    keep coming meanwhile). The next call finds the worker loaded and is answered."""
    client = SubprocessClient(model_dir=tiny_checkpoint, python=PYTHON, device="cpu",
                              log_path=tmp_path / "worker.log", heartbeat_s=0.1)
    try:
        t0 = time.monotonic()
        with pytest.raises(RequestTimedOut, match=r"did not answer 'ask' within 0.5 s"):
            client.ask(corpus["good"], "What is here?", timeout=0.5)
        assert time.monotonic() - t0 < 5.0
        assert client.ask(corpus["good"], "What is here?")["task"] == "ask"
    finally:
        client.close()
