"""The review's GeoPackage, written with sqlite3 to the OGC GeoPackage 1.3 spec (no vector library needed).

Layer LAYER holds one polygon per reviewed tile; the attributes table RUNS holds the job and where it
stands. Each batch's features and the next tile to do are committed in one transaction, so a killed
review leaves a valid file with every finished tile, and a rerun resumes where it stopped. One review
at a time writes a file: an OS lock beside it (OutputLock) refuses a second.
"""

from __future__ import annotations

import json
import os
import sys
import sqlite3
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rasterio.crs import CRS

from ..inputs.raster import crs_label
from .grid import ReviewPlan
from .job import ReviewError, ReviewJob
from .schema import CAPTION_CHANGED, CHANGED, LAYER, RUNS, VERDICTS

GPKG_APPLICATION_ID = 0x47504B47   # "GPKG"
GPKG_VERSION = 10300               # 1.3.0
CUSTOM_SRS_ID = 100000             # a grid CRS without an EPSG code

_WGS84_WKT = CRS.from_epsg(4326).to_wkt()
_COUNTERS = ("skipped_nodata", "skipped_outside", "changed", "captioned", "disagreements")

_SCHEMA = f"""
CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY,
  organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL,
  description TEXT);
CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL,
  identifier TEXT UNIQUE, description TEXT DEFAULT '',
  last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
  geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT uk_gc_table_name UNIQUE (table_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE "{LAYER}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom POLYGON,
  tile_row INTEGER NOT NULL, tile_col INTEGER NOT NULL, score REAL NOT NULL,
  {CHANGED} BOOLEAN NOT NULL, {CAPTION_CHANGED} BOOLEAN,
  caption TEXT, date_before DATE, date_after DATE, model TEXT NOT NULL, run_id TEXT NOT NULL,
  verdict TEXT CHECK (verdict IN ('confirmed', 'rejected')), reviewed_at DATETIME, reviewed_by TEXT,
  UNIQUE (tile_row, tile_col));
CREATE TABLE "{RUNS}" (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, run_id TEXT NOT NULL UNIQUE,
  job_json TEXT NOT NULL, model TEXT NOT NULL, change_score TEXT NOT NULL,
  threshold REAL NOT NULL, threshold_source TEXT NOT NULL,
  started DATETIME NOT NULL, updated DATETIME NOT NULL,
  finished BOOLEAN NOT NULL, next_tile INTEGER NOT NULL, total_tiles INTEGER NOT NULL,
  done INTEGER NOT NULL, skipped_nodata INTEGER NOT NULL, skipped_outside INTEGER NOT NULL,
  changed INTEGER NOT NULL, captioned INTEGER NOT NULL, disagreements INTEGER NOT NULL);
"""


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


def gpkg_polygon(bounds: tuple[float, float, float, float], srs_id: int) -> bytes:
    """A rectangle as GeoPackage binary: GP header (little endian, xy envelope) + WKB polygon."""
    left, bottom, right, top = bounds
    header = b"GP" + bytes([0, 0b011]) + struct.pack("<i4d", srs_id, left, right, bottom, top)
    ring = ((left, bottom), (right, bottom), (right, top), (left, top), (left, bottom))  # counter-clockwise
    wkb = struct.pack("<BIII", 1, 3, 1, len(ring)) + b"".join(struct.pack("<2d", x, y) for x, y in ring)
    return header + wkb


def _srs(plan: ReviewPlan) -> tuple[int, tuple]:
    """(srs_id, gpkg_spatial_ref_sys row) of the grid CRS: its EPSG code when it has one."""
    crs = CRS.from_wkt(plan.crs)
    epsg = crs.to_epsg()
    srs_id = epsg or CUSTOM_SRS_ID
    return srs_id, (crs_label(crs), srs_id, "EPSG" if epsg else "NONE", srs_id, plan.crs, "grid CRS of the review")


class OutputLock:
    """An OS lock on `.OUT.lock` beside a review's output, held while one review writes OUT: a second
    review of the same file (another shell, QGIS, the worker) is refused instead of writing the same
    tiles twice. The kernel drops the lock when its holder dies, so a killed review blocks nothing.
    Verdicts (set_verdict) do not take it: SQLite's own locking orders them with the review's commits."""

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
    if path.exists() and not os.access(path, os.W_OK):   # SQLite would open it read-only and fail later
        raise ReviewError(f"cannot write {path} (the file is read-only)")


