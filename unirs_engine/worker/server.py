"""The engine worker: loads one Engine and answers protocol requests on stdin/stdout.

    python -u -m unirs_engine.worker --model DIR [--device D] [--clue-model DIR] [--heartbeat S]

Protocol lines go to a private duplicate of the original stdout; fd 1 and sys.stdout are pointed at
stderr before anything else is imported, so prints from libraries (or C code) cannot corrupt them.
A reader thread takes stdin lines into a queue, so a "cancel" is seen while a request runs, and a
cancelled request still in the queue is dropped and answered "cancelled" at once. Requests run in the
main thread only (the engine and its torch model are single-threaded), one at a time, except that a
long op (LONG_OPS: "review", possibly hours) serves the short requests waiting in the queue each time
it reports progress, i.e. between its batches, when the engine is free: a question asked during a
review is answered after at most the review's current batch. Another long op waits its turn. Heartbeats
go out for every request in progress (the long op and the one it serves). stdin EOF or "shutdown" ends
the worker with code 0; a model that fails to load gives an "error" line with id null and code 2.
Either way the reader and heartbeat threads are stopped and joined first, and the process then ends
with os._exit (exit_process): a thread still inside Python while the interpreter finalises (a garbage
collection freeing torch tensors) is torn down through torch's C++ frames, and std::terminate aborts
the process (SIGABRT, "terminate called without an active exception") instead of exiting 0.

Params are checked before anything runs (ParamReader): a missing, mistyped, relative-path or unknown
param is a RequestError whose one-line message names the op, the param and what it must be.

Ops are looked up in a registry: `register_op(name, handler)` with
`handler(engine, params, progress, is_cancelled) -> dict`. The in-process client runs the same
handlers through `run_op`, so both clients answer alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import traceback
from collections import deque
from typing import Any, BinaryIO, Callable

from ..argtypes import add_model_arguments
from ..errors import is_expected
from . import protocol

log = logging.getLogger("unirs.worker")

Progress = Callable[[float, str], None]
Handler = Callable[[Any, dict, Progress, Callable[[], bool]], dict]
OPS: dict[str, Handler] = {}
# Ops that may run for hours; their handlers call progress only where the engine is free (between
# batches), and the worker serves waiting short requests there.
LONG_OPS = ("review", "review_archive")


def register_op(name: str, handler: Handler) -> None:
    """Make `name` an op of the worker (and of the in-process client)."""
    if name in protocol.CONTROL_OPS:
        raise ValueError(f"'{name}' is a control op of the protocol and cannot be registered")
    OPS[name] = handler


def run_op(engine, op: str, params: dict, progress: Progress, is_cancelled: Callable[[], bool]) -> dict:
    """Run one registered op; an unknown op is a RequestError naming the known ones."""
    handler = OPS.get(op)
    if handler is None:
        raise protocol.RequestError(f"unknown op '{op}' (known: {', '.join(sorted(OPS))})")
    progress(0.0, f"{op}: started")
    return handler(engine, params, progress, is_cancelled)


# ---- built-in ops ---------------------------------------------------------------------------------

class ParamReader:
    """Typed access to one request's params: each getter returns the value or raises a RequestError
    saying "<op>: '<name>' must be <what>, got <value>"; done() refuses params no getter asked for
    (a misspelt 'boundz' must not silently answer about the whole image)."""

    def __init__(self, op: str, params: dict):
        self.op, self.params, self._read = op, params, set()

    def _get(self, name: str, required: bool):
        self._read.add(name)
        value = self.params.get(name)
        if value in (None, "", []):
            if required:
                raise protocol.RequestError(f"op '{self.op}' needs params.{name}")
            return None
        return value

    def _bad(self, name: str, what: str, value) -> protocol.RequestError:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        return protocol.RequestError(f"{self.op}: '{name}' must be {what}, got {shown}")

    def text(self, name: str, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is not None and not isinstance(value, str):
            raise self._bad(name, "a string", value)
        return value

    def path(self, name: str, required: bool = True) -> str | None:
        """A file path: absolute (the worker's folder is not the caller's: clients make paths absolute),
        or a GDAL virtual path (/vsi...), a URL or a GDAL connection string ("NETCDF:...")."""
        value = self.text(name, required)
        if value is not None and not _is_location(value):
            raise self._bad(name, "an absolute path (the worker does not know the caller's folder)", value)
        return value

    def paths(self, name: str) -> str | list[str]:
        """One path (a video) or a list of paths (dated rasters)."""
        value = self._get(name, True)
        if isinstance(value, str):
            return self.path(name)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise self._bad(name, "a path or a list of paths", value)
        bad = next((v for v in value if not _is_location(v)), None)
        if bad is not None:
            raise self._bad(name, "absolute paths (the worker does not know the caller's folder)", bad)
        return value

    def texts(self, name: str) -> list[str] | None:
        value = self._get(name, False)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise self._bad(name, "a list of strings", value)
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self._get(name, False)
        if value is not None and not isinstance(value, bool):
            raise self._bad(name, "true or false", value)
        return default if value is None else value

    def count(self, name: str) -> int | None:
        """A whole number >= 1 (or absent)."""
        value = self._get(name, False)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise self._bad(name, "a whole number >= 1", value)
        return value

    def region(self) -> dict:
        """bounds (4 numbers: xmin ymin xmax ymax), bounds_crs (a string), bands (1-based band numbers)."""
        bounds = self._get("bounds", False)
        if bounds is not None and not (isinstance(bounds, list) and len(bounds) == 4
                                       and all(_is_number(v) for v in bounds)):
            raise self._bad("bounds", "4 numbers (xmin, ymin, xmax, ymax)", bounds)
        bands = self._get("bands", False)
        if bands is not None and not (isinstance(bands, list) and all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bands)):
            raise self._bad("bands", "a list of band numbers (1, 2, ...)", bands)
        return {"bounds": tuple(float(v) for v in bounds) if bounds is not None else None,
                "bounds_crs": self.text("bounds_crs"), "bands": bands}

    def done(self) -> None:
        unknown = sorted(set(self.params) - self._read)
        if unknown:
            raise protocol.RequestError(f"{self.op}: unknown param(s) {', '.join(map(repr, unknown))}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_location(value: str) -> bool:
    return os.path.isabs(value) or protocol.is_virtual_location(value)


def _hello(engine, params, progress, is_cancelled) -> dict:
    theirs = params.get("protocol")
    if theirs != protocol.PROTOCOL_VERSION:
        raise protocol.RequestError(f"client speaks protocol {theirs}, this worker speaks "
                                    f"{protocol.PROTOCOL_VERSION}: update the plugin and the engine together")
    return {"protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid()}


def _info(engine, params, progress, is_cancelled) -> dict:
    # env_keys: which variables reached this process (diagnostics of the clean worker environment).
    return {**engine.info(), "pid": os.getpid(), "python": sys.executable,
            "protocol": protocol.PROTOCOL_VERSION, "env_keys": sorted(os.environ)}


def _ask(engine, params, progress, is_cancelled) -> dict:
    p = ParamReader("ask", params)
    args = dict(image=p.path("image"), question=p.text("question", required=True), **p.region(),
                clue=p.flag("clue"), short_answer=p.flag("short_answer", default=True),
                max_new_tokens=p.count("max_new_tokens"))
    p.done()
    return engine.ask(**args, is_cancelled=is_cancelled).to_dict()


def _change(engine, params, progress, is_cancelled) -> dict:
    p = ParamReader("change", params)
    args = dict(before=p.path("before"), after=p.path("after"), instruction=p.text("instruction"), **p.region(),
                clue=p.flag("clue"), max_new_tokens=p.count("max_new_tokens"))
    p.done()
    return engine.describe_change(**args, is_cancelled=is_cancelled).to_dict()


def _classify(engine, params, progress, is_cancelled) -> dict:
    p = ParamReader("classify", params)
    args = dict(frames=p.paths("frames"), classes=p.texts("classes"), clue=p.flag("clue"),
                max_new_tokens=p.count("max_new_tokens"))
    p.done()
    return engine.classify_sequence(**args, is_cancelled=is_cancelled).to_dict()


def _review(engine, params, progress, is_cancelled) -> dict:
    from ..review import ReviewJob, run_review

    p = ParamReader("review", params)
    for name in ("before", "after", "out"):  # the other keys are ReviewJob's to check
        p.path(name)
    job = ReviewJob.from_dict({k: v for k, v in params.items() if k != "model"})  # the worker's model reviews
    last = [0.0, "review: started"]   # repeated at each pause: reporting is where waiting requests run

    def report(done: int, total: int) -> None:
        last[:] = [done / total, f"tile {done}/{total}"]
        progress(*last)

    summary = run_review(engine, job, is_cancelled=is_cancelled, progress=report, pause=lambda: progress(*last))
    return summary.to_dict()


def _review_archive(engine, params, progress, is_cancelled) -> dict:
    from ..review.archive import archive_options, run_archive
    from ..review.command import open_pool

    p = ParamReader("review_archive", params)
    manifest, out_dir, address, actors = p.path("manifest"), p.path("out_dir"), p.text("ray"), p.count("actors")
    options = p._get("options", False) or {}
    if not isinstance(options, dict):
        raise p._bad("options", "an object of review options", options)
    p.done()
    options = archive_options(options)
    # On Ray the actors load the worker's checkpoint; without, this engine reviews (progress is where
    # waiting short requests are served, as for "review").
    pool = open_pool(address, model=str(engine.model.path), device=None, actors=actors, engine=engine)
    try:
        summary = run_archive(manifest, out_dir, pool, options, is_cancelled=is_cancelled,
                              progress=lambda done, total, message: progress(done / max(total, 1), message))
    finally:
        pool.close()
    return summary.to_dict()


for _name, _handler in (("hello", _hello), ("info", _info), ("ask", _ask), ("change", _change),
                        ("classify", _classify), ("review", _review), ("review_archive", _review_archive)):
    register_op(_name, _handler)


# ---- the serving loop -----------------------------------------------------------------------------

class Worker:
    """Request queue, cancel bookkeeping and heartbeats around one engine (set once loaded)."""

    def __init__(self, out: BinaryIO, heartbeat_s: float = 5.0):
        self.engine = None
        self._out = out
        self._write_lock = threading.Lock()
        self._state = threading.Condition()      # guards _queue and _running; notified on arrivals
        self._queue: deque[dict | None] = deque()  # requests not started yet; None: stdin ended
        # Requests in the main thread (a long op, and a short one it serves) -> their cancel events.
        self._running: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._heartbeat_s = heartbeat_s
        self._threads: list[threading.Thread] = []

    def send(self, msg: dict) -> None:
        line = protocol.encode(msg).encode("utf-8")
        with self._write_lock:
            self._out.write(line)
            self._out.flush()

    def start_threads(self, stdin: BinaryIO) -> None:
        # Daemons only so that a failed start cannot hang on them; stop() joins them.
        self._threads = [threading.Thread(target=self._read, args=(stdin,), name="unirs-reader", daemon=True),
                         threading.Thread(target=self._beat, name="unirs-heartbeat", daemon=True)]
        for thread in self._threads:
            thread.start()

    # reader thread
    def _read(self, stdin: BinaryIO) -> None:
        try:
            for raw in stdin:
                if raw.strip():
                    self._take(raw)
        finally:
            self._enqueue(None)  # EOF (or a dead client): finish what is queued, then exit

    def _take(self, raw: bytes) -> None:
        try:
            msg = protocol.decode(raw)
            if "type" in msg:
                raise protocol.ProtocolError(f"the worker takes requests, got a '{msg['type']}' response")
        except protocol.ProtocolError as exc:
            log.warning("bad request line: %s", exc)
            self.send(protocol.error(None, "ProtocolError", str(exc)))
            return
        if msg["op"] == "cancel":
            self._cancel_request(msg["params"]["target"])
        else:
            self._enqueue(msg)

    def _enqueue(self, msg: dict | None) -> None:
        with self._state:
            self._queue.append(msg)
            self._state.notify()

    def _cancel_request(self, target: str) -> None:
        with self._state:
            if target in self._running:
                self._running[target].set()  # the handler's is_cancelled() turns True
                return
            queued = next((m for m in self._queue if m is not None and m["id"] == target), None)
            if queued is None:
                log.info("cancel of %s ignored: not queued or running", target)
                return
            self._queue.remove(queued)
        log.info("%s cancelled while queued", target)
        self.send(protocol.cancelled(target))

    # heartbeat thread
    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            with self._state:  # while loading: one heartbeat with id None
                ids = list(self._running) if self.engine is not None else [None]
            try:
                for rid in ids:
                    self.send(protocol.heartbeat(rid))
            except (OSError, ValueError):  # the client is gone (or stop() closed our stdout)
                return

    # main thread
    def serve(self, engine) -> int:
        self.engine = engine
        self.send(protocol.ready(_info(engine, {}, None, None)))
        while True:
            with self._state:
                self._state.wait_for(lambda: self._queue)
                msg = self._queue[0]
                if msg is None or msg["op"] == "shutdown":
                    break
                self._start(msg)
            self._handle(msg)
        if msg is not None:
            self.send(protocol.result(msg["id"], {}))
        return 0

    def serve_waiting(self) -> None:
        """Run the short requests waiting now, in order, then return (to the long op that called).
        Other long ops stay queued; nothing queued after a shutdown or stdin's end runs."""
        while (msg := self._take_short()) is not None:
            self._handle(msg)

    def _take_short(self) -> dict | None:
        """The first waiting short request, started; None when none comes before a shutdown or EOF."""
        with self._state:
            for msg in self._queue:
                if msg is None or msg["op"] == "shutdown":
                    return None
                if msg["op"] not in LONG_OPS:
                    self._start(msg)
                    return msg
        return None

    def _start(self, msg: dict) -> None:
        """Dequeue msg and mark it running at once, so no cancel falls between (hold _state)."""
        self._queue.remove(msg)
        self._running[msg["id"]] = threading.Event()

    def _handle(self, msg: dict) -> None:
        rid, op = msg["id"], msg["op"]
        cancel = self._running[rid]

        def progress(fraction: float, message: str) -> None:
            self.send(protocol.progress(rid, fraction, message))
            if op in LONG_OPS:
                self.serve_waiting()  # between the long op's batches: the engine is free

        try:
            payload = run_op(self.engine, op, msg["params"], progress, cancel.is_set)
            reply = protocol.cancelled(rid) if cancel.is_set() else protocol.result(rid, payload)
        except Exception as exc:  # any failure is an answer; the worker keeps serving
            if cancel.is_set():  # e.g. the engine's Cancelled
                reply = protocol.cancelled(rid)
            else:
                message = protocol.describe_error(exc)
                if is_expected(exc):
                    log.warning("op '%s' (%s) refused: %s", op, rid, message)  # the input's fault: no traceback
                else:
                    log.error("op '%s' (%s) failed:\n%s", op, rid, traceback.format_exc())
                reply = protocol.error(rid, type(exc).__name__, message)
        with self._state:
            del self._running[rid]
        try:
            self.send(reply)
        except (TypeError, ValueError) as exc:  # the payload is not JSON-serialisable
            self.send(protocol.error(rid, type(exc).__name__, f"op '{op}' returned an unserialisable answer: {exc}"))

    def stop(self, grace: float = 2.0) -> None:
        """Stop the heartbeat thread and join both threads, `grace` seconds at most each. The reader
        ends at stdin's EOF (a client's close() sends it right after "shutdown"); one still blocked
        in read() (stdin kept open), or a heartbeat blocked writing to a client that reads nothing,
        is left to exit_process, which ends the process without finalising the interpreter."""
        self._stop.set()
        for thread in self._threads:
            thread.join(grace)
            if thread.is_alive():
                log.info("%s still blocked at exit", thread.name)


