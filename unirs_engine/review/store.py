"""The review's GeoPackage, written with OGR's GPKG driver: GDAL's Python bindings only (no rasterio, no
torch), so the QGIS plugin may import it too.

Layer LAYER holds one polygon per reviewed tile, with an R-tree spatial index; the attributes table RUNS
holds the job and where it stands. Each batch is one transaction: its features, the run's next tile and
counters, and the layer's extent, feature count and last change (gpkg_contents, gpkg_ogr_contents), so a
killed review leaves a valid file with every finished tile, and a rerun resumes where it stopped. One
review at a time writes a file: an OS lock beside it (OutputLock) refuses a second. Verdicts are the QGIS
plugin's (unirs_qgis/dock/review_panel.py set_verdict); a trigger refuses values other than VERDICTS.

Whether GDAL raises Python exceptions is the process's choice (QGIS leaves them off): this module checks
what OGR returns and raises RuntimeError with GDAL's message either way.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from osgeo import gdal, ogr, osr

from .job import ReviewError, ReviewJob
from .schema import CAPTION_CHANGED, CHANGED, LAYER, RUNS, VERDICTS

if TYPE_CHECKING:
    from .grid import ReviewPlan

CUSTOM_SRS_ID = 100000   # GDAL's srs_id for the first CRS without EPSG code (a grid CRS given as WKT)

_COUNTERS = ("skipped_nodata", "skipped_outside", "changed", "captioned", "disagreements")
# GeoPackage column type -> (OGR field type, subtype)
_TYPES = {"INTEGER": (ogr.OFTInteger64, ogr.OFSTNone), "REAL": (ogr.OFTReal, ogr.OFSTNone),
          "TEXT": (ogr.OFTString, ogr.OFSTNone), "BOOLEAN": (ogr.OFTInteger, ogr.OFSTBoolean),
          "DATE": (ogr.OFTDate, ogr.OFSTNone), "DATETIME": (ogr.OFTDateTime, ogr.OFSTNone)}
# (column, type, NOT NULL) after OGR's own fid and geom
_TILE_FIELDS = (("tile_row", "INTEGER", True), ("tile_col", "INTEGER", True), ("score", "REAL", True),
                (CHANGED, "BOOLEAN", True), (CAPTION_CHANGED, "BOOLEAN", False), ("caption", "TEXT", False),
                ("date_before", "DATE", False), ("date_after", "DATE", False), ("model", "TEXT", True),
                ("run_id", "TEXT", True), ("verdict", "TEXT", False), ("reviewed_at", "DATETIME", False),
                ("reviewed_by", "TEXT", False))
_RUN_FIELDS = (("run_id", "TEXT", True), ("job_json", "TEXT", True), ("model", "TEXT", True),
               ("change_score", "TEXT", True), ("threshold", "REAL", True), ("threshold_source", "TEXT", True),
               ("started", "DATETIME", True), ("updated", "DATETIME", True), ("finished", "BOOLEAN", True),
               ("next_tile", "INTEGER", True), ("total_tiles", "INTEGER", True), ("done", "INTEGER", True),
               *((name, "INTEGER", True) for name in _COUNTERS))
_ALLOWED = ", ".join(f"'{v}'" for v in VERDICTS)
# What OGR cannot declare: a two-column UNIQUE, and a CHECK on the verdict (as triggers, SQLite adds no
# CHECK to an existing table).
_CONSTRAINTS = (f'CREATE UNIQUE INDEX "{LAYER}_tile" ON "{LAYER}" (tile_row, tile_col)',
                *(f'CREATE TRIGGER "{LAYER}_verdict_{name}" BEFORE {event} ON "{LAYER}" '
                  f"WHEN NEW.verdict NOT IN ({_ALLOWED}) "
                  f"BEGIN SELECT RAISE(ABORT, 'verdict must be one of {', '.join(VERDICTS)} or NULL'); END"
                  for name, event in (("insert", "INSERT"), ("update", "UPDATE OF verdict"))))


@dataclass
class TileResult:
    """One reviewed tile, as written to LAYER."""

    row: int
    col: int
    bounds: tuple[float, float, float, float]    # (left, bottom, right, top) in the grid CRS
    score: float
    score_above_threshold: bool                  # the review's "changed" (schema.py)
    caption_says_change: bool | None             # what the caption states; None without caption
    caption: str | None

    @property
    def disagrees(self) -> bool:
        return self.caption_says_change is not None and self.caption_says_change != self.score_above_threshold


@dataclass
class RunState:
    run_id: str
    next_tile: int
    total_tiles: int
    finished: bool
    skipped_nodata: int = 0
    skipped_outside: int = 0
    changed: int = 0
    captioned: int = 0
    disagreements: int = 0


def now_iso() -> str:
    """UTC now as GeoPackage DATETIME text (ISO 8601 with milliseconds and Z)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class OutputLock:
    """An OS lock on `.OUT.lock` beside a review's output, held while one review writes OUT: a second
    review of the same file (another shell, QGIS, the worker) is refused instead of writing the same
    tiles twice. The kernel drops the lock when its holder dies, so a killed review blocks nothing.
    Verdicts (the QGIS plugin's) do not take it: SQLite's locking puts them between the review's batches."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = self.out.with_name(f".{self.out.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock, or ReviewError: another review holds it, or OUT's folder is not writable."""
        while True:
            fd = self._open()
            if not _try_lock(fd):
                os.close(fd)
                raise ReviewError(f"another review is writing {self.out}; wait for it to finish or choose "
                                  "another --out")
            try:   # the holder may have released and removed the file between our open and lock
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self._fd = fd
                    return self
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        if sys.platform != "win32":
            self.path.unlink(missing_ok=True)   # still locked: a waiter that opened it sees it is stale
        os.close(self._fd)                      # closing releases the lock
        self._fd = None
        if sys.platform == "win32":             # Windows removes no open file: after the close
            try:
                self.path.unlink(missing_ok=True)
            except PermissionError:             # another review has it open and now holds it
                pass

    def _open(self) -> int:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            blocker = next((p for p in self.out.parents if p.exists()), None)
            why = (f"{blocker} is a file, not a folder" if blocker is not None and not blocker.is_dir()
                   else f"{self.out.parent}: {exc.strerror}")
            raise ReviewError(f"cannot write {self.out} ({why})") from None


