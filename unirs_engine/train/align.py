"""Demo stage 0: a small VLM from scratch (no pretrained SigLIP/LLaMA exists on this machine).

A sentencepiece tokenizer is trained on the training texts, a random model is built by
model.factory, its tower + projector (and CEM, when trained on pairs) optionally taken from
`unirs train vision` (`vision_init`, then frozen with `train_vision: false`), and trained with the
LLM loss on images and video frames, without task tags (this model plays VILA-1.5's part: the base
VLM that writes the clues). The Change Extraction module is not trained here (no pairs);
`unirs train cem` trains it next.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import prompts
from ..model.checkpoint import default_image_processor
from ..model.factory import build_model
from ..model.tokenizer import TOKENIZER_FILE, load_tokenizer, train_sentencepiece
from . import loop
from .config import AlignConfig, DatasetSpec
from .data import read_spec
from .instruct import train_vlm
from .vision_pretrain import freeze_unused_tower_layers, load_vision_init, model_spec

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


def train_align(config: AlignConfig, resume: str | Path | None = None) -> Path:
    """Run the stage; returns the new base checkpoint folder (out/checkpoint)."""
    spec = model_spec(config.model_spec)
    accelerator = loop.make_accelerator(config)
    out = loop.prepare_out(config, accelerator)
    tokenizer = load_tokenizer(ensure_tokenizer(config, accelerator, out))
    model = build_model(spec, tokenizer)                       # seeded by make_accelerator
    if config.vision_init:
        load_vision_init(model, config.vision_init, config.model_spec)
    freeze_unused_tower_layers(model.vision_tower)
    if not config.train_vision:
        model.freeze(vision=True, projector=True)
    elif model.mm_projector.has_change:  # trained by the cem stage
        model.mm_projector.layers["change"].requires_grad_(False)
    return train_vlm(config, accelerator, model, tokenizer, default_image_processor(spec.image_size),
                     train_vision=config.train_vision, task_tag=False, resume=resume)
