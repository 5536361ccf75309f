"""Several requests in flight on one engine client (issue 15): a question asked while a review runs is
answered between the review's batches, a request waiting its turn honours its cancel within a second,
a dead worker fails every request in flight, and answers never cross between threads.

A real worker process on the tiny checkpoint and GDAL-written rasters. Reviews are made long (64 tiles,
one per batch, every tile captioned: several seconds) so that other requests overlap them; each test
cancels its review once its point is made.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.review import ReviewJob
from unirs_engine.testing.rasters import pattern, write_raster
from unirs_engine.worker import protocol
from unirs_engine.worker.client import InProcessClient, RequestCancelled, SubprocessClient, WorkerDied
from unirs_engine.worker.server import Worker

CANCEL_WITHIN_S = 1.0  # issue 15: a waiting request's cancel works within a second
_seeds = itertools.count(100)  # each review its own pixels: no cached caption shortens it


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    client = SubprocessClient(model_dir=tiny_checkpoint, python=sys.executable, device="cpu",
                              log_path=tmp_path_factory.mktemp("concurrency") / "worker.log", cancel_grace=60.0)
    client.info()
    yield client
    client.close()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[str]:
    """Four rasters of different sizes (each answer's georef says which one it was asked about)."""
    folder = tmp_path_factory.mktemp("concurrency-scenes")
    return [str(write_raster(folder / f"scene{i}.tif", pattern(32 + 16 * i, 48, seed=i))) for i in range(4)]


def long_review(folder: Path, *, size: int = 256, tile_size: int = 32) -> dict:
    before, after = write_mosaic_pair(folder / "mosaic", size=size, tile=64, seed=next(_seeds))
    return ReviewJob(str(before), str(after), str(folder / f"review-{tile_size}.gpkg"), tile_size=tile_size,
                     batch_size=1, caption_all=True).to_dict()


class InThread:
    """fn() in a daemon thread; result() joins it and returns its value or raises its exception."""

    def __init__(self, fn: Callable[[], Any]):
        self.finished_at: float | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:
            self._error = exc
        self.finished_at = time.monotonic()

    def result(self, timeout: float = 120.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout:g} s"
        if self._error is not None:
            raise self._error
        return self._value


class ReviewProgress:
    """on_progress of a review: tiles done so far, and an event once its first batch is committed."""

    def __init__(self):
        self.done, self.total = 0, None
        self.running = threading.Event()

    def __call__(self, fraction: float, message: str) -> None:
        if m := re.fullmatch(r"tile (\d+)/(\d+)", message):
            self.done, self.total = int(m[1]), int(m[2])
            if self.done > 0:
                self.running.set()


class CancelFlag:
    """A request's is_cancelled() that the test turns True once the request is seen waiting (polling it)."""

    def __init__(self):
        self.polled = threading.Event()
        self.turned_at: float | None = None

    def __call__(self) -> bool:
        self.polled.set()
        return self.turned_at is not None

    def turn_true_while_waiting(self) -> None:
        assert self.polled.wait(60), "the request never looked at is_cancelled"
        self.polled.clear()  # polled again: past the first look in run(), so waiting for its turn
        assert self.polled.wait(60), "the request looked at is_cancelled once, then no more"
        self.turned_at = time.monotonic()


def cancel_while_waiting(request: Callable[[CancelFlag], Any], op: str) -> None:
    """request(is_cancelled) in a thread; once it waits its turn its is_cancelled turns True, and it
    must raise RequestCancelled within CANCEL_WITHIN_S."""
    flag = CancelFlag()
    waiting = InThread(lambda: request(flag))
    flag.turn_true_while_waiting()
    with pytest.raises(RequestCancelled, match=f"'{op}' was cancelled"):
        waiting.result()
    assert waiting.finished_at - flag.turned_at < CANCEL_WITHIN_S


def start_review(client, job: dict) -> tuple[InThread, ReviewProgress, threading.Event]:
    """The review running in another thread, once its first batch is in: (thread, progress, stop)."""
    progress, stop = ReviewProgress(), threading.Event()
    review = InThread(lambda: client.review(job, on_progress=progress, is_cancelled=stop.is_set))
    assert progress.running.wait(120), "the review never committed a batch"
    return review, progress, stop


def stop_review(review: InThread, stop: threading.Event) -> None:
    stop.set()
    with pytest.raises(RequestCancelled):
        review.result()


# ---- the worker process through SubprocessClient ----------------------------------------------

def test_concurrent_asks_each_get_their_own_answer(client, scenes):
    questions = [f"Is there a {thing}?" for thing in ("road", "lake", "forest", "bridge")]
    alone = {(s, q): client.ask(s, q) for s, q in zip(scenes, questions)}
    threads = {key: InThread(lambda key=key: [client.ask(*key) for _ in range(3)]) for key in alone}
    for (scene, question), thread in threads.items():
        answers = thread.result()
        for answer in answers:
            assert answer["georef"][0]["source"] == scene and question in answer["prompt"]
            how = {"timings": None, "answer_cached": None, "batch_size": None}   # not what was answered
            assert {**answer, **how} == {**alone[scene, question], **how}


def test_an_ask_during_a_review_is_answered_before_the_review_ends(client, scenes, tmp_path):
    pid = client.pid
    review, progress, stop = start_review(client, long_review(tmp_path))
    answer = client.ask(scenes[0], "What is in the image?")
    answered_at, total = progress.done, progress.total
    assert answer["task"] == "ask" and answer["georef"][0]["source"] == scenes[0]
    assert answered_at < total == 64  # between two of the review's batches, not after the last
    stop_review(review, stop)
    assert client.pid == pid


def test_a_request_waiting_behind_a_review_is_cancelled_within_a_second(client, scenes, tmp_path):
    pid = client.pid
    review, progress, stop = start_review(client, long_review(tmp_path / "first"))
    waiting_job = long_review(tmp_path / "second")  # a second review waits for the first to end
    cancel_while_waiting(lambda flag: client.review(waiting_job, is_cancelled=flag), "review")
    assert progress.done < progress.total  # the first review was still running
    assert re.search(r"review-\d+ cancelled while queued", client.log_path.read_text())  # dropped unstarted
    assert not Path(waiting_job["out"]).exists()
    stop_review(review, stop)
    assert client.ask(scenes[1], "Still serving?")["task"] == "ask" and client.pid == pid


def test_a_request_waiting_for_the_worker_to_start_is_cancelled_within_a_second(client, scenes):
    client.close()  # the next request starts a worker (and loads the model) while the other waits
    starting = threading.Event()
    starter = InThread(lambda: client.run("info", {}, on_progress=lambda f, m: starting.set()))
    assert starting.wait(60)
    cancel_while_waiting(lambda flag: client.ask(scenes[0], "What is this?", is_cancelled=flag), "ask")
    assert starter.result()["pid"] == client.pid


def test_a_killed_worker_fails_every_request_in_flight_and_the_next_gets_a_new_one(client, scenes, tmp_path):
    pid = client.pid
    review, _, _ = start_review(client, long_review(tmp_path))

    def kill_worker(fraction, message):  # the ask runs inside the review: both are in flight
        os.kill(pid, signal.SIGKILL)

    ask = InThread(lambda: client.ask(scenes[0], "What is this?", on_progress=kill_worker))
    for request, op in ((ask, "ask"), (review, "review")):
        with pytest.raises(WorkerDied, match=rf"UniRS worker exited \(code -9: killed by SIGKILL.*\) while answering '{op}'"):
            request.result()
    assert client.ask(scenes[0], "What is this?")["task"] == "ask" and client.pid not in (None, pid)


# ---- in process, and the serving loop itself ------------------------------------------------------

def test_inprocess_a_request_waiting_for_the_engine_is_cancelled_within_a_second(tiny_checkpoint, scenes):
    client = InProcessClient(model_dir=tiny_checkpoint, device="cpu")
    holding, release = threading.Event(), threading.Event()

    def hold(fraction, message):  # the first request keeps the engine until released
        holding.set()
        assert release.wait(60)

    first = InThread(lambda: client.ask(scenes[0], "What is this?", on_progress=hold))
    assert holding.wait(120)
    cancel_while_waiting(lambda flag: client.ask(scenes[1], "And this?", is_cancelled=flag), "ask")
    release.set()
    assert first.result()["task"] == "ask"
    client.close()


def test_serve_runs_waiting_requests_between_a_reviews_batches_and_another_review_after_it(
        tiny_checkpoint, scenes, tmp_path):
    """Review A, ask X, review B, ask Y queued: X and Y run inside A (after its first progress), B after A."""
    from unirs_engine.engine import Engine

    requests = [protocol.request("A", "review", long_review(tmp_path / "a", size=128)),
                protocol.request("X", "ask", {"image": scenes[0], "question": "Is there a road?"}),
                protocol.request("B", "review", long_review(tmp_path / "b", size=64, tile_size=64)),
                protocol.request("Y", "ask", {"image": scenes[1], "question": "Is there a lake?"})]
    stdin_r, stdin_w = (os.fdopen(fd, mode, buffering=0) for fd, mode in zip(os.pipe(), ("rb", "wb")))
    out_r, out_w = (os.fdopen(fd, mode, buffering=0) for fd, mode in zip(os.pipe(), ("rb", "wb")))
    with stdin_w:
        stdin_w.write("".join(protocol.encode(r) for r in requests).encode("utf-8"))
    worker = Worker(out_w, heartbeat_s=60)
    with stdin_r, out_w:
        worker.start_threads(stdin_r)  # all four are queued while the engine loads
        assert worker.serve(Engine.load(tiny_checkpoint, device="cpu")) == 0
        worker.stop()
    with out_r:
        lines = [protocol.decode(line) for line in out_r][1:]  # after "ready"
    assert [rid for rid, _ in itertools.groupby(m["id"] for m in lines)] == ["A", "X", "Y", "A", "B"]
    finals = {m["id"]: m for m in lines if m["type"] in protocol.FINAL_TYPES}
    assert {rid: m["type"] for rid, m in finals.items()} == dict.fromkeys("XYAB", "result")
    assert finals["X"]["result"]["georef"][0]["source"] == scenes[0] and finals["A"]["result"]["done"] == 16