def _try_lock(fd: int) -> bool:
    """An exclusive lock on the open file `fd` without waiting; False when another process holds it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):   # Windows says "permission denied" for a held lock
        return False
    return True


def check_writable(out: str | os.PathLike) -> None:
    """ReviewError now when a review could not write `out` (folder not writable, another review
    writing it), before a caller spends time loading a model."""
    _refuse_read_only(Path(out))
    OutputLock(out).acquire().release()


def _refuse_read_only(path: Path) -> None:
    if path.exists() and not os.access(path, os.W_OK):   # OGR would open it read-only and fail later
        raise ReviewError(f"cannot write {path} (the file is read-only)")


class ReviewStore:
    """An open review GeoPackage: `ReviewStore.open(job, plan, model)`, then append() per batch; it holds
    the OutputLock of the file until close()."""

    def __init__(self, path: Path, ds: ogr.DataSource, state: RunState, run: ogr.Feature, job: ReviewJob,
                 model: str, lock: OutputLock):
        self.path, self.ds, self.state, self.run, self.job, self.model = path, ds, state, run, job, model
        self.lock = lock
        self.layer, self.runs = ds.GetLayerByName(LAYER), ds.GetLayerByName(RUNS)
        self.features = self.layer.GetFeatureCount()
        self.counted = _has_table(ds, "gpkg_ogr_contents")   # a file of the sqlite3 writer before has none

    @classmethod
    def open(cls, job: ReviewJob, plan: ReviewPlan, model: str,
             threshold_source: str = "given for this review", change_score: str = "cem-cosine") -> "ReviewStore":
        """Create job.out, or reopen it when it holds this very job (else ReviewError naming the keys).
        job.threshold is the resolved one; `threshold_source` says where it came from; `change_score`
        which score the model gives (a resume must give the same)."""
        path = Path(job.out)
        _refuse_read_only(path)
        lock, ds = OutputLock(path).acquire(), None
        try:
            if not path.exists():
                _create(path, job, plan, model, threshold_source, change_score)
            ds = _open(path)
            state, run = _resume_state(ds, path, job, plan, model, change_score)
            return cls(path, ds, state, run, job, model, lock)
        except BaseException:
            if ds is not None:
                _close(ds)
            lock.release()
            raise

    def append(self, results: list[TileResult], *, next_tile: int, skipped_nodata: int,
               skipped_outside: int) -> None:
        """Write a batch's features and move next_tile past it, in one transaction."""
        s, now = self.state, now_iso()
        counts = dict(skipped_nodata=s.skipped_nodata + skipped_nodata,
                      skipped_outside=s.skipped_outside + skipped_outside,
                      changed=s.changed + sum(r.score_above_threshold for r in results),
                      captioned=s.captioned + sum(r.caption is not None for r in results),
                      disagreements=s.disagreements + sum(r.disagrees for r in results))
        run = self.run.Clone()
        _set(run, dict(counts, updated=now, next_tile=next_tile, done=next_tile,
                       finished=int(next_tile >= s.total_tiles)))
        features = [self._feature(r) for r in results]
        _check(self.ds.StartTransaction(), "cannot start a transaction")
        try:
            # A write first: the transaction takes SQLite's write lock now, waiting out a verdict being
            # saved, instead of failing later when a read snapshot it took has gone stale.
            _sql(self.ds, f"UPDATE gpkg_contents SET last_change = '{now}' WHERE table_name IN ('{LAYER}', '{RUNS}')")
            for feature in features:
                _check(self.layer.CreateFeature(feature), f"{self.path}: cannot write a tile")
            # OGR saves the extent and feature count only when the file is closed: a killed review's
            # file would keep stale ones (the extent of another session, a count without its triggers).
            if results:
                lefts, bottoms, rights, tops = zip(*(r.bounds for r in results))
                box = dict(min_x=min(lefts), min_y=min(bottoms), max_x=max(rights), max_y=max(tops))
                grow = ", ".join(f"{k} = {k[:3]}(coalesce({k}, {v!r}), {v!r})" for k, v in box.items())  # min/max
                _sql(self.ds, f"UPDATE gpkg_contents SET {grow} WHERE table_name = '{LAYER}'")
            if self.counted:
                _sql(self.ds, f"UPDATE gpkg_ogr_contents SET feature_count = {self.features + len(results)} "
                              f"WHERE table_name = '{LAYER}'")
            _check(self.runs.SetFeature(run), f"{self.path}: cannot write the run record")
            _check(self.ds.CommitTransaction(), f"{self.path}: cannot commit the batch")
        except BaseException:
            self._roll_back()
            raise
        self.run, self.features = run, self.features + len(results)
        s.next_tile, s.finished = next_tile, next_tile >= s.total_tiles
        for key, value in counts.items():
            setattr(s, key, value)

    def close(self) -> None:
        if self.ds is not None:
            self.layer = self.runs = None
            _close(self.ds)     # OGR writes the final extent and feature count, and its count triggers
            self.ds = None
        self.lock.release()

    def _feature(self, r: TileResult) -> ogr.Feature:
        feature = ogr.Feature(self.layer.GetLayerDefn())
        _set(feature, {"tile_row": int(r.row), "tile_col": int(r.col), "score": float(r.score),
                       CHANGED: int(r.score_above_threshold),
                       CAPTION_CHANGED: None if r.caption_says_change is None else int(r.caption_says_change),
                       "caption": r.caption, "date_before": self.job.date_before,
                       "date_after": self.job.date_after, "model": self.model, "run_id": self.state.run_id})
        feature.SetGeometryDirectly(_rectangle(r.bounds))
        return feature

    def _roll_back(self) -> None:
        try:
            self.ds.RollbackTransaction()
            # OGR's extent in memory took the rolled-back tiles; it writes it at close
            self.ds.ExecuteSQL(f"RECOMPUTE EXTENT ON {LAYER}")
        except RuntimeError:   # the batch's own error is the one to raise
            pass


