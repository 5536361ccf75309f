"""run_archive: review every pair of a manifest into <out>/<name>.gpkg (the GeoPackage `unirs review` writes)
plus <out>/archive_summary.csv, on a pool (review/pools.py: this process or Ray actors).

This process is the single writer. Units (one batch of tiles of one pair) come back in any order; each
pair's are committed in tile order, one transaction per batch, so a killed job resumes every pair at its
first unfinished tile and no tile is written twice. A pair that cannot be read is reported and the rest go on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..atomic import write_atomic
from .grid import ReviewPlan, plan_review
from .job import ReviewError, ReviewJob
from .manifest import ArchivePair, read_manifest
from .pools import Outcome, Unit
from .schema import ARCHIVE_SUMMARY
from .store import ReviewStore, check_writable
from .tiles import batch_ranges

# ReviewJob fields an archive sets per pair; the others are the archive's shared options.
PER_PAIR = ("before", "after", "out", "date_before", "date_after", "extent")
DONE, FAILED, STOPPED, WAITING = "done", "failed", "stopped", "waiting"


@dataclass
class PairReport:
    """One pair of the archive: the summary CSV's row."""

    name: str
    before: str
    after: str
    date_before: str | None
    date_after: str | None
    status: str = WAITING
    gpkg: str | None = None
    total_tiles: int = 0
    done_tiles: int = 0            # tiles written or skipped, this run and earlier ones
    changed: int = 0
    captioned: int = 0
    skipped_nodata: int = 0
    skipped_outside: int = 0
    seconds: float = 0.0           # this run's wall time between the pair's first unit and its last commit
    read_s: float = 0.0            # this run's time reading windows, summed over workers
    model_s: float = 0.0           #   and scoring and captioning them
    error: str | None = None


@dataclass
class ArchiveSummary:
    out_dir: str
    summary_csv: str
    pool: str
    pairs: list[PairReport] = field(default_factory=list)
    cancelled: bool = False
    elapsed_s: float = 0.0
    tiles_this_run: int = 0

    @property
    def total_tiles(self) -> int:
        return sum(p.total_tiles for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), total_tiles=self.total_tiles, done_tiles=sum(p.done_tiles for p in self.pairs),
                    changed=sum(p.changed for p in self.pairs),
                    failed=sum(p.status == FAILED for p in self.pairs),
                    tiles_per_s=self.tiles_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0)


class _PairRun:
    """A pair being written: its store and the units that arrived ahead of its next tile."""

    def __init__(self, report: PairReport, job: ReviewJob, plan: ReviewPlan):
        self.report, self.job, self.plan = report, job, plan
        self.store: ReviewStore | None = None
        self.waiting: dict[int, tuple[int, Outcome]] = {}   # unit start -> (its stop, outcome), until the
                                                             # tiles before it are committed
        self.t0 = 0.0


def archive_options(options: dict[str, Any]) -> dict[str, Any]:
    """The shared review options, checked like a job's (ReviewError names the key)."""
    per_pair = sorted(set(options) & set(PER_PAIR))
    if per_pair:
        raise ReviewError(f"{', '.join(per_pair)}: set per pair in the manifest, not for the whole archive")
    ReviewJob.from_dict({"before": "b", "after": "a", "out": "o.gpkg", **options})
    return dict(options)


