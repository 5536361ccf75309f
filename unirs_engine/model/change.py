"""Change Extraction module (CEM) of UniRS: two SigLIP feature maps -> one "image-like" feature map.

UniRS' `AttentiveEncoder` with `cc_n_layers=0` (Chg2Cap style): learned 2D position embedding,
per-location cosine similarity broadcast onto the concatenated maps, a 1x1 fusion conv and a
bottleneck residual block. Attribute names match the released state dict (`layers.change.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """Bottleneck residual block: 1x1 (D -> D/2), 3x3, 1x1 (D/2 -> D), each with BatchNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        mid = dim // 2
        self.left = nn.Sequential(
            nn.Conv2d(dim, mid, kernel_size=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, dim, kernel_size=1),
            nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.left(x) + x)


class ChangeExtraction(nn.Module):
    """Fuses before/after features (B, P, D) into one (B, P, D) map in the same feature space."""

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"ChangeExtraction needs an even feature size, got {dim}")
        self.dim, self.grid = dim, grid
        # Released names are swapped (h_embedding embeds columns); harmless since the grid is square.
        self.h_embedding = nn.Embedding(grid, dim // 2)
        self.w_embedding = nn.Embedding(grid, dim // 2)
        self.Conv1 = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.LN = ResBlock(dim)  # named LN in the release although it holds BatchNorms
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def position_embedding(self, device: torch.device) -> torch.Tensor:
        """pos[h, w] = cat(colEmb[w], rowEmb[h]) flattened row-major: (P, D)."""
        idx = torch.arange(self.grid, device=device)
        cols = self.h_embedding(idx)                                    # (g, D/2), indexed by w
        rows = self.w_embedding(idx)                                    # (g, D/2), indexed by h
        g = self.grid
        pos = torch.cat([cols.unsqueeze(0).expand(g, g, -1),            # [h, w] -> cols[w]
                         rows.unsqueeze(1).expand(g, g, -1)], dim=-1)   # [h, w] -> rows[h]; (g, g, D)
        return pos.reshape(g * g, self.dim)                             # (P, D)

    def _to_maps(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add positions and reshape both inputs (B, P, D) -> (B, D, g, g)."""
        if x1.shape != x2.shape or x1.shape[1:] != (self.grid * self.grid, self.dim):
            raise ValueError(f"ChangeExtraction expects two (B, {self.grid ** 2}, {self.dim}) inputs, "
                             f"got {tuple(x1.shape)} and {tuple(x2.shape)}")
        pos = self.position_embedding(x1.device).to(x1.dtype)          # (P, D)
        b, g = x1.shape[0], self.grid
        maps = [(x + pos).reshape(b, g, g, self.dim).permute(0, 3, 1, 2) for x in (x1, x2)]
        return maps[0], maps[1]                                         # (B, D, g, g) each

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        a, b = self._to_maps(x1, x2)                                    # (B, D, g, g)
        cos = F.cosine_similarity(a, b, dim=1, eps=1e-8)                # (B, g, g)
        x = torch.cat([a, b], dim=1) + cos.unsqueeze(1)                 # (B, 2D, g, g)
        x = self.LN(self.Conv1(x))                                      # (B, D, g, g)
        return x.flatten(2).transpose(1, 2)                             # (B, P, D)

    def change_score(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Cheap per-pair score, (B,): 1 - mean per-location cosine similarity (0 = identical)."""
        a, b = self._to_maps(x1, x2)
        return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8).flatten(1).mean(dim=1)
