"""The one thing the QGIS plugin uses to reach the engine: a blocking, thread-safe client.

SubprocessClient talks JSON lines (protocol.py) to `python -m unirs_engine.worker`, started lazily with
the Python that runtime/environment.py resolves, in a clean environment, and restarted after a crash;
InProcessClient runs the same op handlers on an Engine in this process. Both return Result.to_dict() as plain JSON types and raise the same errors.
Importing this module imports no torch (QGIS imports it).
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Sequence

from ..runtime import requirements
from ..runtime.environment import EngineNotSetUp, clean_env, resolve_engine_python
from ..runtime.paths import cache_dir
from . import protocol

log = logging.getLogger("unirs.client")

POLL_S = 0.1  # how often a waiting call looks at is_cancelled()

OnProgress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]


class EngineClientError(RuntimeError):
    """The engine could not answer; str() is a one-line message for the user."""

    def __init__(self, message: str, error_type: str | None = None):
        super().__init__(message)
        self.error_type = error_type  # the engine-side exception name, when there was one


class WorkerDied(EngineClientError):
    """The worker process exited while starting or answering; the next call starts a fresh one."""


class RequestCancelled(EngineClientError):
    """is_cancelled() turned True; nothing was answered."""


class EngineUnavailable(EngineClientError):
    """No Python can run the engine here (not set up, or missing modules); str() says how to fix it."""


# ---- the shared interface ---------------------------------------------------------------------------

class EngineClient(ABC):
    """ask / describe_change / classify_sequence / run / info / close, whichever way the engine runs."""

    mode: str

    @abstractmethod
    def run(self, op: str, params: dict, *, on_progress: OnProgress | None = None,
            is_cancelled: IsCancelled | None = None, timeout: float | None = None) -> dict:
        """Run op with JSON params; `timeout`: seconds before the request is cancelled as timed out."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine (stop the worker); a later call starts again."""

    def info(self) -> dict:
        """engine.info() plus "mode", "python", "pid" (and "env_keys" of the engine's process)."""
        return {**self.run("info", {}), "mode": self.mode}

    def ask(self, image: str, question: str, *, bounds=None, bounds_crs: str | None = None,
            bands: Sequence[int] | None = None, clue: bool = False, on_progress: OnProgress | None = None,
            is_cancelled: IsCancelled | None = None, timeout: float | None = None) -> dict:
        params = {"image": os.fspath(image), "question": question, "clue": clue,
                  **_region(bounds, bounds_crs, bands)}
        return self.run("ask", params, on_progress=on_progress, is_cancelled=is_cancelled, timeout=timeout)

    def describe_change(self, before: str, after: str, *, instruction: str | None = None, bounds=None,
                        bounds_crs: str | None = None, bands: Sequence[int] | None = None, clue: bool = False,
                        on_progress: OnProgress | None = None, is_cancelled: IsCancelled | None = None,
                        timeout: float | None = None) -> dict:
        params = {"before": os.fspath(before), "after": os.fspath(after), "instruction": instruction,
                  "clue": clue, **_region(bounds, bounds_crs, bands)}
        return self.run("change", params, on_progress=on_progress, is_cancelled=is_cancelled, timeout=timeout)

    def classify_sequence(self, frames: str | Sequence[str], *, classes: Sequence[str] | None = None,
                          clue: bool = False, on_progress: OnProgress | None = None,
                          is_cancelled: IsCancelled | None = None, timeout: float | None = None) -> dict:
        """frames: a video path, or raster paths in date order."""
        frames = os.fspath(frames) if isinstance(frames, (str, os.PathLike)) else [os.fspath(f) for f in frames]
        params = {"frames": frames, "classes": list(classes) if classes else None, "clue": clue}
        return self.run("classify", params, on_progress=on_progress, is_cancelled=is_cancelled, timeout=timeout)

    def review(self, job: dict, *, on_progress: OnProgress | None = None, is_cancelled: IsCancelled | None = None,
               timeout: float | None = None) -> dict:
        """Run a change review (ReviewJob.to_dict()); returns ReviewSummary.to_dict(). A cancel raises
        RequestCancelled; the GeoPackage keeps every finished tile and a rerun resumes."""
        return self.run("review", dict(job), on_progress=on_progress, is_cancelled=is_cancelled, timeout=timeout)

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _region(bounds, bounds_crs, bands) -> dict:
    return {"bounds": [float(v) for v in bounds] if bounds is not None else None,
            "bounds_crs": str(bounds_crs) if bounds_crs is not None else None,
            "bands": [int(b) for b in bands] if bands is not None else None}


def _stop_error(reason: str, op: str, timeout: float | None) -> EngineClientError:
    if reason == "cancelled":
        return RequestCancelled(f"'{op}' was cancelled")
    return EngineClientError(f"the UniRS engine did not answer '{op}' within {timeout:g} s")


