#!/usr/bin/env python
"""Benchmark of `unirs review-archive` (issue 20): where an archive review's time goes, and where the
bottleneck moves with more GPUs.

    .venv/bin/python scripts/bench_archive.py [--model DIR] [--work .cache/bench-archive]
                                              [--out docs/bench_archive.json] [--quick] [--gpu-tile-s 0.1]

pools      tiles/s of run_archive on a synthetic archive (4 mosaic pairs of 2048 px, 256 px tiles, every
           tile captioned): in this process (1 thread), then on 1 and on 2 Ray CPU actors (1 thread each) of
           a local cluster, alternately twice, fresh actors started before the clock each time; the best
           run of each is kept, and the 2-actor output must equal the 1-actor one
writer     rows/s of the driver's GeoPackage writer alone: ReviewStore.append of synthetic TileResults,
           batches of 8, one transaction each (what run_archive commits per unit)
reader     windows/s of TileSource.read alone (both dates warped onto the grid, one thread), 256 px tiles
           read at up to 768 px (the full-size model's read side)
projection for 8 and 64 GPUs: tiles/s of the model pool (N / per-tile model time) against the one writer
           and the readers. The per-tile model time is the full-size benchmark's (docs/bench_fullsize.json:
           its 16-tile review, every tile captioned, per device and dtype); without a GPU run there, an
           assumed GPU time (--gpu-tile-s) is added, and said so.

--quick: 2 pairs of 512 px, 128 px tiles, one run each, 256 rows (tests). Mosaics are written once
under --work and reused. The model defaults to $UNIRS_MODEL, else the demo model (models/demo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULLSIZE = REPO / "docs" / "bench_fullsize.json"
GPU_COUNTS = (8, 64)
WRITE_BATCH = 8
FULLSIZE_READ_SIDE = 768           # 2 x 384: review_read_side of the full-size model (SigLIP 384)
CAPTION = ("A new building with a grey roof has been built on the empty lot beside the road, "
           "and the trees along the river were cleared.")


@dataclass(frozen=True)
class Sizes:
    pairs: int                     # mosaic pairs in the archive
    mosaic: int                    # px a side
    tile: int                      # review tile side, px
    writer_rows: int               # rows appended by the writer benchmark
    repeats: int                   # runs on 1 and on 2 actors, alternately (the best of each is kept)


FULL = Sizes(pairs=4, mosaic=2048, tile=256, writer_rows=8192, repeats=2)
QUICK = Sizes(pairs=2, mosaic=512, tile=128, writer_rows=256, repeats=1)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mosaics(work: Path, sizes: Sizes) -> list[tuple[Path, Path]]:
    """--pairs before/after GeoTIFF pairs, written once (the ground-truth file last) and reused."""
    from unirs_engine.data.synthetic.mosaic import GROUND_TRUTH, write_mosaic_pair

    pairs = []
    for seed in range(sizes.pairs):
        out = work / f"mosaic-{sizes.mosaic}-t{sizes.tile}-s{seed}"
        truth = out / GROUND_TRUTH
        if truth.is_file():
            names = json.loads(truth.read_text())
            pairs.append((out / names["before"], out / names["after"]))
            continue
        log(f"writing a {sizes.mosaic} x {sizes.mosaic} px mosaic pair to {out} (once; reused by later runs)")
        pairs.append(write_mosaic_pair(out, size=sizes.mosaic, tile=sizes.tile, seed=seed))
    return pairs


def write_manifest(path: Path, pairs: list[tuple[Path, Path]]) -> Path:
    rows = [{"name": f"pair{i}", "before": str(b), "after": str(a), "date_before": "2019-06-01",
             "date_after": "2023-06-01"} for i, (b, a) in enumerate(pairs)]
    path.write_text(json.dumps(rows, indent=1))
    return path


def resolve_model(arg: str | None) -> Path:
    from unirs_engine.engine import EngineError, default_model_dir

    if arg:
        return Path(arg).resolve()
    try:
        return default_model_dir().resolve()
    except EngineError as exc:
        sys.exit(f"bench_archive: {exc}")


# ---- pools ----------------------------------------------------------------------------------------

def run_pool(pool, manifest: Path, out: Path, options: dict) -> dict:
    """One run_archive on `pool` into a fresh `out`: tiles/s and the workers' per-tile read/model time."""
    from unirs_engine.review.archive import run_archive

    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    summary = run_archive(manifest, out, pool, options)
    d = summary.to_dict()
    if d["failed"] or d["done_tiles"] != d["total_tiles"]:
        raise RuntimeError(f"the archive did not finish on {pool.name}: {d}")
    tiles = summary.tiles_this_run
    model_s, read_s = (sum(getattr(p, k) for p in summary.pairs) / tiles for k in ("model_s", "read_s"))
    # busy: the share of the run the workers spent reading or computing; near 1, the driver never kept
    # them waiting and the pool is bound by its workers' CPU (or GPU), not by Ray or the writer.
    return {"pool": pool.name, "actors": pool.actors, "tiles": tiles, "seconds": summary.elapsed_s,
            "tiles_per_s": tiles / summary.elapsed_s, "model_s_per_tile": model_s, "read_s_per_tile": read_s,
            "busy": (model_s + read_s) * tiles / summary.elapsed_s / pool.actors,
            "loadavg_1min": [load, os.getloadavg()[0]], "out": str(out)}


