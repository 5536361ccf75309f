"""The change-score head: a small classifier on the vision tower's features of two dates that says how
likely the pair shows a real change, for the review's cheap per-tile score (no text generation).

Why a head and not the CEM's cosine: the demo tower's features also react to colour balance and
resampling, which differ between the dates of real mosaics; 1 - mean cosine then scores unchanged
resampled tiles above everything in clean pairs. The head reads the same features after the after
chip's gain is matched to the before chip, and was trained on pairs augmented like mosaic tiles
(review/augment.py). The CEM stays what feeds the LLM; the head only scores.

On disk it is an optional part of a checkpoint, `change_score/` (config.json + model.safetensors),
beside the VILA-1.5 folders: checkpoints without it keep the CEM cosine score (older UniRS) or, with no
CEM either (VILA-1.5), the tower's own feature cosine (`feature_change_score`). Its config also
carries the threshold calibrated for its score (review/calibrate.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..types import Chip, valid_in_all

FOLDER = "change_score"          # in the checkpoint folder
KIND = "unirs-change-score"      # config.json "type"
MIN_COMMON_PIXELS = 16           # fewer pixels with data in both dates: no gain is estimated


def match_gain(before: Chip, after: Chip) -> Chip:
    """The after chip with each channel scaled so that its mean over the pixels with data in both
    dates equals the before chip's (clipped to 1..255): a date's colour balance is not change."""
    common = valid_in_all((before, after))                                   # (H, W)
    if common.sum() < MIN_COMMON_PIXELS:
        return after
    b, a = before.image.astype(np.float32), after.image.astype(np.float32)    # (H, W, 3)
    gain = b[common].mean(0) / np.maximum(a[common].mean(0), 1.0)            # (3,)
    matched = np.where(common[..., None], np.clip(a * gain, 1, 255), a)      # (H, W, 3)
    return replace(after, image=matched.astype(np.uint8))


def feature_change_score(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(B, P, D) tower features of two dates -> (B,): 1 - mean per-patch cosine similarity (0 = the
    same). Needs no trained part, so any checkpoint can score a review with it."""
    cos = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1, eps=1e-8)  # (B, P)
    return 1.0 - cos.mean(dim=1)


class ChangeScoreHead(nn.Module):
    """(B, P, D) before and after features -> (B,) probability that the pair shows a change.

    The score is the sigmoid of the logit, not the logit: a review threshold is a number in 0..1
    like the cosine score's (review/job.py refuses negative ones); the order, and so any calibrated
    threshold's balanced accuracy, is the logit's."""

    def __init__(self, dim: int, hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.dim, self.hidden, self.dropout = dim, hidden, dropout
        # Standardisation of the pooled input, fitted on the training pairs (saved with the weights).
        self.register_buffer("input_mean", torch.zeros(2 * dim))
        self.register_buffer("input_std", torch.ones(2 * dim))
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    @staticmethod
    def pool(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Per-patch absolute difference, mean- and max-pooled over patches: (B, P, D) x 2 -> (B, 2D)."""
        diff = (before.float() - after.float()).abs()                       # (B, P, D)
        return torch.cat([diff.mean(1), diff.amax(1)], dim=1)                # (B, 2D)

    def fit_standardisation(self, pooled: torch.Tensor) -> None:
        """Mean and std of the pooled training inputs (N, 2D)."""
        self.input_mean.copy_(pooled.mean(0))
        self.input_std.copy_(pooled.std(0) + 1e-6)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, 2D) pooled inputs -> (B,) logits."""
        x = (pooled - self.input_mean) / self.input_std                     # (B, 2D)
        return self.mlp(x).squeeze(1)                                        # (B,)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(self.pool(before, after)))         # (B,)

    def architecture(self) -> dict[str, Any]:
        """What config.json must hold to rebuild this module."""
        return {"type": KIND, "dim": self.dim, "hidden": self.hidden, "dropout": self.dropout,
                "features": "vision tower (the checkpoint's select layer), after chip gain-matched",
                "pooling": "|before - after| mean and max over patches"}