class ReviewStore:
    """An open review GeoPackage: `ReviewStore.open(job, plan, model)`, then append() per batch; it holds
    the OutputLock of the file until close()."""

    def __init__(self, path: Path, conn: sqlite3.Connection, state: RunState, job: ReviewJob, model: str,
                 srs_id: int, lock: OutputLock):
        self.path, self.conn, self.state, self.job, self.model, self.srs_id = path, conn, state, job, model, srs_id
        self.lock = lock

    @classmethod
    def open(cls, job: ReviewJob, plan: ReviewPlan, model: str,
             threshold_source: str = "given for this review", change_score: str = "cem-cosine") -> "ReviewStore":
        """Create job.out, or reopen it when it holds this very job (else ReviewError naming the keys).
        job.threshold is the resolved one; `threshold_source` says where it came from; `change_score`
        which score the model gives (a resume must give the same)."""
        path = Path(job.out)
        _refuse_read_only(path)
        lock, conn = OutputLock(path).acquire(), None
        try:
            if not path.exists():
                _create(path, job, plan, model, threshold_source, change_score)
            conn = _connect(path)
            state = _resume_state(conn, path, job, plan, model, change_score)
            # WAL (as QGIS uses for GeoPackages): a kill mid-commit leaves no hot journal that read-only
            # openers (ogrinfo -ro, a QGIS layer) could not roll back, and readers never block the writer.
            conn.execute("PRAGMA journal_mode = WAL")
            srs_id = conn.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?",
                                  (LAYER,)).fetchone()[0]
        except BaseException:
            if conn is not None:
                conn.close()
            lock.release()
            raise
        return cls(path, conn, state, job, model, srs_id, lock)

    def append(self, results: list[TileResult], *, next_tile: int, skipped_nodata: int,
               skipped_outside: int) -> None:
        """Write a batch's features and move next_tile past it, in one transaction."""
        s, job, now = self.state, self.job, now_iso()
        rows = [(gpkg_polygon(r.bounds, self.srs_id), r.row, r.col, r.score, int(r.score_above_threshold),
                 None if r.caption_says_change is None else int(r.caption_says_change), r.caption,
                 job.date_before, job.date_after, self.model, s.run_id) for r in results]
        counts = dict(skipped_nodata=s.skipped_nodata + skipped_nodata,
                      skipped_outside=s.skipped_outside + skipped_outside,
                      changed=s.changed + sum(r.score_above_threshold for r in results),
                      captioned=s.captioned + sum(r.caption is not None for r in results),
                      disagreements=s.disagreements + sum(r.disagrees for r in results))
        with self.conn:  # one transaction: the features and next_tile, or neither
            self.conn.executemany(
                f'INSERT INTO "{LAYER}" (geom, tile_row, tile_col, score, {CHANGED}, {CAPTION_CHANGED}, caption, '
                'date_before, date_after, model, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)', rows)
            if results:
                lefts, bottoms, rights, tops = zip(*(r.bounds for r in results))
                self.conn.execute(
                    "UPDATE gpkg_contents SET min_x = min(coalesce(min_x, :x0), :x0), "
                    "min_y = min(coalesce(min_y, :y0), :y0), max_x = max(coalesce(max_x, :x1), :x1), "
                    "max_y = max(coalesce(max_y, :y1), :y1) WHERE table_name = :t",
                    dict(x0=min(lefts), y0=min(bottoms), x1=max(rights), y1=max(tops), t=LAYER))
            self.conn.execute("UPDATE gpkg_contents SET last_change = ? WHERE table_name IN (?, ?)",
                              (now, LAYER, RUNS))
            self.conn.execute(
                f'UPDATE "{RUNS}" SET updated = :now, next_tile = :next, done = :next, finished = :fin, '
                "skipped_nodata = :skipped_nodata, skipped_outside = :skipped_outside, changed = :changed, "
                "captioned = :captioned, disagreements = :disagreements WHERE run_id = :run_id",
                dict(counts, now=now, next=next_tile, fin=int(next_tile >= s.total_tiles), run_id=s.run_id))
        s.next_tile, s.finished = next_tile, next_tile >= s.total_tiles
        for key, value in counts.items():
            setattr(s, key, value)

    def close(self) -> None:
        self.conn.close()
        self.lock.release()


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=30)  # waits while e.g. QGIS writes a verdict
        conn.execute("PRAGMA foreign_keys = ON")
        return conn
    except sqlite3.Error as exc:
        raise ReviewError(f"{path}: cannot open as a GeoPackage ({exc})") from None


