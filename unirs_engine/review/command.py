"""`unirs review BEFORE AFTER --out OUT.gpkg`: tiled change review with tqdm progress and a summary;
`unirs review-archive MANIFEST --out DIR [--ray ADDRESS]`: every pair of a manifest, here or on Ray;
`unirs calibrate-threshold --model DIR --data LEVIRCC_ROOT`: the model's change-score threshold.
Errors are UnirsErrors, said on one line by cli.main."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import signal
import sys
import threading

from ..argtypes import add_model_arguments, positive_int
from .calibrate import HEAD_COPIES, MIN_VERDICTS
from .job import DEFAULT_THRESHOLD, JOB_DEFAULTS, TILE_UNITS, ReviewError, ReviewJob
from .schema import ARCHIVE_SUMMARY, SCORE_MEANINGS, SCORES

EXIT_CANCELLED = 130  # the shell's code for "stopped by Ctrl-C"


def register(subparsers) -> None:
    """Add the `review` subcommand to the `unirs` command line."""
    p = subparsers.add_parser(
        "review", help="review changes between two dated mosaics tile by tile into a GeoPackage",
        description="Tiles the overlap of BEFORE and AFTER on a common grid, scores every tile pair for "
                    "change and captions those at or above --threshold, writing to a GeoPackage as it goes. "
                    "Rerun the same command to resume; Ctrl-C stops cleanly, keeping finished tiles.")
    p.add_argument("before", help="earlier mosaic (any georeferenced raster GDAL reads)")
    p.add_argument("after", help="later mosaic (any CRS/resolution)")
    p.add_argument("--out", required=True, metavar="OUT.gpkg", help="GeoPackage to create or resume")
    p.add_argument("--date-before", help="ISO date of BEFORE, written into every feature")
    p.add_argument("--date-after", help="ISO date of AFTER")
    p.add_argument("--extent", type=float, nargs=4, metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
                   help="review only this part of the overlap, in the grid CRS")
    _add_job_options(p)
    p.set_defaults(func=run_command)

    p = subparsers.add_parser(
        "review-archive", help="review every dated mosaic pair of a manifest, in this process or on a Ray cluster",
        description="Reviews each pair of MANIFEST (CSV or JSON: before, after, optional name, date_before, "
                    "date_after, extent) into OUT/<name>.gpkg, the GeoPackage `unirs review` writes, and "
                    f"OUT/{ARCHIVE_SUMMARY} (per pair: status, tiles, changed, skipped, time). With --ray, tile "
                    "batches go to a pool of model actors on the cluster (one per GPU, else one per CPU); this "
                    "process writes every GeoPackage. Rerun the same command to resume every pair at its first "
                    "unfinished tile; a pair that cannot be read is reported and the rest go on.")
    p.add_argument("manifest", help="CSV or JSON list of pairs; relative paths are from its folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the pairs' GeoPackages and the summary")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="review on Ray: auto (the running cluster), local (start one here) or ray://host:10001; "
                        "needs `pip install unirs[distributed]` (default: in this process)")
    p.add_argument("--actors", type=positive_int,
                   help="model actors on Ray (default: one per GPU of the cluster, else one per CPU)")
    _add_job_options(p)
    p.set_defaults(func=archive_command)

    p = subparsers.add_parser(
        "calibrate-threshold", help="calibrate a model's change-score threshold on labelled pairs",
        description="With --model and --data: scores the pairs of a LEVIR-CC-format split (changeflag 0/1) "
                    "and stores the threshold with the best balanced accuracy for the change score in the "
                    "model's checkpoint (change_score/config.json for the head's, else config.json). "
                    "With --from-review: fits the threshold to your confirmed (changed) and rejected "
                    "(unchanged) tiles of a review and keeps it for that review's model in your data folder "
                    "(UNIRS_HOME), where it wins over the checkpoint's. Reviews without --threshold use it.")
    add_model_arguments(p, model_help="UniRS checkpoint to calibrate (written)", dtype=False)
    p.add_argument("--data", metavar="ROOT", help="LEVIR-CC-format root")
    p.add_argument("--split", default="val", help="split to calibrate on (default val)")
    p.add_argument("--score", choices=SCORES, help="the change score to calibrate (default: the model's)")
    p.add_argument("--copies", type=int, metavar="N",
                   help=f"score N mosaic-like copies of every pair (resampled, shifted, re-exposed, part "
                        f"blanked), 0 = the pairs as they are (default: as recorded with the model's "
                        f"threshold, else {HEAD_COPIES} for a model with a change-score head, 0 for the "
                        f"CEM's cosine score)")
    p.add_argument("--seed", type=int, help="seed of the copies (default: as recorded with the model's "
                                            "threshold, else 0)")
    p.add_argument("--from-review", metavar="REVIEW.gpkg", help="learn from the verdicts of this review instead")
    p.add_argument("--min-each", type=int, default=MIN_VERDICTS,
                   help=f"--from-review: confirmed and rejected tiles needed, each (default {MIN_VERDICTS})")
    p.set_defaults(func=calibrate_command)


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """The options `review` and `review-archive` share, with ReviewJob's defaults."""
    default = JOB_DEFAULTS
    p.add_argument("--tile-size", type=float, default=default["tile_size"],
                   help=f"tile side (default {default['tile_size']:g})")
    p.add_argument("--tile-units", choices=TILE_UNITS, default=default["tile_units"],
                   help="--tile-size/--overlap in grid pixels or grid CRS units (default pixels)")
    p.add_argument("--overlap", type=float, default=default["overlap"], help="tile overlap, same units (default 0)")
    p.add_argument("--crs", help="common grid CRS, e.g. EPSG:32633 (default: BEFORE's)")
    p.add_argument("--resolution", type=float, help="common grid pixel size in CRS units (default: BEFORE's)")
    p.add_argument("--bands", type=positive_int, nargs="+", help="1-based bands for R G B (or one for grey)")
    p.add_argument("--threshold", type=float,
                   help="change score at or above which a tile is captioned (default: the threshold "
                        f"calibrated for the model, else {DEFAULT_THRESHOLD})")
    p.add_argument("--score", choices=SCORES, help="the change score to decide by: " + "; ".join(
        f"{name}: {meaning}" for name, meaning in SCORE_MEANINGS.items()) + " (default: the first the model "
        "gives, in that order; a checkpoint without a Change Extraction module, e.g. VILA-1.5, gives only "
        "feature-cosine)")
    p.add_argument("--caption-all", action="store_true", help="caption every valid tile")
    p.add_argument("--min-valid", type=float, default=default["min_valid"],
                   help="fraction of a tile's pixels with data in both dates below which it is skipped; "
                        f"pixels without data in either date are blanked in both (default {default['min_valid']})")
    p.add_argument("--max-tiles", type=positive_int, default=default["max_tiles"],
                   help=f"refuse a plan with more tiles (default {default['max_tiles']})")
    p.add_argument("--batch-size", type=positive_int,
                   help="tile pairs per forward pass (default: as many as the free memory holds, at most 8)")
    add_model_arguments(p, dtype=False)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _job_options(args: argparse.Namespace) -> dict:
    return dict(tile_size=args.tile_size, tile_units=args.tile_units, overlap=args.overlap, crs=args.crs,
                resolution=args.resolution, bands=args.bands, threshold=args.threshold, score=args.score,
                caption_all=args.caption_all, min_valid=args.min_valid, max_tiles=args.max_tiles,
                batch_size=args.batch_size)


