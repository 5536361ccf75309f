"""Change review between two dated mosaics: a tile grid over their overlap, batched change scores and
captions, streamed to a resumable GeoPackage. Importing this package imports no torch and no
rasterio (the QGIS plugin reads `schema` and `calibrate`); the rest loads on first use."""

from importlib import import_module

from .job import DEFAULT_THRESHOLD, ReviewError, ReviewJob, ReviewSummary
from .schema import LAYER

_LAZY = {"ReviewPlan": "grid", "plan_review": "grid", "run_review": "run"}

__all__ = ["DEFAULT_THRESHOLD", "LAYER", "ReviewError", "ReviewJob", "ReviewSummary", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
