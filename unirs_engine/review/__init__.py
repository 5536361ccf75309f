"""Change review between two dated mosaics: a tile grid over their overlap, batched change scores and
captions, streamed to a resumable GeoPackage. Importing this package imports no torch."""

from .grid import ReviewPlan, plan_review
from .job import DEFAULT_THRESHOLD, ReviewError, ReviewJob, ReviewSummary
from .run import run_review
from .store import LAYER, set_verdict

__all__ = ["DEFAULT_THRESHOLD", "LAYER", "ReviewError", "ReviewJob", "ReviewPlan", "ReviewSummary",
           "plan_review", "run_review", "set_verdict"]
