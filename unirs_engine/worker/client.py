"""The one thing the QGIS plugin uses to reach the engine: a blocking, thread-safe client.

SubprocessClient talks JSON lines (protocol.py) to `python -m unirs_engine.worker`, started lazily with
the Python that runtime/environment.py resolves, in a clean environment, and restarted after a crash.
Several threads may have requests in flight on its one worker: the reader thread routes each response
by id to its request's inbox, so a question asked during a review is answered between the review's
batches (server.py). InProcessClient runs the same op handlers on an Engine in this process, one
request at a time. Both return Result.to_dict() as plain JSON types and raise the same errors, and a
request waiting its turn honours its is_cancelled within POLL_S and its timeout on time.
Both make the path params (PATH_PARAMS) absolute against the caller's working folder before the
request leaves: the worker runs in its cache folder, where a relative path would name another file.
The worker's stderr goes to its log (worker.log by default), rotated at each start: the last
LOG_RUNS runs are kept (worker.log, worker.log.1, ...).
Importing this module imports no torch (QGIS imports it).
"""

from __future__ import annotations

import atexit
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

from ..errors import UnirsError
from ..runtime import requirements
from ..runtime.environment import EngineNotSetUp, clean_env, resolve_engine_python
from ..runtime.paths import cache_dir
from . import protocol

log = logging.getLogger("unirs.client")

POLL_S = 0.1  # how often a waiting call looks at is_cancelled() (a timeout is watched to the moment)
LOG_RUNS = 4  # worker logs kept: this run's and the three before (a crash's log survives the restart)
# The params of each op that name files (a path, or a list of paths): made absolute by the client.
PATH_PARAMS = {"ask": ("image",), "change": ("before", "after"), "classify": ("frames",),
               "review": ("before", "after", "out"), "review_archive": ("manifest", "out_dir")}

OnProgress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]


class EngineClientError(UnirsError, RuntimeError):
    """The engine could not answer; str() is a one-line message for the user."""

    def __init__(self, message: str, error_type: str | None = None):
        super().__init__(message)
        self.error_type = error_type  # the engine-side exception name, when there was one


class WorkerDied(EngineClientError):
    """The worker process exited while starting or answering; the next call starts a fresh one."""


class RequestCancelled(EngineClientError):
    """is_cancelled() turned True; nothing was answered."""


class RequestTimedOut(EngineClientError):
    """The request's timeout passed; the worker was told to cancel it and nothing was answered."""


class EngineUnavailable(EngineClientError):
    """No Python can run the engine here (not set up, or missing modules); str() says how to fix it."""


# ---- the shared interface ---------------------------------------------------------------------------

