"""Chips -> SigLIP pixel tensors, exactly as VILA/UniRS prepared images in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import SiglipImageProcessorPil

from ..types import Chip

ASPECT_RATIOS = ("pad", "resize")


def pad_to_square(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3) -> (S, S, 3), S = max(H, W): the image centred on `colour` bars (VILA expand2square)."""
    height, width = image.shape[:2]
    side = max(height, width)
    out = np.empty((side, side, 3), np.uint8)
    out[...] = colour
    top, left = (side - height) // 2, (side - width) // 2
    out[top:top + height, left:left + width] = image
    return out


class ImagePreprocessor:
    """Pads (or not) and hands chips to the checkpoint's SigLIP processor (bicubic resize,
    rescale 1/255, normalise)."""

    def __init__(self, processor: SiglipImageProcessorPil, aspect_ratio: str) -> None:
        if aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {aspect_ratio!r}")
        self.processor = processor
        self.aspect_ratio = aspect_ratio
        # VILA pads with the processor mean as 0..255 colour: (127, 127, 127) for SigLIP.
        self.pad_rgb = tuple(int(m * 255) for m in processor.image_mean)

    @classmethod
    def for_config(cls, processor: SiglipImageProcessorPil, config: dict) -> "ImagePreprocessor":
        """With the aspect-ratio rule of a checkpoint's top-level config (VILA's unset means plain resize)."""
        return cls(processor, config.get("image_aspect_ratio") or "resize")

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path) -> "ImagePreprocessor":
        """From `ckpt_dir/config.json` (for_config) and `ckpt_dir/vision_tower/preprocessor_config.json`."""
        ckpt_dir = Path(ckpt_dir)
        config_path = ckpt_dir / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{config_path}: cannot read the checkpoint config ({exc})") from exc
        processor_dir = ckpt_dir / "vision_tower"
        if not (processor_dir / "preprocessor_config.json").is_file():
            raise ValueError(f"{processor_dir / 'preprocessor_config.json'}: missing (expected the SigLIP "
                             f"image processor config of the checkpoint)")
        return cls.for_config(SiglipImageProcessorPil.from_pretrained(processor_dir), config)

    @property
    def size(self) -> int:
        """Side of the square model input in pixels."""
        return int(self.processor.size["height"])

    def __call__(self, chips: list[Chip]) -> torch.Tensor:
        """(N, 3, S, S) float32 pixel values for N chips."""
        if not chips:
            raise ValueError("no images to preprocess")
        images = [c.image if self.aspect_ratio == "resize" else pad_to_square(c.image, self.pad_rgb)
                  for c in chips]
        batch = self.processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")
        return batch["pixel_values"]                                         # (N, 3, S, S)
