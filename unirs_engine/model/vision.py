"""SigLIP vision tower: patch features from the second-to-last encoder layer (VILA `cls_patch`, -2)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel


class VisionTower(nn.Module):
    """Wraps `SiglipVisionModel`; returns all patch tokens of `hidden_states[select_layer]`."""

    def __init__(self, model: SiglipVisionModel, select_layer: int = -2) -> None:
        super().__init__()
        self.model = model
        self.select_layer = select_layer

    @classmethod
    def from_config(cls, config: SiglipVisionConfig, select_layer: int = -2) -> "VisionTower":
        config.vision_use_head = False  # the pooling head is never used: features come from hidden_states
        return cls(SiglipVisionModel(config), select_layer)

    @property
    def config(self) -> SiglipVisionConfig:
        return self.model.config

    @property
    def grid(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, P, D), P = grid^2 (SigLIP has no CLS token)."""
        dtype = self.model.get_input_embeddings().weight.dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        return out.hidden_states[self.select_layer]                     # (N, P, D)