def _take_stdout() -> BinaryIO:
    """A private duplicate of stdout for protocol lines; fd 1 and sys.stdout now go to stderr."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb", buffering=0)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m unirs_engine.worker", description=__doc__.split("\n")[0])
    add_model_arguments(p, dtype=False, clue_model="base VLM directory that writes clues")
    p.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats while busy")
    return p.parse_args(argv)


def _fail(worker: Worker, exc: Exception, message: str) -> int:
    """Report a failed start on the protocol (id null) and in the log; exit code 2."""
    log.error("%s\n%s", message, traceback.format_exc())
    worker.send(protocol.error(None, type(exc).__name__, protocol.error_text(message)))
    return 2


def main(argv: list[str] | None = None) -> int:
    """Serve until stdin's EOF or "shutdown" (0), or fail to start (2); the threads are stopped and
    joined before it returns. Run as a program, end with exit_process(main())."""
    out = _take_stdout()
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s unirs-worker %(message)s")
    worker = Worker(out, heartbeat_s=args.heartbeat)
    # A private reader of fd 0: at exit Python flushes sys.stdin, and would abort (SIGABRT) if the
    # reader thread were blocked inside that very object.
    worker.start_threads(os.fdopen(os.dup(0), "rb"))
    try:
        return _load_and_serve(worker, args)
    except BrokenPipeError:  # the client went away mid-answer
        return 0
    finally:
        worker.stop()


def _load_and_serve(worker: Worker, args: argparse.Namespace) -> int:
    try:
        from ..engine import Engine  # after taking stdout: torch/transformers may print on import
    except ImportError as exc:
        from ..runtime.environment import is_managed_python
        from ..runtime.requirements import missing_module_message

        return _fail(worker, exc, missing_module_message(exc.name or str(exc), sys.executable,
                                                         is_managed_python(sys.executable)))
    try:
        engine = Engine.load(args.model, device=args.device, clue_model_dir=args.clue_model)
    except Exception as exc:
        return _fail(worker, exc, f"could not load the model: {exc}")
    log.info("serving %s on %s (pid %d)", engine.model.model_id, engine.model.device, os.getpid())
    return worker.serve(engine)


def exit_process(code: int) -> None:
    """End the worker process with `code` once its output is flushed, without finalising the
    interpreter: nothing is left to clean up (answers sent, threads joined, review GeoPackages
    committed), and finalisation is where torch's C++ objects abort the process (module docstring)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)