def run_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .grid import plan_review
    from .run import run_review
    from .store import check_writable

    job = ReviewJob(args.before, args.after, args.out, date_before=args.date_before, date_after=args.date_after,
                    extent=args.extent, **_job_options(args))
    plan_review(job)  # refuse a bad plan, an unwritable or busy --out before the model loads
    check_writable(job.out)
    from ..engine import Engine   # here: a refused job costs no torch import either

    engine = Engine.load(args.model, device=args.device)
    with _stop_on_ctrl_c() as stop, tqdm(unit="tile", file=sys.stderr, desc="review") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = run_review(engine, job, progress=progress, is_cancelled=stop.is_set)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        s = summary
        state = "stopped (rerun to resume)" if s.cancelled else "done"
        print(f"review {state}: {s.resumed_from + s.done:,}/{s.total_tiles:,} tiles "
              f"({s.done:,} this run, {s.tiles_per_s:.2f} tiles/s); skipped {s.skipped_nodata:,} nodata, "
              f"{s.skipped_outside:,} outside; {s.changed:,} changed ({s.change_score} score >= {s.threshold:.4g}), "
              f"{s.captioned:,} captioned, {s.disagreements:,} where the caption disagrees -> {s.out}")
    return EXIT_CANCELLED if summary.cancelled else 0


