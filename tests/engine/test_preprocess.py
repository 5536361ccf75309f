"""ImagePreprocessor: VILA's pad-to-square with the mean colour, then the SigLIP processor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SiglipImageProcessorPil

from unirs_engine.inputs.preprocess import ImagePreprocessor, pad_to_square
from unirs_engine.testing.rasters import pattern
from unirs_engine.types import Chip


def write_checkpoint(root, aspect_ratio: str | None = "pad", size: int = 56):
    """The two files ImagePreprocessor reads from a checkpoint directory."""
    SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                            resample=3).save_pretrained(root / "vision_tower")
    config = {"architectures": ["LlavaLlamaModel"], "num_video_frames": 8}
    if aspect_ratio is not None:
        config["image_aspect_ratio"] = aspect_ratio
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_pad_geometry_centres_the_image_between_mean_colour_bars():
    image = np.full((40, 80, 3), 10, np.uint8)                      # H=40, W=80
    square = pad_to_square(image, (127, 127, 127))
    assert square.shape == (80, 80, 3)
    assert (square[:20] == 127).all() and (square[60:] == 127).all()
    assert (square[20:60] == 10).all()
    tall = pad_to_square(np.zeros((7, 4, 3), np.uint8), (1, 2, 3))   # odd margin: VILA puts the extra on the right
    assert (tall[:, :1] == (1, 2, 3)).all() and (tall[:, 1:5] == 0).all() and (tall[:, 5:] == (1, 2, 3)).all()


def test_pad_mode_equals_the_processor_on_the_padded_image(tmp_path):
    pre = ImagePreprocessor.from_checkpoint(write_checkpoint(tmp_path, "pad"))
    assert pre.aspect_ratio == "pad" and pre.pad_rgb == (127, 127, 127) and pre.size == 56
    image = np.moveaxis(pattern(40, 80), 0, -1)
    padded = np.full((80, 80, 3), 127, np.uint8)
    padded[20:60] = image
    reference = SiglipImageProcessorPil.from_pretrained(tmp_path / "vision_tower")(
        images=[Image.fromarray(padded)], return_tensors="pt")["pixel_values"]
    out = pre([Chip(image), Chip(np.moveaxis(pattern(56, 56, seed=1), 0, -1))])
    assert out.shape == (2, 3, 56, 56) and out.dtype == torch.float32
    torch.testing.assert_close(out[:1], reference, rtol=0, atol=0)
    # the bars map to the normalised mean colour, (127/255 - 0.5) / 0.5
    assert torch.allclose(out[0, :, :10], torch.tensor(127 / 255 * 2 - 1), atol=1e-6)


def test_resize_mode_and_unset_aspect_ratio_do_not_pad(tmp_path):
    image = np.moveaxis(pattern(40, 80), 0, -1)
    reference = SiglipImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3)(images=[Image.fromarray(image)],
                                                             return_tensors="pt")["pixel_values"]
    for aspect, folder in (("resize", "a"), (None, "b")):
        (tmp_path / folder).mkdir()
        pre = ImagePreprocessor.from_checkpoint(write_checkpoint(tmp_path / folder, aspect))
        assert pre.aspect_ratio == "resize"
        torch.testing.assert_close(pre([Chip(image)]), reference, rtol=0, atol=0)


def test_mean_and_std_are_applied(tmp_path):
    pre = ImagePreprocessor.from_checkpoint(write_checkpoint(tmp_path))
    out = pre([Chip(np.full((30, 50, 3), 127, np.uint8)),
               Chip(np.zeros((56, 56, 3), np.uint8)), Chip(np.full((56, 56, 3), 255, np.uint8))])
    assert out[0].abs().max() < 0.01                                # mid grey -> ~0
    assert torch.allclose(out[1], torch.tensor(-1.0)) and torch.allclose(out[2], torch.tensor(1.0))


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(ValueError, match="config.json: cannot read the checkpoint config"):
        ImagePreprocessor.from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="preprocessor_config.json: missing"):
        ImagePreprocessor.from_checkpoint(tmp_path)
    write_checkpoint(tmp_path, "anyres")
    with pytest.raises(ValueError, match="image_aspect_ratio must be one of"):
        ImagePreprocessor.from_checkpoint(tmp_path)
    pre = ImagePreprocessor.from_checkpoint(write_checkpoint(tmp_path, "pad"))
    with pytest.raises(ValueError, match="no images"):
        pre([])
