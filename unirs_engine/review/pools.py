"""Where an archive's tile batches are reviewed: in this process (LocalPool) or on a pool of Ray actors
(RayPool), each holding one model. Both run Units and yield their Outcomes; review/archive.py is the
single writer. A unit reads its own tiles (TileSource) where the model is, so the driver moves no pixels.

Ray is optional (`pip install .[distributed]`) and imported only by RayPool.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..errors import UnirsError
from .grid import ReviewPlan
from .job import ReviewError, ReviewJob
from .store import TileResult

OPEN_SOURCES = 2          # pairs a worker keeps open: the one it reads and the next
UNITS_PER_ACTOR = 2       # in flight per actor: one running, one queued so the actor never waits
REPLACEMENTS_PER_ACTOR = 2


@dataclass(frozen=True)
class Unit:
    """Tiles [start, stop) of one pair's review."""

    pair: int                 # index of the pair in the archive
    job: ReviewJob            # resolved (score, threshold, batch size)
    plan: ReviewPlan
    start: int
    stop: int


@dataclass
class Outcome:
    results: list[TileResult] = field(default_factory=list)
    skipped_nodata: int = 0
    skipped_outside: int = 0
    read_s: float = 0.0
    model_s: float = 0.0


class TileWorker:
    """One engine reviewing units of any pair: the body of a pool's worker."""

    def __init__(self, engine):
        self.engine = engine
        self._sources: OrderedDict[tuple, object] = OrderedDict()   # (job identity, plan) -> open TileSource

    def describe(self, job: ReviewJob) -> dict:
        """The job resolved by this engine, where its threshold came from, the model id and read size."""
        from .augment import review_read_side
        from .run import resolve_job

        job, source = resolve_job(self.engine, job)
        return dict(job=job, threshold_source=source, model_id=self.engine.model.model_id,
                    max_side=review_read_side(self.engine.preprocess.size))

    def review(self, unit: Unit) -> Outcome:
        from .run import review_pairs

        t0 = time.perf_counter()
        batch = self._source(unit).read(unit.start, unit.stop)
        t1 = time.perf_counter()
        results = review_pairs(self.engine, unit.job, batch.pairs)
        return Outcome(results, batch.skipped_nodata, batch.skipped_outside, t1 - t0, time.perf_counter() - t1)

    def _source(self, unit: Unit):
        from .augment import review_read_side
        from .tiles import TileSource

        # What a TileSource reads: the inputs, bands and skip rule of the job, on its grid (not the output
        # path: a reused pool may review other mosaics into the same file name).
        key = (json.dumps(unit.job.identity(), sort_keys=True), unit.plan)
        if key not in self._sources:
            if len(self._sources) >= OPEN_SOURCES:
                self._sources.popitem(last=False)[1].__exit__(None, None, None)
            source = TileSource(unit.job, unit.plan, max_side=review_read_side(self.engine.preprocess.size))
            self._sources[key] = source.__enter__()
        self._sources.move_to_end(key)
        return self._sources[key]

    def close(self) -> None:
        while self._sources:
            self._sources.popitem()[1].__exit__(None, None, None)


class LocalPool:
    """Units reviewed one after another by this process's engine."""

    name = "in-process"

    def __init__(self, engine):
        self.worker = TileWorker(engine)
        self.actors = 1

    def describe(self, job: ReviewJob) -> dict:
        return self.worker.describe(job)

    def run(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, Outcome | ReviewError]]:
        for unit in units:
            try:
                yield unit, self.worker.review(unit)
            except (UnirsError, OSError) as exc:   # an unreadable window: the pair fails, others go on
                yield unit, ReviewError(str(exc))

    def close(self) -> None:
        self.worker.close()


class _Actor:
    """A Ray actor: loads the checkpoint once, then reviews units (ray.remote(_Actor) in RayPool)."""

    def __init__(self, model: str | None, device: str | None):
        from ..engine import Engine

        self.worker = TileWorker(Engine.load(model, device=device))

    def describe(self, job: ReviewJob) -> dict:
        return self.worker.describe(job)

    def review(self, unit: Unit) -> Outcome:
        return self.worker.review(unit)


class RayPool:
    """Units spread over `actors` Ray actors (one GPU each when the cluster has GPUs, else one CPU each), at
    most UNITS_PER_ACTOR in flight per actor: memory stays flat however long the archive. An actor that
    dies has its units retried on the others and is replaced."""

    def __init__(self, address: str, *, model: str | None, device: str | None = None, actors: int | None = None):
        import ray

        self.ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False,   # "local": a new cluster here, always
                     log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        self.actors = actors or gpus or cpus
        self.name = f"Ray {address}: {self.actors} actor(s) on {'GPUs' if gpus else 'CPUs'}"
        actor_class = ray.remote(_Actor).options(num_gpus=1 if gpus else 0, num_cpus=1)
        self._new_actor = lambda: actor_class.remote(model, device)
        self.pool = [self._new_actor() for _ in range(self.actors)]
        self._replacements = REPLACEMENTS_PER_ACTOR * self.actors

    def describe(self, job: ReviewJob) -> dict:
        return self._get(self.pool[0].describe.remote(job))

    def run(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, Outcome | ReviewError]]:
        ray = self.ray
        units, retry = iter(units), deque()
        pending: dict = {}                                  # ObjectRef -> (unit, actor)
        load = {actor: 0 for actor in self.pool}
        exhausted = False
        while True:
            while retry or not exhausted:                   # fill every actor up to UNITS_PER_ACTOR
                actor = min(load, key=load.get)
                if load[actor] >= UNITS_PER_ACTOR:
                    break
                unit = retry.popleft() if retry else next(units, None)
                if unit is None:
                    exhausted = True
                    break
                pending[actor.review.remote(unit)] = (unit, actor)
                load[actor] += 1
            if not pending:
                return
            [ref], _ = ray.wait(list(pending), num_returns=1)
            unit, actor = pending.pop(ref)
            if actor in load:
                load[actor] -= 1
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayActorError as exc:     # the actor died: its units go to the others
                if actor in load:
                    self._replace(actor, load, exc)
                retry.append(unit)
                continue
            except ray.exceptions.RayTaskError as exc:      # the unit failed (an unreadable window)
                yield unit, ReviewError(str(exc.cause) if exc.cause is not None else str(exc))
                continue
            yield unit, outcome

    def _replace(self, dead, load: dict, exc: Exception) -> None:
        del load[dead]
        self.pool.remove(dead)
        if self._replacements <= 0:
            if not self.pool:
                raise ReviewError(f"every Ray actor died; the last: {exc}")
            return
        self._replacements -= 1
        actor = self._new_actor()
        self.pool.append(actor)
        load[actor] = 0

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, ReviewError) else ReviewError(str(exc))) from None
        except self.ray.exceptions.RayActorError as exc:   # e.g. the checkpoint would not load there
            raise ReviewError(f"the Ray actor could not start: {exc}") from None

    def close(self) -> None:
        for actor in self.pool:
            self.ray.kill(actor)
        self.pool.clear()
        if self._started:
            self.ray.shutdown()
