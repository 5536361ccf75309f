"""The engine worker and its clients: protocol lines, a real `python -m unirs_engine.worker` subprocess
on the tiny checkpoint (GDAL-written rasters, a PyAV video), and the in-process client beside it.

Worker processes are few on purpose (each imports torch): one shared by most tests, started the hard
way (polluted parent environment, noise on stdout before and after the worker takes over stdout) and
restarted once after being killed; one spoken to in raw protocol lines (ended by "shutdown"), one
ended by stdin's EOF; two that cannot start. Every way a worker ends is an exit 0 (no SIGABRT).
The corpus of bad requests is tests/engine/test_worker_corpus.py.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from unirs_engine import prompts
from unirs_engine.testing.rasters import UTM33, ORIGIN, RES, pattern, write_pair, write_raster, write_video
from unirs_engine.worker import protocol
from unirs_engine.runtime.environment import clean_env
from unirs_engine.worker.client import (LOG_RUNS, EngineClientError, EngineUnavailable, InProcessClient,
                                        RequestCancelled, RequestTimedOut, SubprocessClient, WorkerDied,
                                        _WorkerProcess, absolute_paths, make_client)
from unirs_engine.worker.server import Worker

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
# What a QGIS process may hold that must not reach the engine: its Python and GDAL settings (GDAL_SKIP
# made the worker unable to read any GeoTIFF), and secrets.
POLLUTED_ENV = {"PYTHONPATH": "/nonexistent/qgis/python", "QGIS_PREFIX_PATH": "/usr",
                "GDAL_DATA": "/nonexistent/gdal", "PROJ_LIB": "/nonexistent/proj",
                "VIRTUAL_ENV": "/nonexistent/venv", "GDAL_SKIP": "GTiff", "SECRET_TOKEN": "s3cret"}


# ---- protocol lines ---------------------------------------------------------------------------

def test_every_message_round_trips_as_one_line():
    messages = [
        protocol.request("r1", "ask", {"image": "/data/été.tif", "question": "Line one\nline two?"}),
        protocol.request("r2", "cancel", {"target": "r1"}),
        protocol.ready({"model_id": "tiny"}),
        protocol.progress("r1", 0.5, "encoding"),
        protocol.heartbeat(None),
        protocol.result("r1", {"answer": "a\u2028b", "georef": [{"bounds": [0.0, 1.0, 2.0, 3.0]}]}),
        protocol.error(None, "ProtocolError", "bad line"),
        protocol.cancelled("r1"),
    ]
    for msg in messages:
        line = protocol.encode(msg)
        assert line.endswith("\n") and line.count("\n") == 1
        assert protocol.decode(line) == msg
        assert protocol.decode(line.encode("utf-8")) == msg


@pytest.mark.parametrize("line, expected", [
    ("hello there", "not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    ('[1, 2]', "must be a JSON object"),
    ('{"op": "ask"}', "needs an 'id'"),
    ('{"id": 3, "op": "ask"}', "needs an 'id'"),
    ('{"id": "a", "op": "ask", "type": "result"}', "exactly one of 'op'"),
    ('{"id": "a", "op": ""}', "'op' must be a non-empty string"),
    ('{"id": null, "op": "ask"}', "request 'ask' needs a string 'id'"),
    ('{"id": "a", "op": "ask", "params": [1]}', "'params' must be an object"),
    ('{"id": "a", "op": "cancel", "params": {}}', "needs params.target"),
    ('{"id": "a", "type": "answer"}', "unknown response type 'answer'"),
    ('{"id": "a", "type": "progress", "fraction": "half", "message": ""}', "needs 'fraction'"),
    ('{"id": "a", "type": "progress", "fraction": true, "message": ""}', "needs 'fraction'"),
    ('{"id": null, "type": "ready", "info": {}}', "needs 'protocol'"),
    ('{"id": "a", "type": "result", "result": "text"}', "needs 'result'"),
    ('{"id": "a", "type": "error", "error": {"type": "X"}}', "error.type and error.message"),
])
def test_bad_lines_are_protocol_errors_that_say_what_is_wrong(line, expected):
    with pytest.raises(protocol.ProtocolError, match=re.escape(expected)):
        protocol.decode(line)


def test_clean_env_keeps_only_the_allow_list():
    kept = {"PATH": "/usr/bin", "HOME": "/home/me", "USER": "me", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "TMPDIR": "/tmp/me", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0",
            "NVIDIA_VISIBLE_DEVICES": "all", "HIP_VISIBLE_DEVICES": "0", "HTTPS_PROXY": "http://proxy:3128",
            "no_proxy": "localhost", "PIP_INDEX_URL": "https://mirror/simple", "PIP_CONFIG_FILE": "/etc/pip.conf",
            "UNIRS_MODEL": "/models/unirs", "XDG_CACHE_HOME": "/home/me/.cache", "SYSTEMROOT": r"C:\Windows",
            "LD_LIBRARY_PATH": "/opt/driver/lib"}
    dropped = {**POLLUTED_ENV, "QGIS_PLUGINPATH": "/x", "GDAL_DRIVER_PATH": "/x", "PROJ_DATA": "/x",
               "PYTHONHOME": "/x", "AWS_SECRET_ACCESS_KEY": "x", "QT_QPA_PLATFORM": "offscreen",
               "DYLD_LIBRARY_PATH": "/x", "LD_PRELOAD": "/x.so"}
    env = clean_env({**kept, **dropped, "UNIRS_WORKER_ENV": "LD_LIBRARY_PATH, NOT_SET"})
    assert env == {**kept, "UNIRS_WORKER_ENV": "LD_LIBRARY_PATH, NOT_SET", "PYTHONPATH": str(REPO),
                   "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
    assert "PYTHONPATH" not in clean_env(dropped, engine_importable=False)
    assert "LD_LIBRARY_PATH" not in clean_env(kept)  # only when UNIRS_WORKER_ENV names it


def test_path_params_are_made_absolute_against_the_callers_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path)
    assert absolute_paths("ask", {"image": "in/a.tif", "question": "q"}) == {"image": f"{here}/in/a.tif",
                                                                             "question": "q"}
    assert absolute_paths("change", {"before": Path("b.tif"), "after": "/data/a.tif"}) == {
        "before": f"{here}/b.tif", "after": "/data/a.tif"}
    assert absolute_paths("classify", {"frames": ["d1.tif", "/vsizip/s.zip/d2.tif"]})["frames"] == [
        f"{here}/d1.tif", "/vsizip/s.zip/d2.tif"]
    assert absolute_paths("classify", {"frames": "clip.mp4"})["frames"] == f"{here}/clip.mp4"
    assert absolute_paths("review", {"before": "b.tif", "after": "https://host/a.tif", "out": "qo/x.gpkg",
                                     "tile_size": 64}) == {
        "before": f"{here}/b.tif", "after": "https://host/a.tif", "out": f"{here}/qo/x.gpkg", "tile_size": 64}
    untouched = {"image": "", "question": "in/a.tif"}  # an empty path is the worker's to refuse
    assert absolute_paths("ask", untouched) == untouched
    assert absolute_paths("ask", {"image": 'NETCDF:"in.nc":var'})["image"] == 'NETCDF:"in.nc":var'
    assert absolute_paths("info", {"image": "x"}) == {"image": "x"}


def test_the_worker_log_keeps_the_last_runs(tmp_path):
    """Each start rotates the log: worker.log is this run's, worker.log.1 the one before, ..."""
    log_path = tmp_path / "logs" / "worker.log"
    for run in range(LOG_RUNS + 2):
        worker = _WorkerProcess([PYTHON, "-c", f"import sys; sys.stderr.write('run {run}')"], log_path)
        assert worker.wait_exit(60) == 0
        worker.kill()
    kept = sorted(p.name for p in log_path.parent.iterdir())
    assert kept == ["worker.log"] + [f"worker.log.{i}" for i in range(1, LOG_RUNS)]
    for age in range(LOG_RUNS):
        text = log_path.with_name("worker.log" + (f".{age}" if age else "")).read_text()
        assert text.rstrip().endswith(f"run {LOG_RUNS + 1 - age}") and "starting:" in text


