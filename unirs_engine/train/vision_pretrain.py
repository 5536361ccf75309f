"""Demo stage "vision": the small vision tower and projector learn to see before the LLM exists.

Trained from random init together with the LLM (the align stage alone), the tower learned features
that separate scenes but the projector collapsed to near-constant "soft prompt" tokens: the LLM
fitted the answer priors and ignored the image. Here tower + projector are trained first with a
throw-away question-conditioned answer classifier on the same images and videos (VQA as
classification, one answer class per distinct training answer), so every projected token has to
carry what the questions ask about. The align stage then starts from these weights
(`vision_init`) and keeps them frozen. Optional (`VISION=1 scripts/train_demo.sh`): measured, it
lifts VQA and event classification but lowers the change captions (docs/training.md).

Writes out/checkpoint/{vision.safetensors, vision.json}: the tower's `vision_tower.*` and the
projector's `mm_projector.layers.single.*` weights (the keys of UniRSModel's state dict), and the
model spec, vocabularies and held-out accuracy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..inputs.preprocess import ImagePreprocessor
from ..model.checkpoint import default_image_processor
from ..model.factory import ModelSpec
from ..model.projector import mlp_downsample
from ..model.unirs import UniRSModel
from ..model.vision import VisionTower
from ..types import Sample
from . import loop
from .config import ConfigError, VisionConfig, save_config
from .data import SampleError, SkippingDataset, collate, read_chips, read_spec, sample_source

WEIGHTS_FILE = "vision.safetensors"
INFO_FILE = "vision.json"
CHECKPOINT_DIR = "checkpoint"
TOWER_PREFIX, PROJECTOR_PREFIX = "vision_tower.", "mm_projector.layers.single."


def model_spec(raw: dict[str, Any]) -> ModelSpec:
    """A config's `model_spec` object as factory.ModelSpec; unknown keys are config errors."""
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"model_spec: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return ModelSpec(**raw)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def freeze_unused_tower_layers(tower: VisionTower) -> None:
    """Features come from hidden_states[select_layer]: the layers after it and the post-layernorm
    get no gradient, which DDP would take for an error."""
    layers = list(tower.model.encoder.layers)
    for module in [*layers[len(layers) + tower.select_layer + 1:], tower.model.post_layernorm]:
        module.requires_grad_(False)


class QuestionedImages(SkippingDataset):
    """One item per picture (an image or a video's frames) with all its questions:
    {pixel_values (N,3,S,S), questions [[word ids]], answers [class ids]}.

    Grouping the questions of one image costs one tower pass for all of them."""

    def __init__(self, samples: Sequence[Sample], preprocessor: ImagePreprocessor, vocab: dict[str, int],
                 answers: dict[str, int], num_frames: int, augment: bool) -> None:
        super().__init__()
        groups: dict[str, list[Sample]] = {}
        for sample in samples:
            groups.setdefault(sample_source(sample), []).append(sample)
        self.groups = list(groups.values())
        self.preprocessor, self.vocab, self.answers = preprocessor, vocab, answers
        self.num_frames, self.augment = num_frames, augment

    def __len__(self) -> int:
        return len(self.groups)

    def load(self, index: int) -> dict[str, Any]:
        group = self.groups[index]
        try:
            pixels = self.preprocessor(read_chips(group[0], self.num_frames))          # (N, 3, S, S)
        except (ValueError, OSError) as exc:
            raise SampleError(f"sample {group[0].sample_id!r} ({sample_source(group[0])}): {exc}") from exc
        # The answers (presence, counts, events) do not change under these. Torch's own RNG: in a
        # loader worker it is reseeded every epoch from the loader's seeded generator.
        if self.augment:
            pixels = torch.rot90(pixels, int(torch.randint(4, (1,))), dims=(2, 3))
            if torch.rand(1) < 0.5:
                pixels = pixels.flip(3)
        unknown = len(self.vocab)  # one id for words never seen in training
        return {"pixel_values": pixels,
                "questions": [[self.vocab.get(w, unknown) for w in words(s.instruction)] or [unknown]
                              for s in group],
                "answers": [self.answers.get(s.references[0].strip().lower(), -100) for s in group]}


class AnswerClassifier(nn.Module):
    """Throw-away head: a bag-of-words question attends over the projected visual tokens of its
    picture; [attended, question] -> MLP -> answer class."""

    def __init__(self, hidden: int, n_words: int, n_answers: int, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(n_words + 1, hidden, mode="mean")   # +1: unknown word
        self.attend = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.classify = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, n_answers))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, questions: list[list[int]]) -> torch.Tensor:
        """tokens (Q, L, H) with padding mask (Q, L) True = padding; Q questions -> (Q, n_answers)."""
        flat = torch.tensor([w for q in questions for w in q], device=tokens.device)
        offsets = torch.tensor([0, *itertools.accumulate(len(q) for q in questions)][:-1], device=tokens.device)
        query = self.embed(flat, offsets)                                     # (Q, H)
        keys = self.norm(tokens)
        attended, _ = self.attend(query[:, None], keys, keys, key_padding_mask=mask)  # (Q, 1, H)
        return self.classify(torch.cat([attended[:, 0], query], dim=-1))      # (Q, n_answers)


