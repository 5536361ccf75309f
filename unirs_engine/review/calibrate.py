"""The change-score threshold of a model: calibrated on labelled pairs and stored in its checkpoint,
or learnt from an analyst's verdicts in a review and kept per user.

The scores (schema.py: the change-score head's probability, 1 - mean cosine similarity of the CEM's
before/after maps, or of the vision tower's patch features; Engine.change_score says which a model
gives by default) have no common scale across models and scores. So each checkpoint carries its own
threshold per score, chosen on LEVIR-CC-format pairs (changeflag 0/1) to maximise balanced accuracy,
where schema.THRESHOLD_KEYS says (the head's in change_score/config.json, the others in config.json).
The head's is chosen on mosaic-like copies of the pairs (augment.py), since that is what reviews read.
An analyst's confirmed/rejected tiles of a review are such labelled pairs too: a threshold fitted to
them is stored in the user's data folder (UNIRS_HOME/thresholds.json, by model id and score; the
checkpoint folder may be read-only or replaced by a plugin update) and wins over the checkpoint's.
A review without an explicit threshold uses the first of: the user's, the checkpoint's, the default
(reading them is thresholds.py's). No rasterio or torch here: the QGIS plugin calls it in-process.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import write_atomic
from ..runtime.paths import unirs_home
from ..thresholds import USER_THRESHOLDS, threshold_key, user_thresholds
from .job import ReviewError
from .schema import LAYER, RUNS

MIN_VERDICTS = 5                         # of each kind, to recalibrate from a review
HEAD_COPIES = 3                          # mosaic-like copies per labelled pair, calibrating a head's score


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


def calibrate(engine, pairs: Sequence[tuple[str, str]], changed: Sequence[bool], *, copies: int = 0,
              seed: int = 0, batch_size: int = 16, score: str | None = None) -> Calibration:
    """Score `pairs` (before, after image paths on one grid) with `engine` by `score` (default: the
    model's), as read (copies=0) or as `copies` mosaic-like versions of each (augment.py), and pick
    the threshold."""
    from .augment import read_pairs, review_read_side

    chips = read_pairs(pairs, copies=copies, seed=seed, side=review_read_side(engine.preprocess.size))
    scores: list[float] = []
    batch: list = []
    for pair in chips:
        batch.append(pair)
        if len(batch) == batch_size:
            scores += engine.change_scores(batch, score)
            batch = []
    if batch:
        scores += engine.change_scores(batch, score)
    return best_threshold(scores, list(changed) * max(copies, 1))


@dataclass(frozen=True)
class Recalibration:
    """A threshold fitted to the verdicts of one review."""

    model_id: str
    score: str                 # the change score the review used (Engine.change_score)
    review: str
    before: Calibration        # the threshold the review applied, scored on the verdicts
    after: Calibration         # the best threshold on the verdicts


def calibrate_from_review(gpkg: str | os.PathLike, min_each: int = MIN_VERDICTS) -> Recalibration:
    """Fit the threshold to the confirmed (changed) and rejected (unchanged) tiles of a review."""
    try:
        conn = sqlite3.connect(f"file:{os.fspath(gpkg)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ReviewError(f"{gpkg}: cannot open ({exc})") from None
    try:
        model, applied, score = conn.execute(
            f'SELECT model, threshold, change_score FROM "{RUNS}" ORDER BY id LIMIT 1').fetchone()
        judged = conn.execute(f'SELECT score, verdict FROM "{LAYER}" WHERE verdict IS NOT NULL').fetchall()
    except (sqlite3.Error, TypeError):
        raise ReviewError(f"{gpkg} is not a UniRS change review of this version") from None
    finally:
        conn.close()
    confirmed = sum(verdict == "confirmed" for _, verdict in judged)
    rejected = len(judged) - confirmed
    if confirmed < min_each or rejected < min_each:
        raise ReviewError(f"recalibrating needs at least {min_each} confirmed and {min_each} rejected tiles; "
                          f"{Path(gpkg).name} has {confirmed} confirmed and {rejected} rejected")
    scores = [score for score, _ in judged]
    labels = [verdict == "confirmed" for _, verdict in judged]
    return Recalibration(model, score, os.fspath(gpkg), _scored(applied, scores, labels), best_threshold(scores, labels))


def _scored(threshold: float, scores: Sequence[float], changed: Sequence[bool]) -> Calibration:
    """Balanced accuracy of `threshold` on labelled scores."""
    pos = [s for s, c in zip(scores, changed) if c]
    neg = [s for s, c in zip(scores, changed) if not c]
    accuracy = (sum(s >= threshold for s in pos) / len(pos) + sum(s < threshold for s in neg) / len(neg)) / 2
    return Calibration(float(threshold), accuracy, len(pos), len(neg))


def keep_user_threshold(recalibration: Recalibration) -> Path:
    """Store the fitted threshold for the review's model in UNIRS_HOME (atomically); returns the file."""
    path = unirs_home() / USER_THRESHOLDS
    stored = user_thresholds()
    stored[recalibration.model_id] = {
        "threshold": recalibration.after.threshold, "score": recalibration.score, "review": recalibration.review,
        "balanced_accuracy_before": recalibration.before.balanced_accuracy,
        "balanced_accuracy_after": recalibration.after.balanced_accuracy,
        "confirmed": recalibration.after.changed, "rejected": recalibration.after.unchanged,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(stored, indent=2))


def store(config_file: str | os.PathLike, calibration: Calibration, source: str, *, score: str, **how) -> Path:
    """Write the threshold of `score` (and how it was found: `source`, `how`) into the checkpoint config
    that keeps it (Engine.threshold_config_file), atomically."""
    path = Path(config_file)
    config = json.loads(path.read_text())
    key = threshold_key(score)
    config[key] = calibration.threshold
    config[key + "_info"] = {**asdict(calibration), "source": source, "score": score, **how}
    return write_atomic(path, json.dumps(config, indent=2))