# ---- the local worker process ---------------------------------------------------------------------

_EOF = object()  # put on the message queue when the worker's stdout closes


class _WorkerProcess:
    """One running worker: its pipes, a reader thread turning stdout lines into messages, its log."""

    def __init__(self, command: list[str], log_path: Path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                cwd=cache_dir(),  # not the plugin folder: `-m` puts cwd first on sys.path
                env=clean_env(), text=True, encoding="utf-8", errors="replace", bufsize=1,
                start_new_session=True,  # Ctrl-C in QGIS's terminal must not kill the worker
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))  # no console on Windows
        except OSError as exc:
            self._log.close()
            raise EngineClientError(f"cannot start the UniRS worker with {command[0]}: {exc}") from exc
        self.ready = False             # the "ready" line arrived
        self.greeted = False           # hello answered: both ends speak the same protocol
        self.startup_error: str | None = None
        self.stopped_by_client = False
        self._messages: queue.Queue = queue.Queue()
        self._write_lock = threading.Lock()
        threading.Thread(target=self._read, name=f"unirs-worker-{self.proc.pid}", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                self._messages.put(protocol.decode(line))
            except protocol.ProtocolError as exc:
                log.warning("skipped a line from the UniRS worker that is not protocol: %s", exc)
        self.proc.stdout.close()
        self._messages.put(_EOF)

    def next_message(self, timeout: float):
        """The next message, _EOF once stdout closed, or None after `timeout` s of silence."""
        try:
            return self._messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def write(self, line: str) -> None:
        with self._write_lock:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._close_files()

    def stop(self, grace: float = 5.0) -> None:
        """Ask politely ("shutdown", stdin EOF), then terminate, then kill."""
        self.stopped_by_client = True
        if self.alive():
            try:
                self.write(protocol.encode(protocol.request("shutdown", "shutdown")))
                self.proc.stdin.close()
            except OSError:
                pass  # already gone
            if self.wait_exit(grace) is None:
                self.proc.terminate()
                if self.wait_exit(3.0) is None:
                    self.proc.kill()
        self.proc.wait()
        self._close_files()

    def _close_files(self) -> None:
        for stream in (self.proc.stdin, self._log):
            try:
                stream.close()
            except OSError:
                pass

    def stderr_tail(self, lines: int = 5, limit: int = 600) -> str:
        """The last lines the worker wrote to stderr (progress-bar redraws split apart), on one line."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        tail = [s.strip() for s in text.replace("\r", "\n").split("\n") if s.strip()][-lines:]
        joined = " | ".join(tail)
        return joined if len(joined) <= limit else "..." + joined[-limit:]


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "code unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ", perhaps out of memory" if name == "SIGKILL" else ""
        return f"code {code}: killed by {name}{hint}"
    return f"code {code}"


class SubprocessClient(EngineClient):
    """The engine in a local worker process (`python -u -m unirs_engine.worker`), started lazily."""

    mode = "subprocess"

    def __init__(self, *, model_dir: str | os.PathLike | None = None, python: str | None = None,
                 device: str | None = None, clue_model_dir: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None, heartbeat_s: float = 5.0,
                 startup_timeout: float = 900.0, inactivity_timeout: float = 120.0,
                 cancel_grace: float = 10.0):
        self._python_setting = str(python) if python else None  # None: resolved at each worker start
        self.python = self._python_setting or ""                 # the one that runs (set at start)
        self.log_path = Path(log_path) if log_path else cache_dir() / "worker.log"
        self._worker_args = ["-u", "-m", "unirs_engine.worker", "--heartbeat", f"{heartbeat_s:g}"]
        for flag, value in (("--model", model_dir), ("--device", device), ("--clue-model", clue_model_dir)):
            if value:
                self._worker_args += [flag, os.fspath(value)]
        self.startup_timeout = startup_timeout        # silence allowed before "ready" (model load)
        self.inactivity_timeout = inactivity_timeout  # silence allowed after: heartbeats reset it
        self.cancel_grace = cancel_grace              # wait for "cancelled" before killing the worker
        self._lock = threading.Lock()
        self._worker: _WorkerProcess | None = None
        self._ids = itertools.count(1)
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        """The running worker's process id (None before the first call or after close())."""
        worker = self._worker
        return worker.proc.pid if worker is not None and worker.alive() else None

    def run(self, op: str, params: dict, *, on_progress: OnProgress | None = None,
            is_cancelled: IsCancelled | None = None, timeout: float | None = None) -> dict:
        with self._lock:
            if is_cancelled and is_cancelled():
                raise RequestCancelled(f"'{op}' was cancelled")
            worker = self._worker
            if worker is not None and not worker.alive():  # died between requests
                log.warning("the UniRS worker had exited (%s): starting a new one; last words: %s",
                            _describe_exit(worker.proc.returncode), worker.stderr_tail())
                self._discard(worker)
                worker = None
            if worker is None:
                command = self._command()
                if on_progress:
                    on_progress(0.0, "starting the UniRS worker (loading the model)")
                worker = self._worker = _WorkerProcess(command, self.log_path)
            if not worker.greeted:
                self._exchange(worker, "hello", {"protocol": protocol.PROTOCOL_VERSION}, None, is_cancelled, None)
                worker.greeted = True
            return self._exchange(worker, op, params, on_progress, is_cancelled, timeout)

    def _command(self) -> list[str]:
        """The worker's command line, with the engine's Python resolved now (a setup may have just
        made a managed environment current)."""
        try:
            found = resolve_engine_python(self._python_setting)
        except EngineNotSetUp as exc:
            raise EngineUnavailable(str(exc)) from None
        self.python = found.python
        log.info("starting the UniRS worker with %s", found.describe())
        return [found.python, *self._worker_args]

    def close(self) -> None:
        # No request lock: closing must not wait for an answer in flight (plugin unload).
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def _exchange(self, worker: _WorkerProcess, op: str, params: dict, on_progress: OnProgress | None,
                  is_cancelled: IsCancelled | None, timeout: float | None) -> dict:
        """Send one request and wait for its final response, minding cancel, timeouts and death."""
        rid = f"{op}-{next(self._ids)}"
        self._send(worker, protocol.request(rid, op, params), op)
        started = heard = time.monotonic()
        stop_reason, give_up_at = None, 0.0  # "cancelled" | "timed out"; when to stop waiting for it
        while True:
            msg = worker.next_message(POLL_S)
            now = time.monotonic()
            if msg is _EOF:
                raise self._died(worker, op)
            if msg is not None:
                heard = now
                if msg["id"] is None:
                    self._worker_note(worker, msg)
                elif msg["id"] == rid:
                    if msg["type"] == "progress":
                        if on_progress and stop_reason is None:
                            on_progress(msg["fraction"], msg["message"])
                    elif msg["type"] in protocol.FINAL_TYPES:
                        return self._final(msg, op, stop_reason, timeout)
            if stop_reason is None:
                if is_cancelled and is_cancelled():
                    stop_reason = "cancelled"
                elif timeout is not None and now - started > timeout:
                    stop_reason = "timed out"
                if stop_reason:
                    self._send(worker, protocol.request(f"{rid}-cancel", "cancel", {"target": rid}), op)
                    give_up_at = now + self.cancel_grace
            elif now > give_up_at:
                log.warning("the UniRS worker did not confirm the cancel of %s in %g s: killing it", rid,
                            self.cancel_grace)
                self._discard(worker)
                raise _stop_error(stop_reason, op, timeout)
            limit = self.inactivity_timeout if worker.ready else self.startup_timeout
            if now - heard > limit:
                self._discard(worker)
                raise EngineClientError(f"the UniRS worker sent nothing for {limit:g} s while answering "
                                        f"'{op}' and was stopped (log: {self.log_path})")

    @staticmethod
    def _final(msg: dict, op: str, stop_reason: str | None, timeout: float | None) -> dict:
        if stop_reason is not None:  # asked to stop: even an answer that slipped through is dropped
            raise _stop_error(stop_reason, op, timeout)
        if msg["type"] == "result":
            return msg["result"]
        if msg["type"] == "error":
            err = msg["error"]
            raise EngineClientError(protocol.error_text(err["type"], err["message"]), err["type"])
        raise RequestCancelled(f"the UniRS worker cancelled '{op}'")

    def _worker_note(self, worker: _WorkerProcess, msg: dict) -> None:
        """Lines not about a request: ready, a failed start, a bad line we sent, heartbeats while loading."""
        if msg["type"] == "ready":
            if msg["protocol"] != protocol.PROTOCOL_VERSION:
                self._discard(worker)
                raise EngineClientError(f"the UniRS worker ({self.python}) speaks protocol {msg['protocol']}, "
                                        f"this client {protocol.PROTOCOL_VERSION}: update them together")
            worker.ready = True
            info = msg["info"]
            log.info("UniRS worker %s ready: %s on %s", info.get("pid"), info.get("model_id"), info.get("device"))
        elif msg["type"] == "error":
            if worker.ready:
                log.warning("the UniRS worker rejected a line: %s", msg["error"]["message"])
            else:
                worker.startup_error = msg["error"]["message"]

    def _send(self, worker: _WorkerProcess, msg: dict, op: str) -> None:
        line = protocol.encode(msg)  # bad params fail here, in the caller, not as a dead worker
        try:
            worker.write(line)
        except (OSError, ValueError):  # broken pipe, or stdin closed by close(): the worker is gone
            raise self._died(worker, op) from None

    def _died(self, worker: _WorkerProcess, op: str) -> EngineClientError:
        code = worker.wait_exit(5.0)
        self._discard(worker)  # reaps it (killing it if it closed stdout but lingers) and closes files
        if worker.stopped_by_client:
            return EngineClientError(f"the UniRS worker was stopped while answering '{op}'")
        if worker.startup_error:
            return EngineUnavailable(f"the UniRS engine could not start: {worker.startup_error}")
        doing = f"answering '{op}'" if worker.ready else "starting"
        detail = worker.stderr_tail() or f"no output (log: {self.log_path})"
        return WorkerDied(f"UniRS worker exited ({_describe_exit(code)}) while {doing}: {detail}")

    def _discard(self, worker: _WorkerProcess) -> None:
        worker.kill()
        if self._worker is worker:
            self._worker = None


_LIVE: "weakref.WeakSet[SubprocessClient]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """No worker outlives the process that started it (it would also exit on stdin EOF)."""
    for client in list(_LIVE):
        client.close()


# ---- in-process --------------------------------------------------------------------------------

class InProcessClient(EngineClient):
    """The engine loaded into this process on first use (torch imported then)."""

    mode = "inprocess"

    def __init__(self, *, model_dir: str | os.PathLike | None = None, device: str | None = None,
                 clue_model_dir: str | os.PathLike | None = None):
        self._load_kw = {"model_dir": model_dir, "device": device, "clue_model_dir": clue_model_dir}
        self._engine = None
        self._lock = threading.Lock()

    def run(self, op: str, params: dict, *, on_progress: OnProgress | None = None,
            is_cancelled: IsCancelled | None = None, timeout: float | None = None) -> dict:
        from . import server  # the op handlers the worker runs

        params = json.loads(json.dumps(params))  # exactly what a worker would receive (or a TypeError)
        deadline = None if timeout is None else time.monotonic() + timeout

        def stop_reason() -> str | None:
            if is_cancelled and is_cancelled():
                return "cancelled"
            return "timed out" if deadline is not None and time.monotonic() > deadline else None

        with self._lock:
            if reason := stop_reason():
                raise _stop_error(reason, op, timeout)
            try:
                payload = server.run_op(self._loaded(on_progress), op, params,
                                        on_progress or (lambda fraction, message: None),
                                        lambda: stop_reason() is not None)
            except EngineClientError:
                raise
            except Exception as exc:
                if reason := stop_reason():  # e.g. the engine's Cancelled
                    raise _stop_error(reason, op, timeout) from exc
                raise EngineClientError(protocol.error_text(type(exc).__name__, str(exc)), type(exc).__name__) from exc
            if reason := stop_reason():
                raise _stop_error(reason, op, timeout)
        return json.loads(json.dumps(payload))  # the same plain JSON types the worker would send

    def _loaded(self, on_progress: OnProgress | None):
        if self._engine is None:
            missing = [m for m in requirements.modules() if importlib.util.find_spec(m.split(".")[0]) is None]
            if missing:
                raise EngineUnavailable(
                    f"in-process mode needs torch and the engine's other modules in QGIS's own Python "
                    f"({sys.executable}), which lacks '{missing[0]}': set Engine mode to subprocess in the "
                    f"UniRS settings (it uses the managed engine environment; {requirements.SETUP_HINT})")
            if on_progress:
                on_progress(0.0, "loading the model")
            from ..engine import Engine

            try:
                self._engine = Engine.load(**self._load_kw)
            except Exception as exc:
                raise EngineClientError(f"could not load the model: {exc}", type(exc).__name__) from exc
        return self._engine

    def close(self) -> None:
        self._engine = None  # torch frees the weights once no one holds them


def make_client(mode: str = "subprocess", *, model_dir: str | os.PathLike | None = None,
                python: str | None = None, device: str | None = None,
                clue_model_dir: str | os.PathLike | None = None,
                log_path: str | os.PathLike | None = None) -> EngineClient:
    """A client of `mode` "subprocess" (default: torch stays out of QGIS) or "inprocess"."""
    if mode == "subprocess":
        return SubprocessClient(model_dir=model_dir, python=python, device=device,
                                clue_model_dir=clue_model_dir, log_path=log_path)
    if mode == "inprocess":
        return InProcessClient(model_dir=model_dir, device=device, clue_model_dir=clue_model_dir)
    raise ValueError(f"unknown engine mode {mode!r} (expected 'subprocess' or 'inprocess')")
