"""Which change-score threshold a review applies for a model, read without torch or rasterio: the user's
(fitted to their verdicts, UNIRS_HOME/thresholds.json, by model id and score), else the one calibrated in
the checkpoint's config (review/schema.THRESHOLD_KEYS says which file and key per score), else the
default. Writing them is review/calibrate.py's. The engine, checkpoint_info and the plugin read here;
nothing here imports the engine, so the engine and the review do not import each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .review.job import DEFAULT_THRESHOLD
from .review.schema import THRESHOLD_KEYS
from .runtime.paths import unirs_home

USER_THRESHOLDS = "thresholds.json"      # in UNIRS_HOME: {model id: {"threshold": ..., "score": ..., ...}}
# The score of thresholds recorded before models had a head (reviews and user thresholds without one).
EARLIER_SCORE = "cem-cosine"


def threshold_key(score: str) -> str:
    """The config key of the threshold calibrated for `score`."""
    return THRESHOLD_KEYS[score][1]


def checkpoint_calibration(config_file: str | os.PathLike, score: str) -> tuple[float | None, dict]:
    """(threshold, how it was calibrated) of `score` in a checkpoint config file; (None, {}) when it
    has none."""
    try:
        config = json.loads(Path(config_file).read_text())
    except (OSError, ValueError):
        return None, {}
    key = threshold_key(score)
    return config.get(key), config.get(key + "_info") or {}


def model_threshold(model_id: str, config_file: str | os.PathLike, score: str) -> tuple[float, str]:
    """(threshold, where it comes from) for a review without an explicit one; `config_file` keeps the
    checkpoint's threshold of `score` (Engine.threshold_config_file). A user's threshold fitted to
    another score of the same model does not apply."""
    user = user_thresholds().get(model_id)
    if user is not None and user.get("score", EARLIER_SCORE) == score:
        return float(user["threshold"]), f"your verdicts in {Path(user['review']).name} ({user['created'][:10]})"
    threshold, _ = checkpoint_calibration(config_file, score)
    if threshold is not None:
        return float(threshold), "calibrated in the checkpoint"
    return DEFAULT_THRESHOLD, "default (the model carries no calibrated threshold)"


def user_thresholds() -> dict[str, dict]:
    try:
        return json.loads((unirs_home() / USER_THRESHOLDS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