def _check(result, what: str):
    """`result` of an OGR call; RuntimeError with GDAL's message when it says it failed (None, or a
    nonzero OGRErr: what OGR returns while GDAL's exceptions are off)."""
    if result is None or (isinstance(result, int) and result != ogr.OGRERR_NONE):
        raise RuntimeError(f"{what}: {gdal.GetLastErrorMsg() or 'OGR error'}")
    return result


def _sql(ds: ogr.DataSource, sql: str) -> None:
    """Run one SQL statement; RuntimeError when SQLite refuses it."""
    gdal.ErrorReset()
    result = ds.ExecuteSQL(sql)
    if result is not None:   # PRAGMAs answer with a row
        ds.ReleaseResultSet(result)
    if gdal.GetLastErrorType() >= gdal.CE_Failure:
        raise RuntimeError(f"{sql.split(maxsplit=1)[0]}: {gdal.GetLastErrorMsg()}")


def _has_table(ds: ogr.DataSource, name: str) -> bool:
    result = ds.ExecuteSQL(f"SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{name}'")
    try:
        return result is not None and result.GetFeatureCount() > 0
    finally:
        if result is not None:
            ds.ReleaseResultSet(result)


def _set(feature: ogr.Feature, values: dict) -> None:
    for name, value in values.items():   # None: NULL
        # by index: GDAL 3.6's bindings look a name up in Python, field by field (most of a batch's time)
        feature.SetField(feature.GetFieldIndex(name), value)