def archive_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .archive import archive_options, run_archive
    from .manifest import read_manifest

    options = archive_options(_job_options(args))
    read_manifest(args.manifest)   # a bad manifest is refused before any model loads
    pool = open_pool(args.ray, model=args.model, device=args.device, actors=args.actors)
    try:
        with _stop_on_ctrl_c() as stop, tqdm(unit="tile", file=sys.stderr, desc="archive") as bar:
            def progress(done: int, total: int, message: str) -> None:
                bar.total = total
                bar.set_postfix_str(message, refresh=False)
                bar.update(done - bar.n)

            summary = run_archive(args.manifest, args.out, pool, options, progress=progress,
                                  is_cancelled=stop.is_set)
    finally:
        pool.close()
    d = summary.to_dict()
    if args.json:
        print(json.dumps(d))
    else:
        for p in summary.pairs:
            detail = p.error if p.error else (f"{p.done_tiles:,}/{p.total_tiles:,} tiles, {p.changed:,} changed, "
                                              f"skipped {p.skipped_nodata + p.skipped_outside:,}, {p.seconds:.1f} s")
            print(f"{p.name}: {p.status}: {detail}")
        state = "stopped (rerun to resume)" if summary.cancelled else "done"
        print(f"archive {state} on {summary.pool}: {len(summary.pairs)} pairs ({d['failed']} failed), "
              f"{d['done_tiles']:,}/{d['total_tiles']:,} tiles ({summary.tiles_this_run:,} this run, "
              f"{d['tiles_per_s']:.2f} tiles/s), {d['changed']:,} changed -> {summary.summary_csv}")
    if summary.cancelled:
        return EXIT_CANCELLED
    return 1 if d["failed"] else 0


@contextlib.contextmanager
def _stop_on_ctrl_c():
    """An Event that Ctrl-C sets instead of raising: the job stops between batches (or tokens), keeping
    everything committed, and exits 130."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def open_pool(ray_address: str | None, *, model: str | None, device: str | None, actors: int | None = None,
              engine=None):
    """The pool an archive runs on: Ray actors at `ray_address`, else this process's engine (loaded here
    unless given). ReviewError when Ray is asked for and not installed, or the cluster cannot be reached."""
    from .pools import LocalPool, RayPool

    if not ray_address:
        if actors:
            raise ReviewError("model actors need a Ray cluster address (--ray); without one the archive runs in "
                              "this process")
        if engine is None:
            from ..engine import Engine

            engine = Engine.load(model, device=device)
        return LocalPool(engine)
    if importlib.util.find_spec("ray") is None:
        raise ReviewError("--ray needs Ray, which is not installed: pip install 'unirs[distributed]'")
    try:
        return RayPool(ray_address, model=model, device=device, actors=actors)
    except ConnectionError as exc:
        raise ReviewError(f"cannot reach the Ray cluster at {ray_address}: {exc}") from None


def calibrate_command(args: argparse.Namespace) -> int:
    if args.from_review:
        return _recalibrate_from_review(args)
    if not (args.model and args.data):
        raise ReviewError("give --model and --data, or --from-review")
    from ..data.levircc import read_levircc
    from ..engine import HEAD_SCORE, Engine
    from ..thresholds import checkpoint_calibration
    from .calibrate import calibrate, store

    if args.copies is not None and args.copies < 0:   # before the model loads
        raise ReviewError(f"--copies must be >= 0, got {args.copies}")
    samples = read_levircc(args.data, args.split)
    if not samples:
        raise ReviewError(f"{args.data}: no pairs in split {args.split!r}")
    engine = Engine.load(args.model, device=args.device)
    score = args.score or engine.change_score
    config_file = engine.threshold_config_file(score)
    # Defaults: how the model's threshold was calibrated (e.g. by `unirs train change-score`), so a
    # rerun recomputes it.
    recorded = checkpoint_calibration(config_file, score)[1]
    copies = args.copies if args.copies is not None else recorded.get(
        "copies", HEAD_COPIES if score == HEAD_SCORE else 0)
    seed = args.seed if args.seed is not None else recorded.get("seed", 0)
    try:
        result = calibrate(engine, [(str(s.images[0]), str(s.images[1])) for s in samples],
                           [bool(s.meta["changeflag"]) for s in samples], copies=copies, seed=seed, score=score)
    except OSError as exc:   # a missing/unreadable pair: the reader's message names its file
        raise ReviewError(str(exc)) from None
    path = store(config_file, result, f"{args.data} ({args.split})", score=score, copies=copies, seed=seed)
    copied = f" ({copies} mosaic-like copies of each of {len(samples)})" if copies else ""
    print(f"{score} score threshold {result.threshold:.6g}: balanced accuracy "
          f"{100 * result.balanced_accuracy:.1f} % on {result.changed} changed and {result.unchanged} "
          f"unchanged pairs{copied} -> {path}")
    return 0


def _recalibrate_from_review(args: argparse.Namespace) -> int:
    from .calibrate import calibrate_from_review, keep_user_threshold

    result = calibrate_from_review(args.from_review, args.min_each)
    path = keep_user_threshold(result)
    print(f"{result.model_id}: threshold {result.before.threshold:.4g} -> {result.after.threshold:.4g}, balanced "
          f"accuracy on your verdicts {100 * result.before.balanced_accuracy:.1f} % -> "
          f"{100 * result.after.balanced_accuracy:.1f} % ({result.after.changed} confirmed, "
          f"{result.after.unchanged} rejected) -> {path}")
    return 0
