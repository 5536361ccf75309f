"""Dataset readers (RSVQA, LEVIR-CC, ERA, GeoChat-style) that yield types.Sample, and the synthetic benchmark."""

from .records import DataError, SkippedRecordWarning
from .registry import TASKS, load_samples

__all__ = ["DataError", "SkippedRecordWarning", "TASKS", "load_samples"]