def _close(ds: ogr.DataSource) -> None:
    """Close `ds` now, whatever still refers to it (so the file is complete before it is moved)."""
    (ds.Close if hasattr(ds, "Close") else ds.Destroy)()   # Close: GDAL >= 3.8


def _rectangle(bounds: tuple[float, float, float, float]) -> ogr.Geometry:
    left, bottom, right, top = (float(v) for v in bounds)
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)):  # counter-clockwise
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometryDirectly(ring)
    return polygon


def _grid_srs(wkt: str) -> osr.SpatialReference:
    """The grid CRS as the layer's: an EPSG one carries its code (GDAL then writes srs_id = the code),
    any other is written as WKT under CUSTOM_SRS_ID."""
    srs = osr.SpatialReference()
    _check(srs.ImportFromWkt(wkt), "grid CRS")
    if srs.GetAuthorityName(None) != "EPSG":
        # An EPSG CRS spelt without its code (a PROJ string): rasterio's CRS.to_epsg rule, the best
        # match at 70 % confidence or more when that one is EPSG's.
        match, confidence = (srs.FindMatches() or [(None, 0)])[0]
        if confidence >= 70 and match.GetAuthorityName(None) == "EPSG":
            return match
    return srs


def _add_fields(layer: ogr.Layer, fields: tuple, unique: tuple[str, ...] = ()) -> None:
    for name, kind, not_null in fields:
        defn = ogr.FieldDefn(name, _TYPES[kind][0])
        defn.SetSubType(_TYPES[kind][1])
        defn.SetNullable(not not_null)
        defn.SetUnique(name in unique)
        _check(layer.CreateField(defn), f"field {name}")


def _open(path: Path) -> ogr.DataSource | None:
    """`path` opened for update, or None when it is no GeoPackage."""
    try:
        ds = ogr.GetDriverByName("GPKG").Open(str(path), 1)
    except RuntimeError:   # what it does instead of None while GDAL's exceptions are on
        return None
    if ds is not None:
        _sql(ds, "PRAGMA busy_timeout = 30000")   # wait while e.g. QGIS saves a verdict
    return ds


def _create(path: Path, job: ReviewJob, plan: ReviewPlan, model: str, threshold_source: str,
            change_score: str) -> None:
    """Write an empty review GeoPackage under a temporary name, then move it to `path` (whose folder the
    caller's OutputLock made)."""
    part = path.with_name(f".{path.name}.part.gpkg")   # GDAL wants the .gpkg extension
    _remove(part)
    ds = _check(ogr.GetDriverByName("GPKG").CreateDataSource(str(part), ["VERSION=1.3"]), f"cannot create {part}")
    try:
        try:
            _write_empty(ds, job, plan, model, threshold_source, change_score)
        finally:
            _close(ds)
        os.replace(part, path)
    except BaseException:
        _remove(part)
        raise


def _remove(part: Path) -> None:
    """A killed creation's file, with its WAL: SQLite would replay a stale WAL into a new file of that name."""
    for name in (part.name, f"{part.name}-wal", f"{part.name}-shm"):
        part.with_name(name).unlink(missing_ok=True)


