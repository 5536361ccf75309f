"""What a change review is asked to do (ReviewJob) and what it did (ReviewSummary). No torch here."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from ..errors import UnirsError
from .schema import SCORES

# Score at or above which a tile is captioned, for a checkpoint that carries no calibrated threshold
# (review/calibrate.py); on the scale of 1 - mean cosine similarity of the CEM's before/after features.
DEFAULT_THRESHOLD = 0.1
TILE_UNITS = ("pixels", "map")
# Keys that change how fast a review runs, not what it writes: a resume may change them.
RUNTIME_KEYS = ("batch_size", "prefetch", "max_tiles")


def _is_iso_date(value: str | None) -> bool:
    try:
        return value is None or bool(date.fromisoformat(value))
    except (TypeError, ValueError):
        return False


class ReviewError(UnirsError, RuntimeError):
    """A review that cannot run; the message is one line naming the file or option and why."""


@dataclass(frozen=True)
class ReviewJob:
    before: str                      # raster path (GeoTIFF/VRT/...; georeferenced)
    after: str
    out: str                         # .gpkg path (created, or resumed if it holds the same job)
    tile_size: float = 256           # tile side, pixels of the common grid (tile_units="pixels")
    tile_units: str = "pixels"       #   or ground units of the grid CRS (tile_units="map")
    overlap: float = 0.0             # same units as tile_size, < tile_size
    crs: str | None = None           # common grid CRS (any rasterio user input); default before's
    resolution: float | None = None  # common grid pixel size in crs units; default before's
    bands: tuple[int, ...] | None = None   # 1-based, 1 or 3 bands; default RGB rule of inputs/raster.py
    extent: tuple[float, float, float, float] | None = None  # (left, bottom, right, top) in the grid
                                     #   CRS: review only this part of the overlap; default all of it
    threshold: float | None = None   # tiles with score >= threshold get a caption; None: the model's
                                     #   calibrated threshold (review/calibrate.py), else DEFAULT_THRESHOLD
    score: str | None = None         # the change score (schema.SCORES); None: the model's default
    caption_all: bool = False        # caption every valid tile
    min_valid: float = 0.5           # fraction of pixels valid in both dates below which a tile is skipped
    max_tiles: int = 100_000         # plan refused above this, message names the count
    batch_size: int | None = None    # tile pairs per forward pass / generate call; None: the engine's
    prefetch: int = 2                # batches read ahead (bounded queue)
    date_before: str | None = None   # ISO dates, written into every feature
    date_after: str | None = None
    instruction: str | None = None   # default prompts.CHANGE_DESCRIBE_INSTRUCTION

    def __post_init__(self):
        self._check_types()
        for name in ("bands", "extent"):   # lists from JSON
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = [msg for bad, msg in (
            (self.tile_units not in TILE_UNITS, f"tile_units must be one of {TILE_UNITS}, got {self.tile_units!r}"),
            (not self.tile_size > 0, f"tile_size must be > 0, got {self.tile_size}"),
            (not 0 <= self.overlap < self.tile_size,
             f"overlap must be >= 0 and < tile_size ({self.tile_size}), got {self.overlap}"),
            (self.resolution is not None and not self.resolution > 0,
             f"resolution must be > 0, got {self.resolution}"),
            (self.threshold is not None and not self.threshold >= 0,
             f"threshold must be >= 0, got {self.threshold}"),
            (self.score is not None and self.score not in SCORES,
             f"score must be one of {', '.join(SCORES)} or null, got {self.score!r}"),
            (not 0 <= self.min_valid <= 1, f"min_valid must be in [0, 1], got {self.min_valid}"),
            (self.max_tiles < 1, f"max_tiles must be >= 1, got {self.max_tiles}"),
            (self.batch_size is not None and self.batch_size < 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.prefetch < 1, f"prefetch must be >= 1, got {self.prefetch}"),
            (self.extent is not None and (len(self.extent) != 4 or not (self.extent[0] < self.extent[2]
                                                                         and self.extent[1] < self.extent[3])),
             f"extent must be (left, bottom, right, top) with left < right and bottom < top, got {self.extent}"),
            (not str(self.out).lower().endswith(".gpkg"), f"out must be a .gpkg file, got {self.out}"),
            *((not _is_iso_date(value), f"{name} must be an ISO date (YYYY-MM-DD), got {value!r}")
              for name, value in (("date_before", self.date_before), ("date_after", self.date_after))),
        ) if bad]
        if problems:
            raise ReviewError(f"bad review job: {problems[0]}")

    def _check_types(self) -> None:
        """A job can come as JSON from the worker protocol: name a value of the wrong type, before
        the range checks compare it."""
        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def whole(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        path = ((str, os.PathLike), "a path")
        expected = {"before": path, "after": path, "out": path,
                    "tile_units": (str, "a string"), "caption_all": (bool, "true or false")}
        for name in ("crs", "date_before", "date_after", "instruction", "score"):
            expected[name] = ((str, type(None)), "a string or null")
        for name, (kind, what) in expected.items():
            if not isinstance(getattr(self, name), kind):
                raise ReviewError(f"bad review job: {name} must be {what}, got {getattr(self, name)!r}")
        for name, valid, what in (
                *((n, number, "a number") for n in ("tile_size", "overlap", "min_valid")),
                *((n, lambda v: v is None or number(v), "a number or null") for n in ("resolution", "threshold")),
                *((n, whole, "a whole number") for n in ("max_tiles", "prefetch")),
                ("batch_size", lambda v: v is None or whole(v), "a whole number or null"),
                ("bands", lambda v: v is None or isinstance(v, (list, tuple)) and all(whole(b) for b in v),
                 "a list of 1-based band numbers or null"),
                ("extent", lambda v: v is None or isinstance(v, (list, tuple)) and all(number(x) for x in v),
                 "a list of 4 numbers (left, bottom, right, top) or null")):
            if not valid(getattr(self, name)):
                raise ReviewError(f"bad review job: {name} must be {what}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (bands as a list), for the worker protocol and the GeoPackage."""
        d = asdict(self)
        for name in ("bands", "extent"):
            d[name] = list(getattr(self, name)) if getattr(self, name) is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReviewJob":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ReviewError(f"bad review job: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as exc:  # a required key is missing
            raise ReviewError(f"bad review job: {exc}") from None

    def identity(self) -> dict[str, Any]:
        """The keys that decide what the review writes (compared on resume): all but out and
        RUNTIME_KEYS, with absolute input paths (a rerun from another folder is the same job)."""
        d = self.to_dict()
        for key in ("out", *RUNTIME_KEYS):
            d.pop(key)
        d["before"], d["after"] = absolute_source(self.before), absolute_source(self.after)
        return d


def absolute_source(path: str | os.PathLike) -> str:
    """A local path made absolute; a GDAL URL (/vsicurl/https://..., s3://...) as given (abspath would
    fold its "//")."""
    text = os.fspath(path)
    return text if text.startswith("/vsi") or "://" in text else os.path.abspath(text)


# Every option's default, read by the command line and the QGIS algorithms instead of typed again there.
JOB_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ReviewJob) if f.default is not dataclasses.MISSING}


@dataclass
class ReviewSummary:
    """One run_review call. done/elapsed_s/tiles_per_s are this call's; the counts are the whole review's."""

    run_id: str
    out: str
    total_tiles: int
    done: int                 # tiles handled this call (written or skipped)
    resumed_from: int         # tile index this call started at (0: a fresh review)
    skipped_nodata: int
    skipped_outside: int
    changed: int              # tiles whose score is at or above `threshold` (schema.py)
    captioned: int
    disagreements: int        # captioned tiles whose caption's statement differs from `changed`
    threshold: float          # the threshold applied (the job's, else the model's)
    change_score: str         # the score compared with it (schema.SCORES)
    cancelled: bool
    elapsed_s: float
    tiles_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
