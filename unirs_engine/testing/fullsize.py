"""Random checkpoints at VILA-1.5-3B's real shapes, bf16 and sharded on disk as the release ships them.

SigLIP so400m-patch14-384, the real mlp_downsample projector and Change Extraction module,
Sheared-LLaMA-2.7B (ModelSpec.full_size()); `quick_spec()` keeps every width and cuts the depth.
The tokenizer is testing/tiny.py's small sentencepiece model: the LLM keeps its 32000 rows, but
prompts are not cut into the pieces LLaMA's tokenizer would make.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from ..model.checkpoint import save_checkpoint
from ..model.factory import ModelSpec, build_model
from ..model.tokenizer import load_tokenizer, train_sentencepiece
from .tiny import TINY_VOCAB, tiny_corpus

FULL_SPEC = ModelSpec.full_size()
# VILA1.5-3b's llm/ holds model-0000{1,2}-of-00002.safetensors and model.safetensors.index.json.
LLM_SHARDS = 2
LLM_INDEX = "model.safetensors.index.json"


def quick_spec(layers: int = 2) -> ModelSpec:
    """The real widths, vocabulary and image size with `layers` vision and LLM layers."""
    return dataclasses.replace(FULL_SPEC, vision_layers=layers, llm_layers=layers)


def checkpoint_spec(path: str | Path) -> ModelSpec:
    """The spec a checkpoint folder holds, read back from its config.json."""
    config = json.loads((Path(path) / "config.json").read_text())
    vision, llm = config["vision_tower_cfg"], config["llm_cfg"]
    return ModelSpec(
        image_size=vision["image_size"], patch_size=vision["patch_size"],
        vision_hidden=vision["hidden_size"], vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"], vision_intermediate=vision["intermediate_size"],
        llm_hidden=llm["hidden_size"], llm_layers=llm["num_hidden_layers"],
        llm_heads=llm["num_attention_heads"], llm_intermediate=llm["intermediate_size"],
        vocab_size=llm["vocab_size"], with_change=bool(config.get("chg")),
        num_video_frames=config["num_video_frames"], image_aspect_ratio=config["image_aspect_ratio"])


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _shard_llm(llm, folder: Path) -> None:
    """Rewrite llm/'s single model.safetensors as LLM_SHARDS shards plus the index."""
    sizes = [t.numel() * t.element_size() for t in llm.state_dict().values()]
    # Shards fill greedily up to the limit: half the total plus the largest tensor makes exactly two.
    llm.save_pretrained(folder, max_shard_size=sum(sizes) // LLM_SHARDS + max(sizes))
    (folder / "model.safetensors").unlink()


def build_fullsize_checkpoint(path: str | Path, spec: ModelSpec = FULL_SPEC, *, seed: int = 0) -> Path:
    """Build a random model of `spec` directly in bfloat16 (no float32 copy is ever held: 11 GB for
    the 2.7B LLM) and save it at `path` in the release layout. Built aside, then renamed into place:
    a folder at `path` is always complete. `path` must not exist, or be an empty folder."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path}: not empty; a checkpoint is only built into a new folder")
    aside = path.with_name(f".{path.name}.build-{os.getpid()}")
    tmp = aside / path.name   # the folder name is the model id save_checkpoint writes
    shutil.rmtree(aside, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tok_dir:
        train_sentencepiece(tiny_corpus(seed), tok_dir, TINY_VOCAB)
        tokenizer = load_tokenizer(tok_dir)
        with torch.random.fork_rng(devices=[]), _default_dtype(torch.bfloat16):
            torch.manual_seed(seed)
            model = build_model(spec, tokenizer).eval()
        save_checkpoint(model, tmp, tokenizer)
    _shard_llm(model.llm, tmp / "llm")
    os.replace(tmp, path)
    aside.rmdir()
    return path
