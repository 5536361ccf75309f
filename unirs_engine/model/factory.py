"""Build a randomly initialised UniRS model of any size (tests, the demo model's training)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig

from .projector import MultimodalProjector
from .unirs import UniRSModel
from .vision import VisionTower

MAX_LENGTH = 4096
PROJECTOR_CFG = {"architectures": ["MultimodalProjector"], "mm_projector_type": "mlp_downsample",
                 "model_type": "v2l_projector"}


@dataclass
class ModelSpec:
    """The dimensions of a UniRS model; defaults are a small CPU-sized one."""

    image_size: int = 56
    patch_size: int = 14
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 64
    llm_hidden: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    llm_intermediate: int = 128
    vocab_size: int | None = None     # None: the tokenizer's size
    with_change: bool = True
    num_video_frames: int = 8
    image_aspect_ratio: str = "pad"

    @classmethod
    def full_size(cls) -> "ModelSpec":
        """VILA-1.5-3B dimensions: SigLIP-so400m/14 at 384 px + Sheared-LLaMA-2.7B (reference only)."""
        return cls(image_size=384, patch_size=14, vision_hidden=1152, vision_layers=27,
                   vision_heads=16, vision_intermediate=4304, llm_hidden=2560, llm_layers=32,
                   llm_heads=20, llm_intermediate=6912, vocab_size=32000)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def vision_config(self) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            hidden_size=self.vision_hidden, intermediate_size=self.vision_intermediate,
            num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
            image_size=self.image_size, patch_size=self.patch_size, hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6, vision_use_head=False, architectures=["SiglipVisionModel"])

    def llm_config(self, vocab_size: int) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=self.llm_hidden,
            intermediate_size=self.llm_intermediate, num_hidden_layers=self.llm_layers,
            num_attention_heads=self.llm_heads, num_key_value_heads=self.llm_heads,
            max_position_embeddings=MAX_LENGTH, rope_theta=10000.0, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
            architectures=["LlamaForCausalLM"],
            tokenizer_padding_side="right", tokenizer_model_max_length=MAX_LENGTH)


def vila_config(llm_config: LlamaConfig, vision_config: SiglipVisionConfig, *, with_change: bool,
                num_video_frames: int = 8, image_aspect_ratio: str = "pad",
                model_dtype: str = "torch.float32") -> dict[str, Any]:
    """The top-level config.json of a VILA-1.5 checkpoint, plus UniRS' change-module keys."""
    config: dict[str, Any] = {
        "architectures": ["LlavaLlamaModel"],
        "model_type": "llava_llama",
        "llm_cfg": llm_config.to_dict(),
        "vision_tower_cfg": vision_config.to_dict(),
        "mm_projector_cfg": dict(PROJECTOR_CFG),
        "hidden_size": llm_config.hidden_size,
        "mm_hidden_size": vision_config.hidden_size,
        "image_aspect_ratio": image_aspect_ratio,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        "num_video_frames": num_video_frames,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "vision_resolution": -1,
        "interpolate_mode": "linear",
        "s2": False,
        "model_dtype": model_dtype,
    }
    if with_change:
        config.update(chg=True, chg_type="Chg2Cap", cc_n_layers=0)
    return config


def build_model(spec: ModelSpec, tokenizer) -> UniRSModel:
    """A randomly initialised UniRS model (float32, CPU) sized by `spec`, vocabulary from `tokenizer`."""
    vocab = spec.vocab_size or len(tokenizer)
    if len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the spec's vocab_size is {vocab}")
    vision_cfg, llm_cfg = spec.vision_config(), spec.llm_config(vocab)
    llm_cfg.bos_token_id, llm_cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    llm_cfg.pad_token_id = tokenizer.unk_token_id  # VILA: pad = unk
    tower = VisionTower.from_config(vision_cfg)
    projector = MultimodalProjector(spec.vision_hidden, spec.llm_hidden,
                                    change_grid=spec.grid if spec.with_change else None)
    llm = LlamaForCausalLM(llm_cfg)
    config = vila_config(llm_cfg, vision_cfg, with_change=spec.with_change,
                         num_video_frames=spec.num_video_frames,
                         image_aspect_ratio=spec.image_aspect_ratio)
    return UniRSModel(tower, projector, llm, config)
