#!/usr/bin/env python
"""Benchmarks of the change review (issues 6 and 15): five ratios measured in one run, each against its target.

    .venv/bin/python scripts/bench_review.py [--model DIR] [--work .cache/bench] [--quick]
                                             [--only batch,cache,rss,worker,concurrent] [--json PATH]

batch       review throughput (tiles/s), batch_size=8 vs 1, same tiles, identical outputs     >= 4x
cache       engine.ask repeated on the same raster/bounds: features cached vs cache cleared    >= 5x
rss         peak RSS of `unirs review` in a child process: 32k x 32k pair vs 8k x 8k pair      <= 1.10x
worker      SubprocessClient vs InProcessClient on the same ask/change requests                <= 1.05x
concurrent  ask latency on one SubprocessClient: while a review runs on it vs idle             <= 2x

Mosaics are written once under --work and reused. Ratios vary with the machine and its load;
the JSON keeps the raw figures beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import rasterio
from rasterio.windows import Window, bounds as window_bounds
from tqdm import tqdm

BENCHMARKS = ("batch", "cache", "rss", "worker", "concurrent")
QUESTION = "How many buildings are there in the image?"
SCORE_ONLY = 3.0  # a threshold above any change score (1 - cosine similarity <= 2): no captions


@dataclass(frozen=True)
class Sizes:
    """What one run measures on; --quick shrinks everything for a smoke run."""

    batch_mosaic: int       # px a side of the mosaic whose tiles the batch benchmark reviews
    batch_tile: int         # review tile side, px
    repeats: int            # timed repeats per measurement (medians)
    rss_sizes: tuple[int, int]
    rss_tile: int           # review tile side of the RSS runs, px (large: few tiles, fast on CPU)
    worker_windows: int     # distinct extents per worker round (one ask + one change each)
    worker_rounds: int      # timed rounds per client (after one warm-up round)
    concurrent_asks: int    # timed rounds: one ask on the idle worker, one during each review


FULL = Sizes(batch_mosaic=2048, batch_tile=256, repeats=3, rss_sizes=(8192, 32768), rss_tile=1024,
             worker_windows=4, worker_rounds=10, concurrent_asks=8)
QUICK = Sizes(batch_mosaic=1024, batch_tile=256, repeats=2, rss_sizes=(1024, 4096), rss_tile=512,
              worker_windows=2, worker_rounds=3, concurrent_asks=3)


@dataclass
class Figure:
    """One benchmark's outcome: ratio = measured / baseline, in the direction of its target."""

    name: str
    baseline: str
    measured: str
    ratio: float
    target: str
    passed: bool
    note: str                                   # what exactly was run
    details: dict[str, Any] = field(default_factory=dict)


# ---- helpers ------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, value) of one call."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mosaic(work: Path, size: int, tile: int) -> tuple[Path, Path]:
    """A cached before/after GeoTIFF pair (tiled, LZW, with overviews) written by the synthetic writer."""
    from unirs_engine.data.synthetic.mosaic import GROUND_TRUTH, write_mosaic_pair

    out = work / f"mosaic-{size}-t{tile}"
    truth = out / GROUND_TRUTH  # written last: its presence means the pair is complete
    if truth.is_file():
        names = json.loads(truth.read_text())
        return out / names["before"], out / names["after"]
    log(f"writing a {size} x {size} px mosaic pair to {out} (once; reused by later runs)")
    seconds, paths = timed(lambda: write_mosaic_pair(out, size=size, tile=tile, seed=0))
    log(f"  written in {seconds:.1f} s")
    return paths


def resolve_model(arg: str | None, work: Path) -> tuple[Path, str]:
    """--model, else the default model, else a tiny random checkpoint (said so in the output)."""
    from unirs_engine.engine import EngineError, default_model_dir

    if arg:
        return Path(arg), "given with --model"
    try:
        return default_model_dir(), "the default model"
    except EngineError:
        from unirs_engine.testing.tiny import build_tiny_checkpoint

        path = work / "tiny-model"
        if not (path / "config.json").is_file():
            build_tiny_checkpoint(path)
        return path, ("NO DEFAULT MODEL: a tiny random checkpoint (testing.tiny) stands in; "
                      "its ratios show the pipeline, not a real model's compute")