def test_importing_the_client_imports_no_torch():
    code = ("import sys, unirs_engine.worker.client, unirs_engine.worker.server; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=clean_env(), check=True)
    assert out.stdout.strip() == "[]"


def test_make_client_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown engine mode 'remote'"):
        make_client("remote")


# ---- inputs and clients ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("worker-inputs")
    before, after = write_pair(folder / "pair")
    frames = np.stack([np.moveaxis(pattern(32, 48, seed=i), 0, -1) for i in range(12)])  # (12, 32, 48, 3)
    junk = folder / "notes.tif"
    junk.write_text("not a raster")
    return {
        "image": str(write_raster(folder / "scene.tif", pattern(64, 96))),
        "before": str(before), "after": str(after),
        "stack": [str(write_raster(folder / f"date{i}.tif", pattern(32, 32, seed=10 + i))) for i in range(3)],
        "video": str(write_video(folder / "clip.mp4", frames)),
        "junk": str(junk),
        # The left half of scene.tif in its own CRS: (xmin, ymin, xmax, ymax).
        "left_half": (ORIGIN[0], ORIGIN[1] - 64 * RES, ORIGIN[0] + 48 * RES, ORIGIN[1]),
    }


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def worker_client(tiny_checkpoint, tmp_path_factory):
    """The shared subprocess client, its worker spawned from a polluted environment by a wrapper
    `python` that prints non-protocol lines first and makes the worker print noise after taking stdout."""
    folder = tmp_path_factory.mktemp("worker")
    # Noise after the worker took stdout over: a sitecustomize (first on the wrapper's PYTHONPATH) wraps
    # the takeover to print as a library (sys.stdout) and as C code (fd 1) would.
    (folder / "noise").mkdir()
    (folder / "noise" / "sitecustomize.py").write_text(
        "import os\nfrom unirs_engine.worker import server\n_take = server._take_stdout\n\n\n"
        "def _noisy():\n    out = _take()\n    print('noise: a library printed to sys.stdout')\n"
        "    os.write(1, b'noise: C code wrote to fd 1\\n')\n    return out\n\n\n"
        "server._take_stdout = _noisy\n")
    wrapper = folder / "noisy-python"
    wrapper.write_text(f'#!/bin/sh\necho "not a protocol line"\necho \'{{"json": "but not protocol"}}\'\n'
                       f'PYTHONPATH="{folder / "noise"}:$PYTHONPATH" exec "{PYTHON}" "$@"\n')
    wrapper.chmod(0o755)
    client = SubprocessClient(model_dir=tiny_checkpoint, python=str(wrapper), device="cpu",
                              log_path=folder / "worker.log", cancel_grace=60.0)
    skipped = _Recorder()
    logging.getLogger("unirs.client").addHandler(skipped)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in POLLUTED_ENV.items():
            patch.setenv(key, value)
        client.info()  # spawns the worker now, from this environment
    logging.getLogger("unirs.client").removeHandler(skipped)
    client.skipped_lines = [m for m in skipped.messages if "not protocol" in m]  # seen by the first test
    yield client
    client.close()


@pytest.fixture(scope="module")
def inprocess_client(tiny_checkpoint):
    client = InProcessClient(model_dir=tiny_checkpoint, device="cpu")
    yield client
    client.close()


def _without_timings(result: dict) -> dict:
    """The answer without how long it took or whether it came from the cache."""
    return {k: v for k, v in result.items() if k not in ("timings", "answer_cached", "batch_size")}


def test_worker_env_is_clean_and_stdout_noise_never_reaches_the_protocol(worker_client):
    info = worker_client.info()
    assert info["mode"] == "subprocess" and info["pid"] == worker_client.pid != os.getpid()
    assert info["model_id"] == "unirs-tiny" and info["device"] == "cpu" and info["protocol"] == protocol.PROTOCOL_VERSION
    assert Path(info["python"]).resolve() == Path(PYTHON).resolve()
    assert {"PYTHONPATH", "PATH", "UNIRS_HOME"} <= set(info["env_keys"])
    assert not set(info["env_keys"]) & set(POLLUTED_ENV) - {"PYTHONPATH"}  # GDAL_SKIP, SECRET_TOKEN...
    log = worker_client.log_path.read_text()  # the worker's stderr: where its noise went instead
    assert "noise: a library printed to sys.stdout" in log and "noise: C code wrote to fd 1" in log
    assert len(worker_client.skipped_lines) == 2  # the wrapper's lines, before the worker started
    assert "not a protocol line" in worker_client.skipped_lines[0]


def test_worker_answers_ask_change_and_classify(worker_client, inputs):
    messages = []
    ask = worker_client.ask(inputs["image"], "What is in the image?",
                            on_progress=lambda f, m: messages.append((f, m)))
    assert ask["task"] == "ask" and isinstance(ask["answer"], str) and ask["device"] == "cpu"
    assert "What is in the image?" in ask["prompt"] and messages == [(0.0, "ask: started")]
    (geo,) = ask["georef"]
    assert (geo["source"], geo["width"], geo["height"]) == (inputs["image"], 96, 64)
    assert geo["bounds"] == [ORIGIN[0], ORIGIN[1] - 64 * RES, ORIGIN[0] + 96 * RES, ORIGIN[1]]

    half = worker_client.ask(inputs["image"], "What is in the image?", bounds=inputs["left_half"],
                             bounds_crs=UTM33)
    assert (half["georef"][0]["width"], half["georef"][0]["bounds"]) == (48, list(inputs["left_half"]))

    change = worker_client.describe_change(inputs["before"], inputs["after"])
    assert change["task"] == "change" and len(change["georef"]) == 2
    assert isinstance(change["extra"]["changed"], bool) and isinstance(change["extra"]["change_score"], float)
    assert change["georef"][0]["crs"] == change["georef"][1]["crs"]  # after resampled onto before's grid

    stack = worker_client.classify_sequence(inputs["stack"], classes=["flood", "fire"])
    assert stack["task"] == "classify" and stack["extra"]["classes"] == ["flood", "fire"]
    assert stack["extra"]["frames"] == inputs["stack"]
    assert stack["extra"]["label"] in (None, "flood", "fire")
    assert stack["prompt"].count("<image>") == 3

    video = worker_client.classify_sequence(inputs["video"])
    assert len(video["extra"]["frames"]) == 8 and video["extra"]["frames"][0].startswith(inputs["video"])
    assert len(video["extra"]["classes"]) == 25 and video["prompt"].count("<image>") == 8


def test_ask_asks_for_a_short_answer_unless_told_otherwise(worker_client, inprocess_client, inputs):
    for client in (worker_client, inprocess_client):
        short = client.ask(inputs["image"], "Is there a road?")
        assert short["prompt"].count(prompts.SHORT_ANSWER_SUFFIX) == 1
        free = client.ask(inputs["image"], "Is there a road?", short_answer=False)
        assert "Is there a road?" in free["prompt"] and prompts.SHORT_ANSWER_SUFFIX not in free["prompt"]
        with pytest.raises(EngineClientError, match=r"short_answer.*true or false"):
            client.run("ask", {"image": inputs["image"], "question": "Road?", "short_answer": "no"})


def test_subprocess_and_inprocess_give_the_same_answers(worker_client, inprocess_client, inputs):
    calls = [
        ("ask", (inputs["image"], "How many buildings are there?"), {"bounds": inputs["left_half"], "bounds_crs": UTM33}),
        ("describe_change", (inputs["before"], inputs["after"]), {"instruction": "What changed?"}),
        ("classify_sequence", (inputs["video"],), {}),
    ]
    for method, args, kwargs in calls:
        remote = getattr(worker_client, method)(*args, **kwargs)
        local = getattr(inprocess_client, method)(*args, **kwargs)
        assert _without_timings(remote) == _without_timings(local), method  # greedy: identical
        assert set(remote["timings"]) == set(local["timings"]) >= {"read_s", "encode_s", "generate_s", "total_s"}
    assert inprocess_client.info()["mode"] == "inprocess" and inprocess_client.info()["pid"] == os.getpid()


def test_relative_paths_are_the_callers_in_both_clients(worker_client, inprocess_client, inputs, monkeypatch):
    """The worker runs in its cache folder: a relative path is made absolute by the client, against
    the caller's working folder."""
    monkeypatch.chdir(Path(inputs["image"]).parent)
    for client in (worker_client, inprocess_client):
        answer = client.ask(Path(inputs["image"]).name, "What is in the image?")
        assert answer["georef"][0]["source"] == inputs["image"]


def test_engine_errors_come_back_as_one_line_and_the_worker_keeps_serving(worker_client, inprocess_client, inputs):
    pid = worker_client.pid
    for client in (worker_client, inprocess_client):
        with pytest.raises(EngineClientError, match=r"missing\.tif") as missing:
            client.ask(str(Path(inputs["image"]).with_name("missing.tif")), "What is this?")
        with pytest.raises(EngineClientError, match=r"notes\.tif") as junk:
            client.ask(inputs["junk"], "What is this?")
        with pytest.raises(EngineClientError, match=r"unknown op 'paint' \(known: .*ask.*classify"):
            client.run("paint", {})
        with pytest.raises(EngineClientError, match=r"op 'ask' needs params\.image"):
            client.run("ask", {"question": "What is this?"})
        with pytest.raises(TypeError, match="not JSON serializable"):  # refused before it is sent
            client.run("ask", {"image": object(), "question": "What is this?"})
        for error in (missing.value, junk.value):  # the engine's own message, not "SomeError: ..."
            assert error.error_type.endswith("Error") and error.error_type not in str(error)
            assert "\n" not in str(error)
    assert worker_client.ask(inputs["image"], "Still there?")["task"] == "ask"
    assert worker_client.pid == pid


def test_cancel_mid_request_raises_and_the_same_worker_serves_the_next(worker_client, inputs):
    pid = worker_client.pid
    started = threading.Event()
    with pytest.raises(RequestCancelled):  # cancelled before it was sent
        worker_client.ask(inputs["image"], "What is this?", is_cancelled=lambda: True)
    t0 = time.monotonic()
    with pytest.raises(RequestCancelled, match="'classify' was cancelled"):
        worker_client.classify_sequence(inputs["video"], on_progress=lambda f, m: started.set(),
                                        is_cancelled=started.is_set)
    assert time.monotonic() - t0 < worker_client.cancel_grace  # confirmed by the worker, not killed
    assert worker_client.pid == pid
    assert worker_client.ask(inputs["image"], "And now?")["task"] == "ask"


def test_timeout_cancels_the_request(worker_client, inputs):
    pid = worker_client.pid
    # Past the deadline before it is sent: never sent, never answered.
    with pytest.raises(RequestTimedOut, match=r"did not answer 'classify' within 0 s"):
        worker_client.classify_sequence(inputs["video"], timeout=0)
    # A deadline shorter than the answer takes: the worker is told to cancel, the answer never comes
    # (each question new: no cached answer beats the deadline).
    for n, timeout in enumerate((0.01, 0.05)):
        t0 = time.monotonic()
        with pytest.raises(RequestTimedOut, match=rf"did not answer 'classify' within {timeout:g} s"):
            worker_client.classify_sequence(inputs["video"], classes=[f"class {n}", "other"], timeout=timeout)
        assert time.monotonic() - t0 < 5.0  # the cancel was confirmed at once, nothing killed
    assert worker_client.pid == pid and worker_client.ask(inputs["image"], "Quick?")["task"] == "ask"


def test_killed_worker_is_reported_and_replaced(worker_client, inputs):
    pid = worker_client.pid

    def kill_worker(fraction, message):
        os.kill(pid, signal.SIGKILL)

    with pytest.raises(WorkerDied, match=r"UniRS worker exited \(code -9: killed by SIGKILL.*\) while answering 'ask'"):
        worker_client.ask(inputs["image"], "What is this?", on_progress=kill_worker)
    assert worker_client.pid is None
    again = worker_client.ask(inputs["image"], "What is this?")
    assert again["task"] == "ask" and worker_client.pid not in (None, pid)


def test_close_stops_the_worker_with_exit_0(worker_client, inputs):
    worker_client.ask(inputs["image"], "One more before closing?")  # torch has run: the abort's condition
    process, pid = worker_client._worker.proc, worker_client.pid
    worker_client.close()
    assert worker_client.pid is None
    assert process.returncode == 0, worker_client.log_path.read_text()[-2000:]  # not -6 (SIGABRT)
    assert "terminate called" not in worker_client.log_path.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped


def test_a_model_that_cannot_load_is_a_clear_error(tmp_path):
    client = make_client("subprocess", model_dir=tmp_path / "no-model", python=PYTHON, log_path=tmp_path / "w.log")
    with pytest.raises(EngineUnavailable, match=r"^the UniRS engine could not start: could not load the model: .*no-model"):
        client.info()
    client.close()


def test_a_python_without_the_engine_or_no_python_at_all_is_a_clear_error(tmp_path):
    no_torch = "/usr/bin/python3"  # Debian's python: rasterio yes, torch no
    if subprocess.run([no_torch, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"{no_torch} has torch")
    client = make_client("subprocess", python=no_torch, log_path=tmp_path / "w.log")
    with pytest.raises(EngineUnavailable, match=r"Python \(/usr/bin/python3\) has no module 'torch': set up the "
                                                r"engine: Raster ▸ UniRS ▸ Set up engine… \(headless: qgis_process.bin "
                                                r"run unirs:setup_engine\); or, .* -m pip install torch$"):
        client.info()
    client = make_client("subprocess", python=str(tmp_path / "nowhere" / "python"))
    with pytest.raises(EngineUnavailable, match=r"the engine Python named by the Worker Python setting does not exist: .*nowhere/python"):
        client.info()


# ---- the server loop, in raw protocol lines ----------------------------------------------------------

class RawWorker:
    """`python -m unirs_engine.worker` driven line by line, as any client in any language would."""

    def __init__(self, model: Path, heartbeat_s: float, log_path: Path):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([PYTHON, "-u", "-m", "unirs_engine.worker", "--model", str(model),
                                          "--device", "cpu", "--heartbeat", str(heartbeat_s)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         env=clean_env(), cwd=model.parent)
        self.seen: list[dict] = []

    def send(self, *lines: str | dict) -> None:
        text = "".join(line if isinstance(line, str) else protocol.encode(line) for line in lines)
        self.proc.stdin.write(text.encode("utf-8"))
        self.proc.stdin.flush()

    def until(self, rid, kind: str) -> dict:
        """The first `kind` message for `rid`: already seen, or read on (keeping lines in .seen)."""
        for msg in self.seen:
            if (msg["id"], msg["type"]) == (rid, kind):
                return msg
        for raw in self.proc.stdout:
            msg = protocol.decode(raw)
            self.seen.append(msg)
            if (msg["id"], msg["type"]) == (rid, kind):
                return msg
            if rid is not None and msg["id"] == rid and msg["type"] in protocol.FINAL_TYPES:
                raise AssertionError(f"expected {kind} for {rid}, got {msg}")
        raise AssertionError(f"worker exited before {kind} of {rid}: saw {self.seen}")

    def finals(self, rid) -> list[str]:
        return [m["type"] for m in self.seen if m["id"] == rid and m["type"] in protocol.FINAL_TYPES]

    def exit_code(self) -> int:
        """The exit status, once stdout is drained; asserts the worker did not abort on its way out."""
        self.proc.stdout.read()
        code = self.proc.wait(60)
        assert "terminate called" not in self.log_path.read_text(errors="replace")
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.mark.timeout(180)
def test_raw_protocol_cancel_heartbeat_bad_lines_and_shutdown(tiny_checkpoint, inputs, tmp_path):
    w = RawWorker(tiny_checkpoint, heartbeat_s=0.2, log_path=tmp_path / "worker.log")
    try:
        ask = {"image": inputs["image"], "question": "What is this?"}
        # Sent before the model loaded: they wait in the queue; "b" is dropped from it by its cancel.
        w.send("garbage\n", protocol.request("a", "ask", ask), protocol.request("b", "ask", ask),
               protocol.request("c", "cancel", {"target": "b"}))
        ready = w.until(None, "ready")
        assert ready["protocol"] == protocol.PROTOCOL_VERSION and ready["info"]["model_id"] == "unirs-tiny"
        assert {"type": "heartbeat", "id": None} in w.seen[:w.seen.index(ready)]  # alive while loading
        bad = next(m for m in w.seen if m["type"] == "error")
        assert bad["id"] is None and "not JSON" in bad["error"]["message"]
        w.until("a", "result")
        w.until("b", "cancelled")

        # A cancel that arrives while the request runs: the worker answers "cancelled", not the result.
        w.send(protocol.request("d", "classify", {"frames": inputs["video"]}))
        assert w.until("d", "progress")["message"] == "classify: started"
        w.send(protocol.request("e", "cancel", {"target": "d"}))
        w.until("d", "cancelled")
        assert w.finals("d") == ["cancelled"] and w.finals("b") == ["cancelled"] and w.finals("c") == []

        w.send(protocol.request("f", "hello", {"protocol": 0}), protocol.request("g", "hello",
               {"protocol": protocol.PROTOCOL_VERSION}))
        assert "client speaks protocol 0" in w.until("f", "error")["error"]["message"]
        assert w.until("g", "result")["result"]["pid"] == w.proc.pid

        # A relative path means nothing in the worker's folder: refused, not read from there.
        w.send(protocol.request("j", "ask", {"image": "scene.tif", "question": "What is this?"}))
        assert w.until("j", "error")["error"]["message"] == ("ask: 'image' must be an absolute path (the worker "
                                                           "does not know the caller's folder), got 'scene.tif'")

        # Shutdown answers, exits 0 (stdin still open) and leaves what follows it unanswered.
        w.send(protocol.request("h", "shutdown"), protocol.request("i", "info"))
        w.until("h", "result")
        assert w.exit_code() == 0
        assert w.finals("i") == []
    finally:
        w.kill()


@pytest.mark.timeout(240)
def test_stdin_eof_after_requests_ends_the_worker_with_exit_0(tiny_checkpoint, inputs, tmp_path):
    """Issue 21: the worker aborted (SIGABRT, "terminate called without an active exception") on
    stdin's EOF once torch had run: a thread freeing tensors while the interpreter finalised. Frequent
    heartbeats make that thread busy; twice, as the abort came two runs in three."""
    for run in range(2):
        w = RawWorker(tiny_checkpoint, heartbeat_s=0.02, log_path=tmp_path / f"worker-{run}.log")
        try:
            w.send(protocol.request("a", "ask", {"image": inputs["image"], "question": f"Run {run}?"}),
                   protocol.request("b", "classify", {"frames": inputs["stack"]}))
            w.until("b", "result")
            w.proc.stdin.close()
            assert w.exit_code() == 0, w.log_path.read_text()[-2000:]
        finally:
            w.kill()


def test_serve_answers_what_is_queued_then_returns_0_at_eof(tiny_checkpoint, inputs):
    """The serving loop in this process on a real engine: stdin EOF ends it cleanly."""
    from unirs_engine.engine import Engine

    stdin_r, stdin_w = (os.fdopen(fd, mode, buffering=0) for fd, mode in zip(os.pipe(), ("rb", "wb")))
    out_r, out_w = (os.fdopen(fd, mode, buffering=0) for fd, mode in zip(os.pipe(), ("rb", "wb")))
    with stdin_w:
        stdin_w.write(protocol.encode(protocol.request("x", "ask", {"image": inputs["image"], "question": "Hi?"}))
                      .encode("utf-8"))
    worker = Worker(out_w, heartbeat_s=60)
    with stdin_r, out_w:
        worker.start_threads(stdin_r)
        assert worker.serve(Engine.load(tiny_checkpoint, device="cpu")) == 0
        worker.stop()
    with out_r:
        lines = [protocol.decode(line) for line in out_r]
    assert [(m["id"], m["type"]) for m in lines] == [(None, "ready"), ("x", "progress"), ("x", "result")]
    assert lines[-1]["result"]["task"] == "ask" and lines[-1]["result"]["georef"][0]["source"] == inputs["image"]
