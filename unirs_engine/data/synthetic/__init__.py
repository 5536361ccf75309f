"""Synthetic multi-temporal benchmark: procedural scenes, change events, captions, questions, videos."""

from .mosaic import write_mosaic_pair
from .writer import write_benchmark

__all__ = ["write_benchmark", "write_mosaic_pair"]