def _create(path: Path, job: ReviewJob, plan: ReviewPlan, model: str, threshold_source: str,
            change_score: str) -> None:
    """Write an empty review GeoPackage under a temporary name, then move it to `path` (whose folder the
    caller's OutputLock made)."""
    part = path.with_name(f".{path.name}.part")
    part.unlink(missing_ok=True)
    srs_id, srs_row = _srs(plan)
    now = now_iso()
    conn = sqlite3.connect(part)
    try:
        with conn:
            conn.execute(f"PRAGMA application_id = {GPKG_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {GPKG_VERSION}")
            conn.executescript(_SCHEMA)
            srs_rows = {-1: ("Undefined cartesian SRS", -1, "NONE", -1, "undefined",
                             "undefined cartesian coordinate reference system"),
                        0: ("Undefined geographic SRS", 0, "NONE", 0, "undefined",
                            "undefined geographic coordinate reference system"),
                        4326: ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT,
                               "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid")}
            srs_rows.setdefault(srs_id, srs_row)
            conn.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", list(srs_rows.values()))
            conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
                         "srs_id) VALUES (?, 'features', ?, ?, ?, ?)",
                         (LAYER, LAYER, "UniRS change review tiles", now, srs_id))
            conn.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'POLYGON', ?, 0, 0)", (LAYER, srs_id))
            conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change) "
                         "VALUES (?, 'attributes', ?, ?, ?)", (RUNS, RUNS, "UniRS review runs", now))
            conn.execute(
                f'INSERT INTO "{RUNS}" (run_id, job_json, model, change_score, threshold, threshold_source, '
                "started, updated, finished, next_tile, total_tiles, done, skipped_nodata, skipped_outside, "
                "changed, captioned, disagreements) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, 0, 0, 0, 0, 0, 0)",
                (uuid.uuid4().hex, _job_json(job), model, change_score, job.threshold, threshold_source, now,
                 now, plan.total_tiles))
        conn.close()
        os.replace(part, path)
    except BaseException:
        conn.close()
        part.unlink(missing_ok=True)
        raise


def _job_json(job: ReviewJob) -> str:
    """The job minus out, input paths absolute: what a resume is checked against."""
    d = {**job.to_dict(), **job.identity()}
    del d["out"]
    return json.dumps(d)


def _resume_state(conn: sqlite3.Connection, path: Path, job: ReviewJob, plan: ReviewPlan, model: str,
                  change_score: str) -> RunState:
    """The stored run of `path`, after checking it is this job, model, change score and grid."""
    try:
        row = conn.execute(f'SELECT run_id, job_json, model, change_score, next_tile, total_tiles, finished, '
                           f'{", ".join(_COUNTERS)} FROM "{RUNS}" ORDER BY id LIMIT 1').fetchone()
    except sqlite3.DatabaseError:  # not SQLite at all, or no runs table
        row = None
    if row is None:
        raise ReviewError(f"{path} exists and is not a UniRS review GeoPackage, or one written by an earlier "
                          "UniRS version; delete it or choose another --out")
    run_id, job_json, stored_model, stored_score, next_tile, total, finished, *counts = row
    # The same model id may give another score (a checkpoint that got a change-score head): its tiles'
    # scores would not compare.
    stored = {**ReviewJob.from_dict({**json.loads(job_json), "out": str(path)}).identity(), "model": stored_model,
              "change_score": stored_score}
    wanted = {**job.identity(), "model": model, "change_score": change_score}
    differing = [f"{key}={stored[key]!r}" for key in stored if stored[key] != wanted[key]]
    if differing:
        raise ReviewError(f"{path} holds a review with {', '.join(differing)}; delete it or choose another --out")
    if total != plan.total_tiles:
        raise ReviewError(f"{path} holds a review of {total:,} tiles but the mosaics now make {plan.total_tiles:,}: "
                          "they changed; delete it or choose another --out")
    return RunState(run_id, next_tile, total, bool(finished), *counts)


def set_verdict(out: str | os.PathLike, fid: int, verdict: str | None, by: str | None = None) -> None:
    """Mark feature `fid` of a review GeoPackage 'confirmed' or 'rejected' by `by` (None clears it)."""
    if verdict is not None and verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {VERDICTS} or None, got {verdict!r}")
    conn = _connect(Path(out))
    try:
        with conn:
            stamp = now_iso() if verdict else None
            cur = conn.execute(f'UPDATE "{LAYER}" SET verdict = ?, reviewed_at = ?, reviewed_by = ? WHERE fid = ?',
                               (verdict, stamp, by if verdict else None, int(fid)))
            if cur.rowcount == 0:
                raise ReviewError(f"{out}: layer {LAYER} has no feature with fid {fid}")
            conn.execute("UPDATE gpkg_contents SET last_change = ? WHERE table_name = ?", (now_iso(), LAYER))
    except sqlite3.DatabaseError as exc:
        raise ReviewError(f"{out}: cannot set the verdict ({exc})") from None
    finally:
        conn.close()
