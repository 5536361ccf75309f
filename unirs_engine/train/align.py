"""Demo stage 0: a small VLM from scratch (no pretrained SigLIP/LLaMA exists on this machine).

A sentencepiece tokenizer is trained on the training texts, a random model is built by
model.factory, and vision tower + single-image projector + LLM are trained together on images and
video frames, without task tags (this model plays VILA-1.5's part: the base VLM that writes the
clues). The Change Extraction module stays untouched here; `unirs train cem` trains it next.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import prompts
from ..model.checkpoint import default_image_processor
from ..model.factory import ModelSpec, build_model
from ..model.tokenizer import TOKENIZER_FILE, load_tokenizer, train_sentencepiece
from ..model.vision import VisionTower
from . import loop
from .config import AlignConfig, ConfigError, DatasetSpec
from .data import read_spec
from .instruct import train_vlm

TOKENIZER_DIR = "tokenizer"


def training_texts(specs: Sequence[DatasetSpec]) -> Iterator[str]:
    """Every text the model will read or write: the fixed prompt parts and the datasets' texts."""
    yield from (prompts.SYSTEM, prompts.CHANGE_INSTRUCTION, prompts.CHANGE_DESCRIBE_INSTRUCTION,
                prompts.SHORT_ANSWER_SUFFIX, prompts.classify_instruction(), *prompts.TASK_TAGS.values(),
                *prompts.CLUE_PROMPTS.values(), *prompts.ERA_CLASSES,
                f"{prompts.USER}: {prompts.ASSISTANT}: Clue:")
    for spec in specs:
        for sample in read_spec(spec):
            yield sample.instruction
            yield from sample.references


def model_spec(config: AlignConfig) -> ModelSpec:
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(config.model_spec) - known)
    if unknown:
        raise ConfigError(f"model_spec: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return ModelSpec(**config.model_spec)


def ensure_tokenizer(config: AlignConfig, accelerator, out: Path) -> Path:
    """out/tokenizer/tokenizer.model, trained once (a resumed run must reuse the same vocabulary)."""
    folder = out / TOKENIZER_DIR
    if accelerator.is_main_process and not (folder / TOKENIZER_FILE).is_file():
        tmp = out / f".{TOKENIZER_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        train_sentencepiece(training_texts([*config.data, *config.tokenizer_data]), tmp, config.vocab_size)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    accelerator.wait_for_everyone()
    return folder


def freeze_unused_tower_layers(tower: VisionTower) -> None:
    """Features come from hidden_states[select_layer]: the layers after it and the post-layernorm
    get no gradient, which DDP would take for an error."""
    layers = list(tower.model.encoder.layers)
    for module in [*layers[len(layers) + tower.select_layer + 1:], tower.model.post_layernorm]:
        module.requires_grad_(False)


def train_align(config: AlignConfig, resume: str | Path | None = None) -> Path:
    """Run the stage; returns the new base checkpoint folder (out/checkpoint)."""
    spec = model_spec(config)
    accelerator = loop.make_accelerator(config)
    out = loop.prepare_out(config, accelerator)
    tokenizer = load_tokenizer(ensure_tokenizer(config, accelerator, out))
    model = build_model(spec, tokenizer)                       # seeded by make_accelerator
    freeze_unused_tower_layers(model.vision_tower)
    if model.mm_projector.has_change:  # trained by the cem stage
        model.mm_projector.layers["change"].requires_grad_(False)
    return train_vlm(config, accelerator, model, tokenizer, default_image_processor(spec.image_size),
                     train_vision=True, task_tag=False, resume=resume)
