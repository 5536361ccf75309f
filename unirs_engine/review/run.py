"""run_review: plan -> GeoPackage (new or resumed) -> tile batches -> change scores -> captions -> commit."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from .. import prompts
from ..types import InputKind
from .grid import plan_review
from .augment import review_read_side
from .job import ReviewError, ReviewJob, ReviewSummary
from .store import ReviewStore, TileResult
from .tiles import TilePair, TileReader


def run_review(engine, job: ReviewJob, *, progress: Callable[[int, int], None] | None = None,
               is_cancelled: Callable[[], bool] | None = None,
               pause: Callable[[], None] | None = None) -> ReviewSummary:
    """Review job.before against job.after tile by tile into job.out, resuming a stopped run.

    `progress(done_tiles, total_tiles)` after each committed batch; `pause()` inside each batch between
    its scores and its captions. Both are points where the engine is free: the worker answers the
    questions waiting there (worker/server.py). `is_cancelled()` is polled per batch and during
    generation: a cancel keeps every committed batch and returns cancelled=True."""
    from ..engine import Cancelled, EngineError  # here, not at the top: the package stays torch-free

    t0 = time.perf_counter()
    job, source = resolve_job(engine, job)
    plan = plan_review(job)
    store = ReviewStore.open(job, plan, engine.model.model_id, source, job.score)
    start, cancelled = store.state.next_tile, False
    try:
        if progress:
            progress(start, plan.total_tiles)
        if not store.state.finished:
            with TileReader(job, plan, start=start, max_side=review_read_side(engine.preprocess.size)) as reader:
                for batch in reader:
                    if is_cancelled and is_cancelled():
                        cancelled = True
                        break
                    try:
                        results = review_pairs(engine, job, batch.pairs, is_cancelled, pause)
                    except Cancelled:  # mid-generation: this batch is dropped, the committed ones stay
                        cancelled = True
                        break
                    except EngineError as exc:
                        raise ReviewError(f"reviewing {job.before} against {job.after}: {exc}") from exc
                    store.append(results, next_tile=batch.stop, skipped_nodata=batch.skipped_nodata,
                                 skipped_outside=batch.skipped_outside)
                    if progress:
                        progress(batch.stop, plan.total_tiles)
    finally:
        store.close()
    elapsed = time.perf_counter() - t0
    s = store.state
    done = s.next_tile - start
    return ReviewSummary(run_id=s.run_id, out=str(job.out), total_tiles=plan.total_tiles, done=done,
                         resumed_from=start, skipped_nodata=s.skipped_nodata, skipped_outside=s.skipped_outside,
                         changed=s.changed, captioned=s.captioned, disagreements=s.disagreements,
                         threshold=job.threshold, change_score=job.score, cancelled=cancelled,
                         elapsed_s=elapsed,
                         tiles_per_s=done / elapsed if elapsed > 0 else 0.0)


def resolve_job(engine, job: ReviewJob) -> tuple[ReviewJob, str]:
    """The job with the engine's score, batch size and threshold filled in, and where the threshold came
    from. They are stored resolved, so that a resume matches. Also sizes the engine's feature cache for it."""
    from ..engine import EngineError

    source = "given for this review"
    try:
        job = dataclasses.replace(job, score=engine.resolve_score(job.score),
                                  batch_size=job.batch_size or engine.batch_size)
        if job.threshold is None:
            threshold, source = engine.change_threshold_with_source(job.score)
            job = dataclasses.replace(job, threshold=threshold)
    except EngineError as exc:
        raise ReviewError(str(exc)) from None
    # A pair's features must still be cached when its caption is generated after scoring: before and
    # after, and the gain-matched after the change-score head reads (describe's extra["change_score"]).
    engine.reserve_cache(3 * job.batch_size)
    return job, source


def review_pairs(engine, job: ReviewJob, pairs: list[TilePair], is_cancelled: Callable[[], bool] | None = None,
                 pause: Callable[[], None] | None = None) -> list[TileResult]:
    """Scores of all pairs (one vision pass), captions of those at/above threshold (one generate call);
    the score decides "changed", the caption's own statement is kept beside it (schema.py)."""
    from ..engine import Request

    if not pairs:
        return []
    scores = engine.change_scores([(p.before, p.after) for p in pairs], job.score)   # B floats
    if pause:
        pause()
    wanted = [i for i, score in enumerate(scores) if job.caption_all or score >= job.threshold]
    instruction = job.instruction or prompts.CHANGE_DESCRIBE_INSTRUCTION
    # the tiles kept are those with job.min_valid of data: the engine's own minimum must not refuse them
    answers = engine.run_batch([Request(InputKind.PAIR, [pairs[i].before, pairs[i].after], instruction,
                                        min_valid_fraction=job.min_valid)
                                for i in wanted], batch_size=job.batch_size, is_cancelled=is_cancelled)
    captions = dict(zip(wanted, answers))
    results = []
    for i, (pair, score) in enumerate(zip(pairs, scores)):
        answer = captions.get(i)
        results.append(TileResult(pair.row, pair.col, pair.bounds, score,
                                  score_above_threshold=score >= job.threshold,
                                  caption_says_change=bool(answer.extra["changed"]) if answer else None,
                                  caption=answer.answer if answer else None))
    return results