def run_archive(manifest: str | Path, out_dir: str | Path, pool, options: dict[str, Any] | None = None, *,
                progress: Callable[[int, int, str], None] | None = None,
                is_cancelled: Callable[[], bool] | None = None) -> ArchiveSummary:
    """Review every pair of `manifest` into `out_dir` on `pool`. `progress(done, total, message)` after each
    commit (tiles of the whole archive); `is_cancelled()` is polled per unit: a cancel keeps what is committed."""
    t0 = time.perf_counter()
    options = archive_options(options or {})
    pairs = read_manifest(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out / ARCHIVE_SUMMARY)
    summary = ArchiveSummary(str(out), str(out / ARCHIVE_SUMMARY), pool.name,
                             [PairReport(p.name, p.before, p.after, p.date_before, p.date_after) for p in pairs])
    # Resolved once, by the pool's model: every pair of the archive is scored and thresholded alike.
    settled = pool.describe(ReviewJob("before", "after", "archive.gpkg", **options))
    shared = {k: v for k, v in settled["job"].to_dict().items() if k not in PER_PAIR}
    runs = [_plan(pair, report, out, shared) for pair, report in zip(pairs, summary.pairs)]
    # Tiles of the archive's progress: a pair that fails takes its unfinished tiles out of the total.
    state = dict(done=0, total=sum(r.plan.total_tiles for r in runs if r is not None))

    def commit(run: _PairRun) -> None:
        store, report = run.store, run.report
        while store.state.next_tile in run.waiting:
            start = store.state.next_tile
            stop, outcome = run.waiting.pop(start)
            store.append(outcome.results, next_tile=stop, skipped_nodata=outcome.skipped_nodata,
                         skipped_outside=outcome.skipped_outside)
            report.read_s += outcome.read_s
            report.model_s += outcome.model_s
            summary.tiles_this_run += stop - start
            state["done"] += stop - start
            _update(report, store)
            report.seconds = time.perf_counter() - run.t0
            if progress:
                progress(state["done"], state["total"],
                         f"{report.name}: tile {store.state.next_tile}/{run.plan.total_tiles}")
        if store.state.finished:
            _finish(run, DONE, summary)

    def units() -> Iterator[Unit]:
        for index, run in enumerate(runs):
            if is_cancelled and is_cancelled():
                return
            if run is None:
                continue
            try:
                run.store = ReviewStore.open(run.job, run.plan, settled["model_id"], settled["threshold_source"],
                                             run.job.score)
            except ReviewError as exc:          # another job in that file, a busy or read-only file
                state["total"] -= run.plan.total_tiles
                _fail(run.report, exc, summary)
                runs[index] = None
                continue
            run.t0 = time.perf_counter()
            _update(run.report, run.store)
            state["done"] += run.store.state.next_tile
            if run.store.state.finished:
                _finish(run, DONE, summary)
                continue
            for start, stop in batch_ranges(run.store.state.next_tile, run.plan.total_tiles, run.job.batch_size):
                if run.report.status == FAILED or (is_cancelled and is_cancelled()):
                    break
                yield Unit(index, run.job, run.plan, start, stop)

    try:
        for unit, outcome in pool.run(units()):
            run = runs[unit.pair]
            if run is None or run.report.status == FAILED:
                continue                                 # units of a pair that already failed
            if isinstance(outcome, ReviewError):
                state["total"] -= run.plan.total_tiles - run.store.state.next_tile
                _fail(run.report, outcome, summary, run)
                continue
            run.waiting[unit.start] = (unit.stop, outcome)
            commit(run)
            if is_cancelled and is_cancelled():
                break
        unfinished = any(r is not None and r.report.status == WAITING for r in runs)
        summary.cancelled = unfinished and bool(is_cancelled and is_cancelled())
    finally:
        for run in runs:
            if run is not None and run.store is not None and run.report.status not in (DONE, FAILED):
                _finish(run, STOPPED, summary)
        summary.elapsed_s = time.perf_counter() - t0
        write_summary(summary)
    return summary


def _plan(pair: ArchivePair, report: PairReport, out: Path, shared: dict) -> _PairRun | None:
    """The pair's job and grid (headers only); None, with the report failed, when it cannot be reviewed."""
    try:
        job = pair.job(out, **shared)
        plan = plan_review(job)
    except ReviewError as exc:
        report.status, report.error = FAILED, str(exc)
        return None
    report.gpkg, report.total_tiles = job.out, plan.total_tiles
    return _PairRun(report, job, plan)


def _update(report: PairReport, store: ReviewStore) -> None:
    s = store.state
    report.done_tiles, report.changed, report.captioned = s.next_tile, s.changed, s.captioned
    report.skipped_nodata, report.skipped_outside = s.skipped_nodata, s.skipped_outside


def _finish(run: _PairRun, status: str, summary: ArchiveSummary) -> None:
    run.report.status = status
    if run.store is not None:
        run.store.close()
        run.store = None
    run.waiting.clear()
    write_summary(summary)


def _fail(report: PairReport, exc: Exception, summary: ArchiveSummary, run: _PairRun | None = None) -> None:
    report.error = str(exc)
    if run is not None:
        _finish(run, FAILED, summary)
    else:
        report.status = FAILED
        write_summary(summary)


def write_summary(summary: ArchiveSummary) -> None:
    """archive_summary.csv, rewritten whole (atomically) whenever a pair ends."""
    names = [f.name for f in dataclasses.fields(PairReport)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for report in summary.pairs:
        row = asdict(report)
        writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    write_atomic(Path(summary.summary_csv), text.getvalue())