class EngineClient(ABC):
    """ask / describe_change / classify_sequence / run / info / close, whichever way the engine runs."""

    mode: str

    @abstractmethod
    def run(self, op: str, params: dict, *, on_progress: OnProgress | None = None,
            is_cancelled: IsCancelled | None = None, timeout: float | None = None) -> dict:
        """Run op with JSON params (relative paths are the caller's: made absolute here); `timeout`:
        seconds, from this call, after which the request is cancelled and raises "did not answer"
        (an answer that comes later is dropped), whatever heartbeats the worker sends meanwhile."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine (stop the worker); a later call starts again."""

    def info(self) -> dict:
        """engine.info() plus "mode", "python", "pid" (and "env_keys" of the engine's process)."""
        return {**self.run("info", {}), "mode": self.mode}

    def ask(self, image: str, question: str, *, bounds=None, bounds_crs: str | None = None,
            bands: Sequence[int] | None = None, clue: bool = False, short_answer: bool = True,
            on_progress: OnProgress | None = None, is_cancelled: IsCancelled | None = None,
            timeout: float | None = None) -> dict:
        params = {"image": os.fspath(image), "question": question, "clue": clue, "short_answer": short_answer,
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

    def review_archive(self, manifest: str, out_dir: str, *, options: dict | None = None, ray: str | None = None,
                       actors: int | None = None, on_progress: OnProgress | None = None,
                       is_cancelled: IsCancelled | None = None, timeout: float | None = None) -> dict:
        """Review every pair of a manifest into out_dir (review/archive.py), on Ray when `ray` is a cluster
        address; returns ArchiveSummary.to_dict(). A cancel raises RequestCancelled; a rerun resumes."""
        params = {"manifest": os.fspath(manifest), "out_dir": os.fspath(out_dir), "options": dict(options or {}),
                  "ray": ray, "actors": actors}
        return self.run("review_archive", params, on_progress=on_progress, is_cancelled=is_cancelled,
                        timeout=timeout)

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _region(bounds, bounds_crs, bands) -> dict:
    return {"bounds": [float(v) for v in bounds] if bounds is not None else None,
            "bounds_crs": str(bounds_crs) if bounds_crs is not None else None,
            "bands": [int(b) for b in bands] if bands is not None else None}


def absolute_paths(op: str, params: dict) -> dict:
    """params with op's path params (PATH_PARAMS) made absolute against this process's working folder;
    GDAL virtual paths (/vsi...), URLs, GDAL connection strings and empty values stay as they are, and
    so does a value of another type (the worker names it)."""
    names = [name for name in PATH_PARAMS.get(op, ()) if name in params]
    if not names:
        return params
    params = dict(params)
    for name in names:
        value = params[name]
        if isinstance(value, (list, tuple)):
            params[name] = [_absolute(v) for v in value]
        else:
            params[name] = _absolute(value)
    return params


def _absolute(value):
    if not isinstance(value, (str, os.PathLike)):
        return value
    path = os.fspath(value)
    if not isinstance(path, str) or not path or protocol.is_virtual_location(path):
        return path
    return os.path.abspath(path)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _stop_reason(is_cancelled: IsCancelled | None, deadline: float | None) -> str | None:
    """"cancelled", "timed out" (time.monotonic() at or past deadline) or None: why a request should stop."""
    if is_cancelled and is_cancelled():
        return "cancelled"
    return "timed out" if deadline is not None and time.monotonic() >= deadline else None


def _wait_s(deadline: float | None) -> float:
    """How long a waiting call may block before looking again: POLL_S, or less up to the deadline."""
    return POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))


def _stop_error(reason: str, op: str, timeout: float | None) -> EngineClientError:
    if reason == "cancelled":
        return RequestCancelled(f"'{op}' was cancelled")
    return RequestTimedOut(f"the UniRS engine did not answer '{op}' within {timeout:g} s")


def _acquire(lock: threading.Lock, stop_reason: Callable[[], str | None], op: str, timeout: float | None,
             deadline: float | None = None) -> None:
    """Take `lock`, held by another request, looking at stop_reason() every POLL_S (and at the
    deadline) while waiting."""
    while not lock.acquire(timeout=_wait_s(deadline)):
        if reason := stop_reason():
            raise _stop_error(reason, op, timeout)


# ---- the local worker process ---------------------------------------------------------------------

_EOF = object()  # put in every open inbox when the worker's stdout closes


