"""VILA-1.5's `mlp_downsample` projector, plus UniRS' Change Extraction module beside it.

State-dict keys: `layers.single.{1,2,4}.*` (VILA's `layers.{1,2,4}.*`) and `layers.change.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .change import ChangeExtraction


class DownSampleBlock(nn.Module):
    """(N, g*g, D) -> (N, ceil(g/2)^2, 4D): 2x2 patch merging, VILA's exact token/channel order.

    The grid is zero-padded to even (a row at the bottom, a column at the right); channels are
    [x(2r,2k), x(2r,2k+1), x(2r+1,2k), x(2r+1,2k+1)] and token t = k * (g'/2) + r (column pairs
    major), because VILA merges column pairs, transposes, then merges row pairs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p, c = x.shape
        g = int(round(p ** 0.5))
        if g * g != p:
            raise ValueError(f"DownSampleBlock needs a square number of tokens, got {p}")
        x = x.reshape(n, g, g, c)                                       # (N, rows, cols, D)
        x = F.pad(x, (0, 0, 0, g % 2, 0, g % 2))                        # (N, g', g', D), g' even
        rows = cols = g + g % 2
        x = x.reshape(n, rows, cols // 2, 2 * c)                        # merge column pairs
        x = x.permute(0, 2, 1, 3)                                       # (N, cols/2, rows, 2D)
        x = x.reshape(n, cols // 2, rows // 2, 4 * c)                   # merge row pairs
        return x.reshape(n, -1, 4 * c)                                  # (N, (g'/2)^2, 4D)


def mlp_downsample(mm_hidden_size: int, hidden_size: int) -> nn.Sequential:
    """VILA's projector: indices 0..4 so that weights sit at `1.*`, `2.*`, `4.*`."""
    return nn.Sequential(
        DownSampleBlock(),
        nn.LayerNorm(4 * mm_hidden_size),
        nn.Linear(4 * mm_hidden_size, hidden_size),
        nn.GELU(),
        nn.Linear(hidden_size, hidden_size),
    )


class MultimodalProjector(nn.Module):
    """Vision features -> LLM embeddings; optionally fuses an image pair first (UniRS)."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, change_grid: int | None = None) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {"single": mlp_downsample(mm_hidden_size, hidden_size)}
        if change_grid is not None:
            layers["change"] = ChangeExtraction(mm_hidden_size, change_grid)
        self.layers = nn.ModuleDict(layers)

    @property
    def has_change(self) -> bool:
        return "change" in self.layers

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, P, D) -> (N, T, H)."""
        return self.layers["single"](feats)

    def fuse_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(B, P, D) twice -> (B, P, D) through the Change Extraction module."""
        if not self.has_change:
            raise ValueError("this projector has no Change Extraction module (a plain VILA-1.5 "
                             "checkpoint?): image pairs need a UniRS checkpoint")
        return self.layers["change"](before, after)