def extent(path: Path, px: int, index: int = 0) -> tuple[float, float, float, float]:
    """Bounds (raster CRS) of the index-th px x px window along the middle row of the raster."""
    with rasterio.open(path) as ds:
        col = min(ds.width - px, ds.width // 4 + index * px)
        return tuple(window_bounds(Window(col, (ds.height - px) // 2, px, px), ds.transform))


def grid_extents(path: Path, px: int, count: int) -> list[tuple[float, float, float, float]]:
    """Bounds of `count` distinct px x px windows of the raster, row by row (no two share a chip)."""
    with rasterio.open(path) as ds:
        cols, rows = ds.width // px, ds.height // px
        if count > cols * rows:
            raise ValueError(f"{path} holds {cols * rows} windows of {px} px, not {count}")
        return [tuple(window_bounds(Window(i % cols * px, i // cols * px, px, px), ds.transform))
                for i in range(count)]


def review_rows(gpkg: Path) -> list[tuple]:
    from unirs_engine.review.schema import CAPTION_CHANGED, CHANGED, LAYER

    with sqlite3.connect(gpkg) as db:
        return db.execute(f"SELECT tile_row, tile_col, score, {CHANGED}, {CAPTION_CHANGED}, caption "
                          f"FROM {LAYER} ORDER BY tile_row, tile_col").fetchall()


# ---- benchmarks ---------------------------------------------------------------------------------

def bench_batch(engine, work: Path, sizes: Sizes) -> Figure:
    """Review the same tiles (every one captioned) with batch_size=8 and =1; throughput and outputs."""
    from unirs_engine.review import ReviewJob, run_review

    before, after = mosaic(work, sizes.batch_mosaic, sizes.batch_tile)
    runs: dict[int, list[float]] = {8: [], 1: []}
    outputs: dict[int, list[tuple]] = {}
    tiles = 0
    for _ in tqdm(range(sizes.repeats), desc="batch: reviews", unit="rep", file=sys.stderr):
        for batch_size in (8, 1):
            out = work / f"batch-b{batch_size}.gpkg"
            out.unlink(missing_ok=True)
            job = ReviewJob(str(before), str(after), str(out), tile_size=sizes.batch_tile,
                            caption_all=True, batch_size=batch_size)
            engine.clear_cache()  # both sides encode every tile
            seconds, summary = timed(lambda: run_review(engine, job))
            tiles = summary.done
            runs[batch_size].append(tiles / seconds)
            outputs[batch_size] = review_rows(out)
    _assert_same_review(outputs[8], outputs[1])
    batched, single = statistics.median(runs[8]), statistics.median(runs[1])
    ratio = batched / single
    return Figure("batch", f"batch_size=1: {single:.2f} tiles/s", f"batch_size=8: {batched:.2f} tiles/s",
                  ratio, ">= 4x", ratio >= 4.0,
                  f"run_review of the same {tiles} tiles ({sizes.batch_tile} px) of a {sizes.batch_mosaic} "
                  f"px mosaic, every tile captioned, cache cleared before each run; median of "
                  f"{sizes.repeats}; outputs identical",
                  {"mosaic_px": sizes.batch_mosaic, "tile_px": sizes.batch_tile, "tiles": tiles,
                   "caption_all": True, "tiles_per_s": {"batch_8": runs[8], "batch_1": runs[1]},
                   "identical_outputs": True})


def _assert_same_review(batched: list[tuple], single: list[tuple]) -> None:
    """Same tiles, same captions and change flags; scores equal up to float summation order."""
    assert len(batched) == len(single), f"batched review wrote {len(batched)} tiles, one-by-one {len(single)}"
    for b, s in zip(batched, single):
        assert b[:2] == s[:2] and b[3:] == s[3:], f"tile {s[:2]}: batched {b[3:]!r} != one-by-one {s[3:]!r}"
        assert abs(b[2] - s[2]) <= 1e-4, f"tile {s[:2]}: score {b[2]} batched vs {s[2]} one-by-one"


def bench_cache(engine, work: Path, sizes: Sizes) -> Figure:
    """engine.ask on one raster/extent: cold (cache cleared) then warm (the same call again)."""
    image, _ = mosaic(work, sizes.batch_mosaic, sizes.batch_tile)
    bounds = extent(image, 512)

    def ask():
        return engine.ask(str(image), QUESTION, bounds=bounds)

    ask()  # warm-up: first-call allocations are not the cache's doing
    cold, warm, stages = [], [], {"cold": [], "warm": []}
    for _ in tqdm(range(sizes.repeats + 1), desc="cache: cold/warm asks", unit="pair", file=sys.stderr):
        engine.clear_cache()
        t_cold, first = timed(ask)
        t_warm, again = timed(ask)
        assert first.answer == again.answer, f"cached answer {again.answer!r} != cold {first.answer!r}"
        cold.append(t_cold)
        warm.append(t_warm)
        stages["cold"].append(first.timings)
        stages["warm"].append(again.timings)
    c, w = statistics.median(cold), statistics.median(warm)
    ratio = c / w
    # Where the time goes (medians, s): only the encode stage is cached; read and generate repeat.
    split = {side: {k: statistics.median(t[k] for t in runs) for k in ("read_s", "encode_s", "generate_s")}
             for side, runs in stages.items()}

    def stage(side: str) -> str:
        return ", ".join(f"{k[:-2]} {v * 1000:.0f} ms" for k, v in split[side].items())

    return Figure("cache", f"cold ask: {c * 1000:.0f} ms", f"cached ask: {w * 1000:.0f} ms", ratio, ">= 5x",
                  ratio >= 5.0,
                  f"engine.ask on a 512 px extent, clear_cache() then the same ask twice; median of "
                  f"{len(cold)}; cold = {stage('cold')}; cached = {stage('warm')}",
                  {"raster": str(image), "bounds": bounds, "question": QUESTION, "cold_s": cold,
                   "warm_s": warm, "stages_s": split,
                   "encode_ratio": split["cold"]["encode_s"] / split["warm"]["encode_s"]})


def review_child(model: Path, before: Path, after: Path, out: Path, tile: int) -> dict:
    """Run `unirs review` score-only in a child process; its peak RSS from wait4's rusage."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "unirs_engine.cli", "review", str(before), str(after), "--out", str(out),
           "--tile-size", str(tile), "--threshold", f"{SCORE_ONLY:g}", "--model", str(model), "--json"]
    log("running: " + " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # its tqdm bar shows on our stderr
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}: {stdout[-500:]}")
    return {"command": cmd, "peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": seconds,
            "summary": json.loads(stdout.strip().splitlines()[-1])}


def bench_rss(model: Path, work: Path, sizes: Sizes) -> Figure:
    """Peak RSS of a score-only review of the small pair vs the large one, each in its own process."""
    runs = {}
    for size in sizes.rss_sizes:
        before, after = mosaic(work, size, sizes.rss_tile)
        runs[size] = review_child(model, before, after, work / f"rss-{size}.gpkg", sizes.rss_tile)
    small, large = (runs[s]["peak_rss_mib"] for s in sizes.rss_sizes)
    ratio = large / small

    def label(size: int) -> str:
        return f"{size // 1024}k x {size // 1024}k: {runs[size]['peak_rss_mib']:.0f} MiB"

    note = "".join(f"\n  {runs[s]['summary']['total_tiles']} tiles in {runs[s]['wall_s']:.0f} s: "
                   f"{' '.join(runs[s]['command'])}" for s in sizes.rss_sizes)
    return Figure("rss", label(sizes.rss_sizes[0]), label(sizes.rss_sizes[1]), ratio, "<= 1.10x",
                  ratio <= 1.10, f"peak RSS (ru_maxrss from os.wait4) of each child process:{note}",
                  {str(s): runs[s] for s in sizes.rss_sizes})


def bench_worker(model: Path, work: Path, sizes: Sizes) -> Figure:
    """The same ask/change requests through a worker process and in process; median round times."""
    from unirs_engine.worker.client import InProcessClient, SubprocessClient

    before, after = mosaic(work, sizes.batch_mosaic, sizes.batch_tile)
    extents = [extent(before, 256, i) for i in range(sizes.worker_windows)]

    def round_of(client) -> list[str]:
        answers = []
        for b in extents:
            answers.append(client.ask(str(before), QUESTION, bounds=b)["answer"])
            answers.append(client.describe_change(str(before), str(after), bounds=b)["answer"])
        return answers

    clients = {"inprocess": InProcessClient(model_dir=model),
               "subprocess": SubprocessClient(model_dir=model, log_path=work / "worker.log")}
    times: dict[str, list[float]] = {name: [] for name in clients}
    try:
        expected = {name: round_of(c) for name, c in clients.items()}  # warm-up: model load, worker start
        assert expected["subprocess"] == expected["inprocess"], "the worker answered differently"
        for _ in tqdm(range(sizes.worker_rounds), desc="worker: rounds", unit="round", file=sys.stderr):
            for name, client in clients.items():  # interleaved, so machine load hits both alike
                seconds, answers = timed(lambda: round_of(client))
                assert answers == expected[name], f"{name} answers changed between rounds"
                times[name].append(seconds)
    finally:
        for client in clients.values():
            client.close()
    inproc, sub = statistics.median(times["inprocess"]), statistics.median(times["subprocess"])
    ratio = sub / inproc
    n = 2 * len(extents)
    return Figure("worker", f"in-process: {inproc * 1000 / n:.1f} ms/req",
                  f"worker: {sub * 1000 / n:.1f} ms/req", ratio, "<= 1.05x", ratio <= 1.05,
                  f"{n // 2} extents x (client.ask + client.describe_change) per round, rounds interleaved, "
                  f"median of {sizes.worker_rounds} rounds after a warm-up round; answers identical",
                  {"requests_per_round": n, "round_s": times})


class BackgroundReview:
    """client.review(job) in a thread: when its batches ended (progress times), and a stop switch."""

    def __init__(self, client, job):
        self.batch_ends: list[float] = []
        self._steady = threading.Event()  # two batches done (the first one also opens the rasters),
                                          # or it ended
        self._stop = threading.Event()
        self._outcome: Any = None
        self._thread = threading.Thread(target=self._run, args=(client, job), daemon=True)
        self._thread.start()

    def _run(self, client, job) -> None:
        try:
            self._outcome = client.review(job.to_dict(), on_progress=self._progress, is_cancelled=self._stop.is_set)
        except Exception as exc:  # reported by stop()
            self._outcome = exc
        self._steady.set()

    def _progress(self, fraction: float, message: str) -> None:
        if message.startswith("tile "):  # "tile 0/N" at the start, then one per committed batch
            self.batch_ends.append(time.perf_counter())
            if len(self.batch_ends) > 2:
                self._steady.set()

    def wait_steady(self) -> None:
        """Wait until two batches are done; raise (as stop() does) if it ended before."""
        self._steady.wait()
        if len(self.batch_ends) < 3:
            self.stop()

    def batch_s(self) -> float:
        """Median seconds per batch since the first one (asks served between them included)."""
        ends = self.batch_ends[1:]
        return statistics.median(b - a for a, b in zip(ends, ends[1:]))

    def stop(self) -> None:
        """Cancel it; raise unless it was cancelled (it must outlast the measurement)."""
        from unirs_engine.worker.client import RequestCancelled

        self._stop.set()
        self._thread.join()
        if not isinstance(self._outcome, RequestCancelled):
            raise RuntimeError(f"the review ended before the asks did ({self._outcome!r}): use a larger mosaic")


def bench_concurrent(model: Path, work: Path, sizes: Sizes) -> Figure:
    """client.ask latency on one SubprocessClient: its worker idle vs running a review (issue 15)."""
    from unirs_engine.review import ReviewJob
    from unirs_engine.worker.client import SubprocessClient

    before, after = mosaic(work, sizes.batch_mosaic, sizes.batch_tile)
    n = sizes.concurrent_asks
    extents = iter(grid_extents(before, 256, 3 * n + 1))  # a fresh extent per ask: nothing cached helps it
    # Reviews of small tiles (many batches: they outlast the rounds) with the default batch_size: as the
    # plugin runs one (the model's threshold decides which tiles get a caption), and the worst case,
    # every tile captioned (each batch ends with a generate call, the longest an ask can wait).
    reviews = {name: ReviewJob(str(before), str(after), str(work / f"concurrent-{name}.gpkg"), tile_size=32,
                               caption_all=name == "every_tile_captioned")
               for name in ("model_threshold", "every_tile_captioned")}
    for job in reviews.values():
        Path(job.out).unlink(missing_ok=True)
    client = SubprocessClient(model_dir=model, python=sys.executable, log_path=work / "worker-concurrent.log")
    pause = random.Random(0)

    def ask() -> float:
        return timed(lambda: client.ask(str(before), QUESTION, bounds=next(extents)))[0]

    def ask_during(job: ReviewJob) -> tuple[float, float]:
        """(ask seconds, review s/batch): one ask at a random point of a batch of the review, resumed
        where it last stopped and cancelled after the ask."""
        review = BackgroundReview(client, job)
        review.wait_steady()
        time.sleep(pause.uniform(0, review.batch_s()))  # a question comes at any point of a batch
        seconds = ask()
        batch_s = review.batch_s()
        review.stop()
        return seconds, batch_s

    idle: list[float] = []
    busy: dict[str, dict[str, list[float]]] = {name: {"ask_s": [], "batch_s": []} for name in reviews}
    try:
        ask()  # warm-up: worker start, model load
        # Rounds interleave the two sides, so the machine's drifting load weighs on both alike.
        for _ in tqdm(range(n), desc="concurrent: rounds", unit="round", file=sys.stderr):
            idle.append(ask())
            for name, job in reviews.items():
                for key, value in zip(("ask_s", "batch_s"), ask_during(job)):
                    busy[name][key].append(value)
    finally:
        client.close()
    i = statistics.median(idle)
    ratios = {name: statistics.median(b["ask_s"]) / i for name, b in busy.items()}
    ratio, worst = ratios["model_threshold"], ratios["every_tile_captioned"]
    busy_ms = statistics.median(busy["model_threshold"]["ask_s"]) * 1000

    def batch_ms(name: str) -> str:
        return f"{statistics.median(busy[name]['batch_s']) * 1000:.0f} ms/batch"

    return Figure("concurrent", f"idle worker: {i * 1000:.0f} ms/ask", f"during a review: {busy_ms:.0f} ms/ask",
                  ratio, "<= 2x", ratio <= 2.0,
                  f"client.ask on a fresh 256 px extent each, medians of {n} rounds; a round: one ask on the "
                  f"idle worker, one during each review on the same client (resumed, after two batches, at a "
                  f"random point of a batch); review: 32 px tiles, batch_size "
                  f"{reviews['model_threshold'].batch_size}, the model's threshold ({batch_ms('model_threshold')}); "
                  f"worst case, every tile captioned ({batch_ms('every_tile_captioned')}): {worst:.2f}x",
                  {"idle_s": idle, "during_review": busy, "ratios": ratios,
                   "jobs": {name: job.to_dict() for name, job in reviews.items()}})


# ---- driver -------------------------------------------------------------------------------------

def table(figures: list[Figure]) -> str:
    rows = [("benchmark", "baseline", "measured", "ratio", "target", "result")]
    rows += [(f.name, f.baseline, f.measured, f"{f.ratio:.2f}x", f.target, "PASS" if f.passed else "FAIL")
             for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_only(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(BENCHMARKS)}, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR", help="checkpoint (default: the default model; a tiny "
                        "random one when there is none)")
    parser.add_argument("--work", metavar="DIR", type=Path, default=Path(".cache/bench"),
                        help="mosaics, review outputs, logs (mosaics are reused)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (1k vs 4k mosaics)")
    parser.add_argument("--only", type=parse_only, default=list(BENCHMARKS), metavar="NAMES",
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch
    from unirs_engine.engine import Engine

    sizes = QUICK if args.quick else FULL
    args.work = args.work.resolve()  # absolute: the worker and the review children run elsewhere
    args.work.mkdir(parents=True, exist_ok=True)
    model, model_note = resolve_model(args.model, args.work)
    model = model.resolve()
    engine = Engine.load(model) if {"batch", "cache"} & set(args.only) else None
    info = engine.info() if engine else {}
    header = {"model": str(model), "model_note": model_note, "model_id": info.get("model_id"),
              "device": info.get("device", "cuda" if torch.cuda.is_available() else "cpu"),
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "quick": args.quick,
              "sizes": asdict(sizes), "python": sys.executable}

    runners = {"batch": lambda: bench_batch(engine, args.work, sizes),
               "cache": lambda: bench_cache(engine, args.work, sizes),
               "rss": lambda: bench_rss(model, args.work, sizes),
               "worker": lambda: bench_worker(model, args.work, sizes),
               "concurrent": lambda: bench_concurrent(model, args.work, sizes)}
    figures = [runners[name]() for name in args.only]

    print(f"model: {model} ({model_note})")
    print(f"device: {header['device']}, torch threads: {header['torch_threads']}, "
          f"{'QUICK sizes' if args.quick else 'full sizes'}: {asdict(sizes)}")
    print(table(figures))
    for f in figures:
        print(f"{f.name}: {f.note}")
    if args.json:
        payload = {**header, "benchmarks": {f.name: asdict(f) for f in figures}}
        tmp = args.json.with_name(f".{args.json.name}.part")
        tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