def _write_empty(ds: ogr.DataSource, job: ReviewJob, plan: ReviewPlan, model: str, threshold_source: str,
                 change_score: str) -> None:
    """The layer, the runs table with the run's record, and what OGR cannot declare."""
    # WAL (as QGIS uses for GeoPackages), kept by the file: a kill mid-commit leaves no hot journal that
    # read-only openers (ogrinfo -ro, a QGIS layer) could not roll back, and readers never block the writer.
    _sql(ds, "PRAGMA journal_mode = WAL")
    tiles = _check(ds.CreateLayer(LAYER, _grid_srs(plan.crs), ogr.wkbPolygon,
                                  ["GEOMETRY_NAME=geom", "FID=fid", "SPATIAL_INDEX=YES", f"IDENTIFIER={LAYER}",
                                   "DESCRIPTION=UniRS change review tiles"]), f"layer {LAYER}")
    _add_fields(tiles, _TILE_FIELDS)
    runs = _check(ds.CreateLayer(RUNS, None, ogr.wkbNone, ["FID=id", f"IDENTIFIER={RUNS}",
                                                           "DESCRIPTION=UniRS review runs"]), f"table {RUNS}")
    _add_fields(runs, _RUN_FIELDS, unique=("run_id",))
    for sql in _CONSTRAINTS:
        _sql(ds, sql)
    now = now_iso()
    run = ogr.Feature(runs.GetLayerDefn())
    _set(run, dict(run_id=uuid.uuid4().hex, job_json=_job_json(job), model=model, change_score=change_score,
                   threshold=job.threshold, threshold_source=threshold_source, started=now, updated=now,
                   finished=0, next_tile=0, total_tiles=plan.total_tiles, done=0, **dict.fromkeys(_COUNTERS, 0)))
    _check(runs.CreateFeature(run), "cannot write the run record")
    _sql(ds, f"UPDATE gpkg_ogr_contents SET feature_count = 0 WHERE table_name = '{LAYER}'")   # known, not NULL


def _job_json(job: ReviewJob) -> str:
    """The job minus out, input paths absolute: what a resume is checked against."""
    d = {**job.to_dict(), **job.identity()}
    del d["out"]
    return json.dumps(d)


def _resume_state(ds: ogr.DataSource | None, path: Path, job: ReviewJob, plan: ReviewPlan, model: str,
                  change_score: str) -> tuple[RunState, ogr.Feature]:
    """The stored run of `path` (state and record), after checking it is this job, model, change score and
    grid."""
    runs = ds.GetLayerByName(RUNS) if ds is not None and ds.GetLayerByName(LAYER) is not None else None
    run = runs.GetNextFeature() if runs is not None else None   # the first by id
    if runs is not None:
        runs.ResetReading()   # ends the read: a stale snapshot would refuse the next write
    keys = ("run_id", "job_json", "model", "change_score", "next_tile", "total_tiles", "finished", *_COUNTERS)
    if run is None or any(run.GetFieldIndex(key) < 0 for key in keys):
        raise ReviewError(f"{path} exists and is not a UniRS review GeoPackage, or one written by an earlier "
                          "UniRS version; delete it or choose another --out")
    # The same model id may give another score (a checkpoint that got a change-score head): its tiles'
    # scores would not compare.
    stored = {**ReviewJob.from_dict({**json.loads(run["job_json"]), "out": str(path)}).identity(),
              "model": run["model"], "change_score": run["change_score"]}
    wanted = {**job.identity(), "model": model, "change_score": change_score}
    differing = [f"{key}={stored[key]!r}" for key in stored if stored[key] != wanted[key]]
    if differing:
        raise ReviewError(f"{path} holds a review with {', '.join(differing)}; delete it or choose another --out")
    total = run["total_tiles"]
    if total != plan.total_tiles:
        raise ReviewError(f"{path} holds a review of {total:,} tiles but the mosaics now make {plan.total_tiles:,}: "
                          "they changed; delete it or choose another --out")
    state = RunState(run["run_id"], run["next_tile"], total, bool(run["finished"]), *(run[k] for k in _COUNTERS))
    return state, run