class _WorkerProcess:
    """One running worker: its pipes, its log, and a reader thread that routes each stdout message by
    id to the inbox of the request it answers (messages with id null are the worker's own)."""

    def __init__(self, command: list[str], log_path: Path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        _rotate_log(log_path, LOG_RUNS)
        self._log = open(log_path, "wb")
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        self._log.flush()
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
        self.python = command[0]
        self.ready = False             # the "ready" line arrived
        self.greeted = False           # hello answered: both ends speak the same protocol
        self.startup_error: str | None = None
        self.stopped_by_client: str | None = None  # why the client stopped it, if it did
        self.heard = time.monotonic()  # when the last message came (heartbeats included)
        self._inboxes: dict[str, queue.Queue] = {}  # request id -> its messages
        self._inbox_lock = threading.Lock()
        self._eof = False
        self._write_lock = threading.Lock()
        threading.Thread(target=self._read, name=f"unirs-worker-{self.proc.pid}", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                msg = protocol.decode(line)
            except protocol.ProtocolError as exc:
                log.warning("skipped a line from the UniRS worker that is not protocol: %s", exc)
                continue
            self.heard = time.monotonic()
            if msg["id"] is None:
                self._note(msg)
                continue
            with self._inbox_lock:
                inbox = self._inboxes.get(msg["id"])
            if inbox is not None:  # else: a request that stopped waiting (or a cancel's own id)
                inbox.put(msg)
        self.proc.stdout.close()
        with self._inbox_lock:
            self._eof = True
            inboxes = list(self._inboxes.values())
        for inbox in inboxes:
            inbox.put(_EOF)

    def _note(self, msg: dict) -> None:
        """Lines not about a request: ready, a failed start, a bad line we sent, heartbeats while loading."""
        if msg["type"] == "ready":
            if msg["protocol"] != protocol.PROTOCOL_VERSION:
                self.startup_error = (f"the worker ({self.python}) speaks protocol {msg['protocol']}, "
                                      f"this client {protocol.PROTOCOL_VERSION}: update them together")
                self.proc.kill()  # its stdout closes: every waiting request fails with startup_error
                return
            self.ready = True
            info = msg["info"]
            log.info("UniRS worker %s ready: %s on %s", info.get("pid"), info.get("model_id"), info.get("device"))
        elif msg["type"] == "error":
            if self.ready:
                log.warning("the UniRS worker rejected a line: %s", msg["error"]["message"])
            else:
                self.startup_error = msg["error"]["message"]

    def open_inbox(self, rid: str) -> queue.Queue:
        """The queue that will receive request `rid`'s messages (then _EOF if stdout closes)."""
        inbox: queue.Queue = queue.Queue()
        with self._inbox_lock:
            if self._eof:
                inbox.put(_EOF)
            self._inboxes[rid] = inbox
        return inbox

    def close_inbox(self, rid: str) -> None:
        with self._inbox_lock:
            self._inboxes.pop(rid, None)

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

    def kill(self, reason: str | None = None) -> None:
        """Kill it (if alive) and reap it; `reason` is what the requests in flight are told."""
        if self.alive():
            self.stopped_by_client = self.stopped_by_client or reason
            self.proc.kill()
        self.proc.wait()
        self._close_files()

    def stop(self, grace: float = 5.0) -> None:
        """Ask politely ("shutdown", stdin EOF), then terminate, then kill."""
        self.stopped_by_client = "the client was closed"
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


def _rotate_log(path: Path, keep: int) -> None:
    """path -> path.1 -> ... -> path.<keep-1>; the oldest run's log falls off."""
    try:
        for i in range(keep - 1, 0, -1):
            older = path if i == 1 else path.with_name(f"{path.name}.{i - 1}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i}"))
    except OSError as exc:  # e.g. Windows, another worker still writing it: this run overwrites it
        log.warning("could not keep the previous worker log %s: %s", path, exc)


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
        self._start_lock = threading.Lock()  # one thread starts (and greets) a worker; writes have their own
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
        if is_cancelled and is_cancelled():
            raise RequestCancelled(f"'{op}' was cancelled")
        params = absolute_paths(op, params)
        deadline = _deadline(timeout)  # the start of a worker counts: the caller waits for it too
        worker = self._greeted_worker(op, on_progress, is_cancelled, deadline, timeout)
        return self._exchange(worker, op, params, on_progress, is_cancelled, deadline, timeout)

    def _greeted_worker(self, op: str, on_progress: OnProgress | None, is_cancelled: IsCancelled | None,
                        deadline: float | None, timeout: float | None) -> _WorkerProcess:
        """The worker, started and greeted first if need be (other callers wait, minding their cancel
        and deadline; a greeting cut short by them is repeated by the next call)."""
        _acquire(self._start_lock, lambda: _stop_reason(is_cancelled, deadline), op, timeout, deadline)
        try:
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
                try:
                    self._exchange(worker, "hello", {"protocol": protocol.PROTOCOL_VERSION}, None, is_cancelled,
                                   deadline, timeout)
                except RequestTimedOut:  # the deadline passed while the model loaded: op's timeout
                    raise _stop_error("timed out", op, timeout) from None
                worker.greeted = True
            return worker
        finally:
            self._start_lock.release()

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
        # No lock: closing must not wait for an answer in flight (plugin unload); those fail.
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def _exchange(self, worker: _WorkerProcess, op: str, params: dict, on_progress: OnProgress | None,
                  is_cancelled: IsCancelled | None, deadline: float | None, timeout: float | None) -> dict:
        """Send one request and wait for its final response (other threads' requests may be in
        flight on the same worker meanwhile)."""
        if reason := _stop_reason(is_cancelled, deadline):  # e.g. the deadline passed while the model loaded
            raise _stop_error(reason, op, timeout)
        rid = f"{op}-{next(self._ids)}"
        inbox = worker.open_inbox(rid)
        try:
            self._send(worker, protocol.request(rid, op, params), op)
            return self._await(worker, rid, inbox, op, on_progress, is_cancelled, deadline, timeout)
        finally:
            worker.close_inbox(rid)

    def _await(self, worker: _WorkerProcess, rid: str, inbox: queue.Queue, op: str,
               on_progress: OnProgress | None, is_cancelled: IsCancelled | None, deadline: float | None,
               timeout: float | None) -> dict:
        """Request rid's final response from its inbox, minding cancel, the deadline (to the moment,
        heartbeats or not: at the deadline the worker is told to cancel, and an answer arriving after
        it is dropped) and death."""
        stop_reason, give_up_at = None, 0.0  # "cancelled" | "timed out"; when to stop waiting for it
        while True:
            try:
                msg = inbox.get(timeout=_wait_s(None if stop_reason else deadline))
            except queue.Empty:
                msg = None
            if msg is _EOF:
                raise self._died(worker, op)
            if msg is not None:
                if msg["type"] == "progress":
                    if on_progress and stop_reason is None:
                        on_progress(msg["fraction"], msg["message"])
                elif msg["type"] in protocol.FINAL_TYPES:
                    return self._final(msg, op, stop_reason or _stop_reason(is_cancelled, deadline), timeout)
            now = time.monotonic()
            if stop_reason is None:
                stop_reason = _stop_reason(is_cancelled, deadline)
                if stop_reason:
                    self._send(worker, protocol.request(f"{rid}-cancel", "cancel", {"target": rid}), op)
                    give_up_at = now + self.cancel_grace
            elif now > give_up_at:
                log.warning("the UniRS worker did not confirm the cancel of %s in %g s: killing it", rid,
                            self.cancel_grace)
                self._discard(worker, f"it did not confirm the cancel of '{op}' within {self.cancel_grace:g} s")
                raise _stop_error(stop_reason, op, timeout)
            limit = self.inactivity_timeout if worker.ready else self.startup_timeout
            if now - worker.heard > limit:
                self._discard(worker, f"it sent nothing for {limit:g} s (log: {self.log_path})")
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
            raise EngineClientError(protocol.error_text(err["message"]), err["type"])
        raise RequestCancelled(f"the UniRS worker cancelled '{op}'")

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
            return EngineClientError(f"the UniRS worker was stopped while answering '{op}': "
                                     f"{worker.stopped_by_client}")
        if worker.startup_error:
            return EngineUnavailable(f"the UniRS engine could not start: {worker.startup_error}")
        doing = f"answering '{op}'" if worker.ready else "starting"
        detail = worker.stderr_tail() or f"no output (log: {self.log_path})"
        return WorkerDied(f"UniRS worker exited ({_describe_exit(code)}) while {doing}: {detail}")

    def _discard(self, worker: _WorkerProcess, reason: str | None = None) -> None:
        worker.kill(reason)
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
    """The engine loaded into this process on first use (torch imported then).

    Requests run one at a time in their callers' threads: a question waits for a running review to
    end (no interleaving here, unlike the worker), but its cancel or timeout is honoured while it waits."""

    mode = "inprocess"

    def __init__(self, *, model_dir: str | os.PathLike | None = None, device: str | None = None,
                 clue_model_dir: str | os.PathLike | None = None):
        self._load_kw = {"model_dir": model_dir, "device": device, "clue_model_dir": clue_model_dir}
        self._engine = None
        self._lock = threading.Lock()

    def run(self, op: str, params: dict, *, on_progress: OnProgress | None = None,
            is_cancelled: IsCancelled | None = None, timeout: float | None = None) -> dict:
        from . import server  # the op handlers the worker runs

        # exactly what a worker would receive (or a TypeError)
        params = json.loads(json.dumps(absolute_paths(op, params)))
        deadline = _deadline(timeout)

        def stop_reason() -> str | None:
            return _stop_reason(is_cancelled, deadline)

        _acquire(self._lock, stop_reason, op, timeout, deadline)
        try:
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
                raise EngineClientError(protocol.describe_error(exc), type(exc).__name__) from exc
            if reason := stop_reason():
                raise _stop_error(reason, op, timeout)
        finally:
            self._lock.release()
        return json.loads(json.dumps(payload))  # the same plain JSON types the worker would send

    def _loaded(self, on_progress: OnProgress | None):
        if self._engine is None:
            missing = requirements.missing_here()
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
