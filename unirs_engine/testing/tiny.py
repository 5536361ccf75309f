"""Tiny random checkpoints in the true VILA-1.5 layout, for tests (a few seconds on a CPU).

The model answers gibberish; it exists to exercise loading, routing, splicing and generation.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import prompts
from ..model.checkpoint import save_checkpoint
from ..model.factory import ModelSpec, build_model
from ..model.tokenizer import load_tokenizer, train_sentencepiece
from ..types import InputKind

# 70 px / 14 = a 5x5 grid: odd, so the projector's zero padding (5 -> 6) is exercised.
TINY_SPEC = ModelSpec(image_size=70, patch_size=14, vision_hidden=32, vision_layers=2, vision_heads=2,
                      vision_intermediate=64, llm_hidden=64, llm_layers=2, llm_heads=4,
                      llm_intermediate=128)
TINY_VOCAB = 400

_OBJECTS = ["building", "house", "road", "tree", "river", "lake", "field", "parking lot", "bridge",
            "farmland", "forest", "residential area", "playground", "swimming pool", "ship"]
_COLOURS = ["green", "grey", "blue", "brown", "white", "dark", "red"]
_PLACES = ["top", "bottom", "left", "right", "center", "corner", "edge"]


def tiny_corpus(seed: int = 0, n: int = 300) -> list[str]:
    """Prompt texts, ERA classes and programmatically generated RS captions/questions/answers."""
    rng = random.Random(seed)
    lines = [prompts.SYSTEM, prompts.CHANGE_INSTRUCTION, prompts.CHANGE_DESCRIBE_INSTRUCTION,
             prompts.SHORT_ANSWER_SUFFIX, prompts.classify_instruction(),
             *prompts.TASK_TAGS.values(), *prompts.CLUE_PROMPTS.values(), *prompts.ERA_CLASSES,
             prompts.conversation(prompts.user_message(InputKind.IMAGE, "What is this?", 1), "A lake.")]
    for _ in range(n):
        obj, other = rng.sample(_OBJECTS, 2)
        count, colour, place = rng.randint(0, 12), rng.choice(_COLOURS), rng.choice(_PLACES)
        lines += [
            f"There are {count} {obj}s near the {colour} {other} at the {place}.",
            f"Is there a {obj} in the image? {rng.choice(['Yes', 'No'])}",
            f"How many {obj}s are there? {count}",
            f"Many {obj}s have been built on the {other} at the {place}.",
            f"The scene is the same as before. The {obj} is unchanged.",
            f"This is a video about {rng.choice(prompts.ERA_CLASSES)}.",
        ]
    return lines


def build_tiny_checkpoint(path: str | Path, *, seed: int = 0, with_change: bool = True) -> Path:
    """Train a ~400-piece tokenizer, build a random tiny UniRS model, save it at `path`."""
    with tempfile.TemporaryDirectory() as tmp:
        train_sentencepiece(tiny_corpus(seed), tmp, TINY_VOCAB)
        tokenizer = load_tokenizer(tmp)
        spec = ModelSpec(**{**TINY_SPEC.__dict__, "with_change": with_change})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(spec, tokenizer)
        return save_checkpoint(model.eval(), path, tokenizer)


def build_tiny_vila_checkpoint(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny plain VILA-1.5 checkpoint: no change module, projector keys `layers.{1,2,4}.*`."""
    path = build_tiny_checkpoint(path, seed=seed, with_change=False)
    weights = path / "mm_projector" / "model.safetensors"
    state = {k.replace("layers.single.", "layers."): v for k, v in load_file(str(weights)).items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    return path
