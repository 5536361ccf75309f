"""The review GeoPackage's contract, shared by the engine (which writes it) and the QGIS plugin
(which styles it and records verdicts). Plain Python: importing it loads no rasterio and no torch.

One meaning of "changed": a tile is changed when its change score is at or above the review's
threshold (`score_above_threshold`). That decides which tiles get a caption, the map colour, the
panel's list and the summary counts. The caption's own statement is kept beside it
(`caption_says_change`, NULL for a tile without caption); where the two disagree the analyst should
look first.
"""

LAYER = "changes"                   # one polygon per reviewed tile
ARCHIVE_SUMMARY = "archive_summary.csv"   # an archive review's per-pair table, beside the pairs' GeoPackages
RUNS = "unirs_review_runs"          # the job, its change score and threshold, and where it stands
# RUNS.change_score: which score the tiles' `score` is; the threshold is on that score's scale.
# A checkpoint gives the first it can: the head (change_score/), the CEM's cosine (a UniRS checkpoint),
# the vision tower's own cosine (any checkpoint, e.g. VILA-1.5); a review may choose another it can give.
HEAD_SCORE, COSINE_SCORE, FEATURE_SCORE = "head", "cem-cosine", "feature-cosine"
SCORES = (HEAD_SCORE, COSINE_SCORE, FEATURE_SCORE)
SCORE_MEANINGS = {   # what a score says, in the words of the plugin's help and panel
    HEAD_SCORE: "the probability that the tile changed, from the model's change-score head (0 to 1)",
    COSINE_SCORE: "1 − the similarity of the model's before and after features (0 = the same)",
    FEATURE_SCORE: "1 − the similarity of the vision tower's before and after patch features (0 = the same)",
}
# Where a checkpoint keeps the threshold calibrated for each score: (file in the checkpoint, key).
THRESHOLD_KEYS = {
    HEAD_SCORE: ("change_score/config.json", "review_change_threshold"),
    COSINE_SCORE: ("config.json", "review_change_threshold"),
    FEATURE_SCORE: ("config.json", "review_feature_threshold"),
}
VERDICTS = ("confirmed", "rejected")
CHANGED = "score_above_threshold"   # the rule (see above)
CAPTION_CHANGED = "caption_says_change"
# The tiles whose two change fields disagree (an OGR/QGIS filter expression).
DISAGREE_FILTER = f"{CAPTION_CHANGED} IS NOT NULL AND {CAPTION_CHANGED} <> {CHANGED}"
# Columns of LAYER that readers rely on.
FIELDS = ("tile_row", "tile_col", "score", CHANGED, CAPTION_CHANGED, "caption", "date_before", "date_after",
          "model", "run_id", "verdict", "reviewed_at", "reviewed_by")