def bench_pools(model: Path, manifest: Path, work: Path, options: dict, repeats: int) -> dict:
    """In this process once, then 1 and 2 Ray actors alternately `repeats` times, each run on fresh actors
    (their caches empty) started before the clock; the best run of each."""
    import ray
    import torch

    from unirs_engine.engine import Engine
    from unirs_engine.review import ReviewJob
    from unirs_engine.review.pools import LocalPool, RayPool

    runs: dict[str, list[dict]] = {"in_process": [], "ray_1": [], "ray_2": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # as one actor computes
    try:
        log("pools: in this process")
        runs["in_process"].append(run_pool(LocalPool(Engine.load(model)), manifest, work / "out-local", options))
    finally:
        torch.set_num_threads(threads)
    # One thread per actor (Ray's own default for a 1-CPU actor), set in the raylet's environment,
    # which every actor inherits.
    saved = dict(os.environ)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    probe = ReviewJob("before", "after", "probe.gpkg", **options)
    try:
        for repeat in range(repeats):
            for actors in (1, 2):
                log(f"pools: {actors} Ray actor(s), run {repeat + 1} of {repeats}")
                pool = RayPool("local", model=str(model), actors=actors)
                try:
                    ray.get([actor.describe.remote(probe) for actor in pool.pool])   # every model loaded
                    runs[f"ray_{actors}"].append(run_pool(pool, manifest, work / f"out-ray{actors}", options))
                finally:
                    pool.close()
    finally:
        ray.shutdown()
    names = [pair["name"] for pair in json.loads(manifest.read_text())]
    identical = all(same_rows(work / "out-ray1" / f"{name}.gpkg", work / "out-ray2" / f"{name}.gpkg")
                    for name in names)
    if not identical:
        raise RuntimeError("the 2-actor archive differs from the 1-actor one")
    best = {name: max(rs, key=lambda r: r["tiles_per_s"]) for name, rs in runs.items()}
    return {"best": best, "runs": runs, "repeats": repeats,
            "ratio_2_vs_1": best["ray_2"]["tiles_per_s"] / best["ray_1"]["tiles_per_s"],
            "identical_outputs": identical}


def same_rows(a: Path, b: Path) -> bool:
    """Same tiles, captions and decisions; scores equal to 1e-5."""
    from unirs_engine.review.schema import CAPTION_CHANGED, CHANGED, LAYER

    def rows(path: Path) -> list[tuple]:
        with sqlite3.connect(path) as db:
            return db.execute(f"SELECT tile_row, tile_col, score, {CHANGED}, {CAPTION_CHANGED}, caption "
                              f"FROM {LAYER} ORDER BY tile_row, tile_col").fetchall()

    ra, rb = rows(a), rows(b)
    return len(ra) == len(rb) and all(x[:2] == y[:2] and x[3:] == y[3:] and abs(x[2] - y[2]) <= 1e-5
                                      for x, y in zip(ra, rb))


# ---- writer and reader ----------------------------------------------------------------------------

def bench_writer(pair: tuple[Path, Path], work: Path, rows: int) -> dict:
    """ReviewStore.append of `rows` synthetic TileResults in batches of WRITE_BATCH, on a fresh GeoPackage
    whose grid has a tile for each."""
    from unirs_engine.review import ReviewJob, plan_review
    from unirs_engine.review.store import ReviewStore, TileResult

    out = work / "writer.gpkg"
    for path in (out, out.with_name(out.name + "-wal"), out.with_name(out.name + "-shm")):
        path.unlink(missing_ok=True)
    side = _raster_side(pair[0])
    job = ReviewJob(str(pair[0]), str(pair[1]), str(out), tile_size=max(1, side // math.ceil(math.sqrt(rows))),
                    threshold=0.5, batch_size=WRITE_BATCH, date_before="2019-06-01", date_after="2023-06-01")
    plan = plan_review(job)
    assert plan.total_tiles >= rows, (plan.total_tiles, rows)
    rng = random.Random(0)
    results = []
    for i in range(rows):
        row, col, window = plan.window(i)
        score = rng.random()
        results.append(TileResult(row, col, plan.bounds(window), score, score >= 0.5, rng.random() < 0.5, CAPTION))
    store = ReviewStore.open(job, plan, "bench-archive", "given for this review", "head")
    try:
        t0 = time.perf_counter()
        for start in range(0, rows, WRITE_BATCH):
            store.append(results[start:start + WRITE_BATCH], next_tile=start + WRITE_BATCH, skipped_nodata=0,
                         skipped_outside=0)
        seconds = time.perf_counter() - t0
    finally:
        store.close()
    commits = math.ceil(rows / WRITE_BATCH)
    return {"rows": rows, "batch": WRITE_BATCH, "commits": commits, "seconds": seconds, "rows_per_s": rows / seconds,
            "ms_per_commit": seconds / commits * 1000, "caption_chars": len(CAPTION)}


def _raster_side(path: Path) -> int:
    import rasterio

    with rasterio.open(path) as ds:
        return min(ds.width, ds.height)


def bench_reader(pairs: list[tuple[Path, Path]], tile: int) -> dict:
    """TileSource.read of every tile of every pair, batches of 8, one thread."""
    from unirs_engine.review import ReviewJob, plan_review
    from unirs_engine.review.tiles import TileSource, batch_ranges

    windows, seconds = 0, 0.0
    for before, after in pairs:
        job = ReviewJob(str(before), str(after), "reader.gpkg", tile_size=tile, batch_size=WRITE_BATCH)
        plan = plan_review(job)
        t0 = time.perf_counter()
        with TileSource(job, plan, max_side=FULLSIZE_READ_SIDE) as source:
            for start, stop in batch_ranges(0, plan.total_tiles, WRITE_BATCH):
                batch = source.read(start, stop)
                windows += len(batch.pairs) + batch.skipped_nodata + batch.skipped_outside
        seconds += time.perf_counter() - t0
    return {"windows": windows, "tile_px": tile, "max_side": FULLSIZE_READ_SIDE, "seconds": seconds,
            "windows_per_s": windows / seconds}


# ---- projection -----------------------------------------------------------------------------------

def model_times(gpu_tile_s: float) -> list[dict]:
    """Per-tile model seconds: each run of the full-size benchmark, plus an assumed GPU time when none
    of its runs was on a GPU."""
    sources = []
    if FULLSIZE.is_file():
        figures = json.loads(FULLSIZE.read_text())
        for run in figures.get("runs", []):
            review = run.get("review") or {}
            if review.get("tiles") and review.get("s"):
                sources.append({"source": f"full-size {run['dtype']} on {run.get('device_name', run['device'])}, "
                                          f"measured", "device": run["device"], "measured": True,
                                "s_per_tile": review["s"] / review["tiles"],
                                "from": f"{FULLSIZE.relative_to(REPO)}: {review['tiles']} tiles of "
                                        f"{review.get('tile_px')} px, every tile captioned, in {review['s']:.1f} s"})
    if not any(s["device"].startswith("cuda") for s in sources):
        sources.append({"source": "full-size on one GPU, assumed", "device": "cuda", "measured": False,
                        "s_per_tile": gpu_tile_s,
                        "from": f"an assumption (--gpu-tile-s {gpu_tile_s:g}): VILA-1.5-3B-sized model, bf16, "
                                "batch 8, change score + a 24-token caption per tile; no GPU run in "
                                f"{FULLSIZE.name}"})
    return sources


def project(sources: list[dict], writer_rows_per_s: float, reader_windows_per_s: float) -> list[dict]:
    """For each model time and GPU count: what the model pool, the one writer and N readers sustain."""
    rows = []
    for s in sources:
        for n in GPU_COUNTS:
            stages = {"model pool": n / s["s_per_tile"], "one writer": writer_rows_per_s,
                      "readers": n * reader_windows_per_s}
            bottleneck = min(stages, key=stages.get)
            rows.append({"source": s["source"], "gpus": n, "s_per_tile": s["s_per_tile"],
                         "model_tiles_per_s": stages["model pool"], "writer_rows_per_s": writer_rows_per_s,
                         "readers_windows_per_s": stages["readers"], "bottleneck": bottleneck,
                         "archive_tiles_per_s": stages[bottleneck],
                         "writer_load": stages["model pool"] / writer_rows_per_s})
    return rows


def verdict(rows: list[dict], writer_rows_per_s: float, reader_windows_per_s: float) -> str:
    """Where the bottleneck is at the largest model pool projected, and how the design answers it."""
    top = max(rows, key=lambda r: r["model_tiles_per_s"])
    if top["bottleneck"] == "model pool":
        head = (f"The model pool stays the bottleneck at {top['gpus']} GPUs ({top['source']}: "
                f"{top['model_tiles_per_s']:.0f} tiles/s); the single writer sustains {writer_rows_per_s:.0f} rows/s, "
                f"{writer_rows_per_s / top['model_tiles_per_s']:.1f}x that")
    else:
        head = (f"At {top['gpus']} GPUs ({top['source']}) the bottleneck moves to the {top['bottleneck']}: the "
                f"pool could do {top['model_tiles_per_s']:.0f} tiles/s, the single writer {writer_rows_per_s:.0f} "
                f"rows/s, the readers {top['readers_windows_per_s']:.0f} windows/s")
    read_s = 1 / reader_windows_per_s
    return (f"{head}. Were the writer to bind, each pair is its own GeoPackage, so one writer process per pair in "
            f"flight would multiply its capacity. Reads never pass through the driver: each actor reads its own "
            f"windows ({reader_windows_per_s:.0f} windows/s per reading thread here), so read capacity grows with "
            f"the actors given a core per actor on each GPU host; an actor reads a batch before computing it "
            f"(not overlapped), so at {top['s_per_tile']:g} s/tile a {read_s * 1000:.1f} ms read adds "
            f"{read_s / top['s_per_tile']:.0%} per tile.")


# ---- driver ---------------------------------------------------------------------------------------

def table(header: tuple, rows: list[tuple]) -> str:
    rows = [header, *rows]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR", help="checkpoint (default: $UNIRS_MODEL, else the demo model)")
    parser.add_argument("--work", metavar="DIR", type=Path, default=REPO / ".cache" / "bench-archive",
                        help="mosaics (reused) and outputs")
    parser.add_argument("--out", metavar="JSON", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="2 small pairs, few rows: a smoke run")
    parser.add_argument("--gpu-tile-s", type=float, default=0.1, metavar="S",
                        help="assumed per-tile model seconds on one GPU, used when the full-size benchmark "
                             "has no GPU run (default 0.1)")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model)
    pairs = mosaics(work, sizes)
    manifest = write_manifest(work / "manifest.json", pairs)
    options = dict(tile_size=sizes.tile, caption_all=True)

    pools = bench_pools(model, manifest, work, options, sizes.repeats)
    log("writer")
    writer = bench_writer(pairs[0], work, sizes.writer_rows)
    log("reader")
    reader = bench_reader(pairs, sizes.tile)
    sources = model_times(args.gpu_tile_s)
    projection = project(sources, writer["rows_per_s"], reader["windows_per_s"])
    sentence = verdict(projection, writer["rows_per_s"], reader["windows_per_s"])

    runs = pools["best"]
    labels = {"in_process": "in this process, 1 thread", "ray_1": "Ray, 1 CPU actor", "ray_2": "Ray, 2 CPU actors"}
    print(f"model: {model}; {sizes.pairs} pairs of {sizes.mosaic} px, {sizes.tile} px tiles, every tile captioned; "
          f"{os.cpu_count()} CPUs{'; QUICK sizes' if args.quick else ''}")
    print(table(("pool", "tiles", "s", "tiles/s", "model s/tile", "read s/tile", "workers busy"),
                [(labels[k], r["tiles"], f"{r['seconds']:.1f}", f"{r['tiles_per_s']:.2f}",
                  f"{r['model_s_per_tile']:.4f}", f"{r['read_s_per_tile']:.4f}", f"{r['busy']:.0%}")
                 for k, r in runs.items()]))
    print("workers busy: the share of the run the workers spent reading or computing (near 100%: the pool is "
          "bound by its workers' CPU, not by Ray or the writer)")
    print(f"2 vs 1 Ray actors: {pools['ratio_2_vs_1']:.2f}x tiles/s (best of {sizes.repeats} runs each, fresh "
          f"actors; outputs identical); 1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"writer: {writer['rows_per_s']:.0f} rows/s ({writer['rows']} rows, batches of {writer['batch']}, "
          f"{writer['ms_per_commit']:.2f} ms per commit)")
    print(f"reader: {reader['windows_per_s']:.1f} windows/s ({reader['windows']} windows of {reader['tile_px']} px, "
          f"read at up to {reader['max_side']} px, one thread)")
    print("projection (tiles/s each stage sustains; readers = N x one reading thread):")
    print(table(("per-tile model time", "s/tile", "GPUs", "model pool", "one writer", "readers", "bottleneck"),
                [(r["source"], f"{r['s_per_tile']:.3f}", r["gpus"], f"{r['model_tiles_per_s']:.1f}",
                  f"{r['writer_rows_per_s']:.0f}", f"{r['readers_windows_per_s']:.0f}", r["bottleneck"])
                 for r in projection]))
    for s in sources:
        print(f"  {s['source']}: {s['from']}")
    print(sentence)

    if args.out:
        payload = {"model": str(model), "quick": args.quick, "cpu_count": os.cpu_count(), "python": sys.executable,
                   "sizes": asdict(sizes), "options": options, "pools": pools, "writer": writer, "reader": reader,
                   "projection": {"gpu_counts": list(GPU_COUNTS), "model_times": sources, "rows": projection,
                                  "verdict": sentence}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.part")
        tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
