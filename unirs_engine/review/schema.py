"""The review GeoPackage's contract, shared by the engine (which writes it) and the QGIS plugin
(which styles it and records verdicts). Plain Python: importing it loads no rasterio and no torch.

One meaning of "changed": a tile is changed when its change score is at or above the review's
threshold (`score_above_threshold`). That decides which tiles get a caption, the map colour, the
panel's list and the summary counts. The caption's own statement is kept beside it
(`caption_says_change`, NULL for a tile without caption); where the two disagree the analyst should
look first.
"""

LAYER = "changes"                   # one polygon per reviewed tile
RUNS = "unirs_review_runs"          # the job, its change score and threshold, and where it stands
# RUNS.change_score: which score the tiles' `score` is; the threshold is on that score's scale.
HEAD_SCORE, COSINE_SCORE = "head", "cem-cosine"
SCORE_MEANINGS = {   # what a score says, in the words of the plugin's help and panel
    HEAD_SCORE: "the probability that the tile changed, from the model's change-score head (0 to 1)",
    COSINE_SCORE: "1 − the similarity of the model's before and after features (0 = the same)",
}
VERDICTS = ("confirmed", "rejected")
CHANGED = "score_above_threshold"   # the rule (see above)
CAPTION_CHANGED = "caption_says_change"
# The tiles whose two change fields disagree (an OGR/QGIS filter expression).
DISAGREE_FILTER = f"{CAPTION_CHANGED} IS NOT NULL AND {CAPTION_CHANGED} <> {CHANGED}"
# Columns of LAYER that readers rely on.
FIELDS = ("tile_row", "tile_col", "score", CHANGED, CAPTION_CHANGED, "caption", "date_before", "date_after",
          "model", "run_id", "verdict", "reviewed_at", "reviewed_by")
