"""The change-score threshold of a model, calibrated on labelled pairs and stored in its checkpoint.

The score (1 - mean cosine similarity of the CEM's before/after maps) has no common scale across
models: a real UniRS and the small demo model differ by orders of magnitude. So each checkpoint
carries its own threshold, chosen on LEVIR-CC-format pairs (changeflag 0/1) to maximise balanced
accuracy, and a review without an explicit threshold uses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .job import DEFAULT_THRESHOLD, ReviewError

CONFIG_KEY = "review_change_threshold"   # in the checkpoint's top-level config.json


@dataclass(frozen=True)
class Calibration:
    threshold: float
    balanced_accuracy: float   # mean of recall on changed and on unchanged pairs at `threshold`
    changed: int               # labelled pairs used
    unchanged: int


def best_threshold(scores: Sequence[float], changed: Sequence[bool]) -> Calibration:
    """The threshold (midway between two neighbouring scores) that best separates changed pairs
    (score >= threshold) from unchanged ones, by balanced accuracy; ties go to the lower threshold,
    which captions more (a missed change costs the analyst more than an extra caption)."""
    if len(scores) != len(changed):
        raise ValueError(f"{len(scores)} scores but {len(changed)} labels")
    n_pos = sum(1 for c in changed if c)
    n_neg = len(changed) - n_pos
    if not n_pos or not n_neg:
        raise ReviewError(f"calibration needs changed and unchanged pairs, got {n_pos} changed and "
                          f"{n_neg} unchanged")
    ranked = sorted(zip(scores, changed))
    # Cut before the i-th ranked score: pairs i.. are called changed. Only cuts between two
    # different scores (or before the first) are real thresholds.
    best, threshold = -1.0, ranked[0][0]
    pos_below = neg_below = 0
    for i, (score, is_changed) in enumerate(ranked):
        if i == 0 or ranked[i - 1][0] < score:
            accuracy = ((n_pos - pos_below) / n_pos + neg_below / n_neg) / 2
            if accuracy > best:
                best, threshold = accuracy, score if i == 0 else (ranked[i - 1][0] + score) / 2
        pos_below += bool(is_changed)
        neg_below += not is_changed
    return Calibration(float(threshold), best, n_pos, n_neg)


def calibrate(engine, pairs: Sequence[tuple[str, str]], changed: Sequence[bool],
              batch_size: int = 16) -> Calibration:
    """Score `pairs` (before, after image paths on one grid) with `engine` and pick the threshold."""
    from ..inputs.pair import read_pair

    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chips = [read_pair(before, after) for before, after in pairs[start:start + batch_size]]
        scores += engine.change_scores(chips)
    return best_threshold(scores, changed)


def stored_threshold(config: dict) -> float:
    """The threshold a checkpoint's config.json carries, else the package default."""
    value = config.get(CONFIG_KEY)
    return float(value) if value is not None else DEFAULT_THRESHOLD


def store(model_dir: str | os.PathLike, calibration: Calibration, source: str) -> Path:
    """Write the threshold (and how it was found) into model_dir/config.json, atomically."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    config[CONFIG_KEY] = calibration.threshold
    config[CONFIG_KEY + "_info"] = {**asdict(calibration), "source": source}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)
    return path