class VisionPretrainer(nn.Module):
    """Tower -> projector -> classifier; one forward per micro-batch (what DDP needs to see)."""

    def __init__(self, tower: VisionTower, projector: nn.Module, head: AnswerClassifier) -> None:
        super().__init__()
        self.vision_tower, self.projector, self.head = tower, projector, head

    def logits(self, batch: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
        counts = [p.shape[0] for p in batch["pixel_values"]]
        tokens = self.projector(self.vision_tower(torch.cat(batch["pixel_values"])))  # (sum N, T, H)
        per_item = [t.flatten(0, 1) for t in tokens.split(counts)]                 # (N*T, H) each
        longest = max(t.shape[0] for t in per_item)
        padded = torch.stack([nn.functional.pad(t, (0, 0, 0, longest - t.shape[0])) for t in per_item])
        mask = torch.stack([torch.arange(longest, device=tokens.device) >= t.shape[0] for t in per_item])
        # each question sees its own item's tokens
        owner = torch.tensor([i for i, qs in enumerate(batch["questions"]) for _ in qs], device=tokens.device)
        questions = [q for qs in batch["questions"] for q in qs]
        labels = torch.tensor([a for ans in batch["answers"] for a in ans], device=tokens.device)
        return self.head(padded[owner], mask[owner], questions), labels             # (Q, C), (Q,)

    def forward(self, batch: dict[str, list]) -> torch.Tensor:
        logits, labels = self.logits(batch)
        return nn.functional.cross_entropy(logits, labels, ignore_index=-100)


def vocabularies(samples: Sequence[Sample]) -> tuple[dict[str, int], dict[str, int]]:
    """Question words and answer classes of the training samples, in first-seen order."""
    vocab: dict[str, int] = {}
    answers: dict[str, int] = {}
    for sample in samples:
        for word in words(sample.instruction):
            vocab.setdefault(word, len(vocab))
        if sample.references:
            answers.setdefault(sample.references[0].strip().lower(), len(answers))
    return vocab, answers


@torch.no_grad()
def accuracy(model: VisionPretrainer, dataset: QuestionedImages, batch_size: int) -> float:
    model.eval()
    right = total = 0
    for start in tqdm(range(0, len(dataset), batch_size), desc="held-out", unit="batch", leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits, labels = model.logits(batch)
        right += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    model.train()
    return right / max(total, 1)


def train_vision(config: VisionConfig, resume: str | Path | None = None) -> Path:
    """Run the stage; returns out/checkpoint (vision.safetensors + vision.json)."""
    spec = model_spec(config.model_spec)
    accelerator = loop.make_accelerator(config)
    out = loop.prepare_out(config, accelerator)
    preprocessor = ImagePreprocessor(default_image_processor(spec.image_size), spec.image_aspect_ratio)
    train_samples = [s for d in config.data for s in read_spec(d)]
    vocab, answers = vocabularies(train_samples)
    if not answers:
        raise ConfigError("data: no training sample has an answer")
    tower = VisionTower.from_config(spec.vision_config())
    freeze_unused_tower_layers(tower)
    model = VisionPretrainer(tower, mlp_downsample(spec.vision_hidden, spec.llm_hidden),
                             AnswerClassifier(spec.llm_hidden, len(vocab), len(answers)))
    dataset = QuestionedImages(train_samples, preprocessor, vocab, answers, config.num_frames,
                               augment=config.augment)
    model, optimizer, scheduler, loader, params = loop.prepare_adamw_cosine(
        config, accelerator, model, loader=loop.make_loader(dataset, config, collate))
    if accelerator.is_main_process:
        save_config(config, out / "train_config.json")
    loop.run(config, accelerator, model, optimizer, scheduler, loader, model, params=params,
             resume=resume, desc="vision")
    accelerator.wait_for_everyone()
    final = out / CHECKPOINT_DIR
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        held_out = [s for d in config.data
                    for s in read_spec(dataclasses.replace(d, split=config.eval_split))]
        scores = {}
        if held_out:
            scores[config.eval_split] = accuracy(trained, QuestionedImages(
                held_out, preprocessor, vocab, answers, config.num_frames, augment=False),
                config.batch_size)
        final.mkdir(parents=True, exist_ok=True)
        state = {**{TOWER_PREFIX + k: v for k, v in trained.vision_tower.state_dict().items()},
                 **{PROJECTOR_PREFIX + k: v for k, v in trained.projector.state_dict().items()}}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(final / WEIGHTS_FILE))
        (final / INFO_FILE).write_text(json.dumps(
            {"model_spec": config.model_spec, "accuracy": scores, "answers": list(answers),
             "question_words": len(vocab)}, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return final


def load_vision_init(model: UniRSModel, folder: str | Path, model_spec: dict[str, Any]) -> None:
    """Copy a vision-stage checkpoint's tower and projector weights into `model` (same spec)."""
    folder = Path(folder)
    info_file, weights_file = folder / INFO_FILE, folder / WEIGHTS_FILE
    if not weights_file.is_file() or not info_file.is_file():
        raise ConfigError(f"vision_init: {folder} has no {WEIGHTS_FILE}/{INFO_FILE} "
                          f"(expected the checkpoint folder of `unirs train vision`)")
    trained_spec = json.loads(info_file.read_text())["model_spec"]
    differing = sorted(k for k in set(trained_spec) | set(model_spec)
                       if k not in ("with_change", "num_video_frames")
                       and trained_spec.get(k) != model_spec.get(k))
    if differing:
        raise ConfigError(f"vision_init: {folder} was trained with a different model_spec "
                          f"({', '.join(differing)})")
    missing, unexpected = model.load_state_dict(load_file(str(weights_file)), strict=False)
    expected = [k for k in model.state_dict() if k.startswith((TOWER_PREFIX, PROJECTOR_PREFIX))]
    not_loaded = sorted(set(expected) & set(missing))
    if not_loaded or unexpected:
        raise ConfigError(f"vision_init: {weights_file} does not fit the model "
                          f"(missing {not_loaded[:3]}, unexpected {unexpected[:3]})")
