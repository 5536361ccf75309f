"""Demo stage "vision": the small vision tower and projector learn to see before the LLM exists.

Trained from random init together with the LLM (the align stage alone), the tower learned features
that separate scenes but the projector collapsed to near-constant "soft prompt" tokens: the LLM
fitted the answer priors and ignored the image. Here tower + projector are trained first with a
throw-away question-conditioned answer classifier on the same images and videos (VQA as
classification, one answer class per distinct training answer), so every projected token has to
carry what the questions ask about. Image pairs (LEVIR-CC format) go through the Change
Extraction module and the same projector and are asked whether anything changed (yes/no from
`changeflag`) and which words their captions use (multi-label), so the tower also learns to keep
what changes between two dates. The align stage then starts from these weights (`vision_init`)
and keeps them frozen; the cem stage goes on training this CEM. Part of the demo recipe
(`VISION=0 scripts/train_demo.sh` leaves it out; results of both in docs/training.md).

Writes out/checkpoint/{vision.safetensors, vision.json}: the tower's `vision_tower.*`, the
projector's `mm_projector.layers.single.*` and, with pairs, the CEM's `mm_projector.layers.change.*`
weights (the keys of UniRSModel's state dict), and the model spec, vocabularies and held-out
accuracy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections import Counter
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
from ..model.projector import MultimodalProjector
from ..model.unirs import UniRSModel
from ..model.vision import VisionTower
from ..types import InputKind, Sample
from . import loop
from .config import ConfigError, VisionConfig, save_config
from .data import SampleError, SkippingDataset, collate, read_chips, read_spec, sample_source

WEIGHTS_FILE = "vision.safetensors"
INFO_FILE = "vision.json"
CHECKPOINT_DIR = "checkpoint"
TOWER_PREFIX, PROJECTOR_PREFIX = "vision_tower.", "mm_projector."
SINGLE_PREFIX = PROJECTOR_PREFIX + "layers.single."  # always there; layers.change.* with pairs


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


# The two questions every image pair is asked (pairs come with captions, not questions).
CHANGED_QUESTION = "has anything changed between the two dates"
DESCRIBE_QUESTION = "which words describe the change"


def changed_answer(pair: Sample) -> str:
    """The answer to CHANGED_QUESTION for a pair: "yes"/"no" from its changeflag."""
    return "yes" if pair.meta.get("changeflag") else "no"


class QuestionedImages(SkippingDataset):
    """One item per picture (an image, a video's frames, or a before/after pair) with all its
    questions: {pixel_values (N,3,S,S), pair: bool, questions [[word ids]], answers [class ids],
    describe [bool per question], caption_words multi-hot (W,) (zeros but for pairs)}.

    Grouping the questions of one image costs one tower pass for all of them."""

    def __init__(self, samples: Sequence[Sample], preprocessor: ImagePreprocessor, vocab: dict[str, int],
                 answers: dict[str, int], caption_vocab: dict[str, int], num_frames: int,
                 augment: bool) -> None:
        super().__init__()
        groups: dict[str, list[Sample]] = {}
        for sample in samples:
            groups.setdefault(sample_source(sample), []).append(sample)
        self.groups = list(groups.values())
        self.preprocessor, self.vocab, self.answers = preprocessor, vocab, answers
        self.caption_vocab, self.num_frames, self.augment = caption_vocab, num_frames, augment

    def __len__(self) -> int:
        return len(self.groups)

    def question(self, text: str) -> list[int]:
        unknown = len(self.vocab)  # one id for words never seen in training
        return [self.vocab.get(w, unknown) for w in words(text)] or [unknown]

    def load(self, index: int) -> dict[str, Any]:
        group = self.groups[index]
        try:
            pixels = self.preprocessor(read_chips(group[0], self.num_frames))          # (N, 3, S, S)
        except (ValueError, OSError) as exc:
            raise SampleError(f"sample {group[0].sample_id!r} ({sample_source(group[0])}): {exc}") from exc
        caption_words = torch.zeros(len(self.caption_vocab))                          # (W,)
        if group[0].kind is InputKind.PAIR:
            # Not augmented: captions name where the change is ("in the top left corner").
            pair = group[0]
            for word in {w for caption in pair.references for w in words(caption)}:
                if word in self.caption_vocab:
                    caption_words[self.caption_vocab[word]] = 1.0
            return {"pixel_values": pixels, "pair": True,
                    "questions": [self.question(CHANGED_QUESTION), self.question(DESCRIBE_QUESTION)],
                    "answers": [self.answers[changed_answer(pair)], -100], "describe": [False, True],
                    "caption_words": caption_words}
        # The answers (presence, counts, events) do not change under these. Torch's own RNG: in a
        # loader worker it is reseeded every epoch from the loader's seeded generator.
        if self.augment:
            pixels = torch.rot90(pixels, int(torch.randint(4, (1,))), dims=(2, 3))
            if torch.rand(1) < 0.5:
                pixels = pixels.flip(3)
        return {"pixel_values": pixels, "pair": False,
                "questions": [self.question(s.instruction) for s in group],
                "answers": [self.answers.get(s.references[0].strip().lower(), -100) for s in group],
                "describe": [False] * len(group), "caption_words": caption_words}


class AnswerClassifier(nn.Module):
    """Throw-away head: a bag-of-words question attends over the projected visual tokens of its
    picture; [attended, question] -> MLP -> answer class, and -> linear -> caption-word logits."""

    def __init__(self, hidden: int, n_words: int, n_answers: int, n_caption_words: int,
                 heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(n_words + 1, hidden, mode="mean")   # +1: unknown word
        self.attend = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.classify = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, n_answers))
        self.describe = nn.Linear(2 * hidden, n_caption_words)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor,
                questions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (Q, L, H) with padding mask (Q, L) True = padding; Q questions ->
        answer logits (Q, n_answers), caption-word logits (Q, n_caption_words)."""
        flat = torch.tensor([w for q in questions for w in q], device=tokens.device)
        offsets = torch.tensor([0, *itertools.accumulate(len(q) for q in questions)][:-1], device=tokens.device)
        query = self.embed(flat, offsets)                                     # (Q, H)
        keys = self.norm(tokens)
        attended, _ = self.attend(query[:, None], keys, keys, key_padding_mask=mask)  # (Q, 1, H)
        joint = torch.cat([attended[:, 0], query], dim=-1)                    # (Q, 2H)
        return self.classify(joint), self.describe(joint)


class VisionPretrainer(nn.Module):
    """Tower -> (CEM for pairs) -> projector -> classifier; one forward per micro-batch (what DDP
    needs to see)."""

    def __init__(self, tower: VisionTower, projector: MultimodalProjector, head: AnswerClassifier) -> None:
        super().__init__()
        self.vision_tower, self.projector, self.head = tower, projector, head

    def visual_tokens(self, batch: dict[str, list]) -> list[torch.Tensor]:
        """Each item's projected tokens: (N, T, H) for an image or video, (1, T, H) for a pair."""
        counts = [p.shape[0] for p in batch["pixel_values"]]
        maps = list(self.vision_tower(torch.cat(batch["pixel_values"])).split(counts))  # (N, P, D) each
        pairs = [i for i, is_pair in enumerate(batch["pair"]) if is_pair]
        if pairs:
            fused = self.projector.fuse_pair(torch.stack([maps[i][0] for i in pairs]),
                                             torch.stack([maps[i][1] for i in pairs]))  # (n_pairs, P, D)
            for j, i in enumerate(pairs):
                maps[i] = fused[j:j + 1]                                                # (1, P, D)
        tokens = self.projector.project(torch.cat(maps))                                 # (sum N', T, H)
        return list(tokens.split([m.shape[0] for m in maps]))

    def logits(self, batch: dict[str, list]) -> dict[str, torch.Tensor]:
        """Answer logits (Q, C) with labels (Q,); caption-word logits and targets (Qd, W) for the
        Qd describe questions."""
        per_item = [t.flatten(0, 1) for t in self.visual_tokens(batch)]                 # (N*T, H) each
        device = per_item[0].device
        longest = max(t.shape[0] for t in per_item)
        padded = torch.stack([nn.functional.pad(t, (0, 0, 0, longest - t.shape[0])) for t in per_item])
        mask = torch.stack([torch.arange(longest, device=device) >= t.shape[0] for t in per_item])
        # each question sees its own item's tokens
        owner = torch.tensor([i for i, qs in enumerate(batch["questions"]) for _ in qs], device=device)
        questions = [q for qs in batch["questions"] for q in qs]
        answer_logits, word_logits = self.head(padded[owner], mask[owner], questions)  # (Q, C), (Q, W)
        describe = torch.tensor([d for ds in batch["describe"] for d in ds], device=device)
        return {"answers": answer_logits,
                "labels": torch.tensor([a for ans in batch["answers"] for a in ans], device=device),
                "words": word_logits[describe],                                          # (Qd, W)
                "word_targets": torch.stack(batch["caption_words"]).to(device)[owner[describe]]}

    def forward(self, batch: dict[str, list]) -> torch.Tensor:
        out = self.logits(batch)
        loss = nn.functional.cross_entropy(out["answers"], out["labels"], ignore_index=-100)
        if out["words"].numel():  # describe questions asked, and caption words to find
            loss = loss + nn.functional.binary_cross_entropy_with_logits(out["words"], out["word_targets"])
        return loss


def vocabularies(samples: Sequence[Sample], min_caption_word_count: int
                 ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Question words, answer classes and caption words (seen >= min_caption_word_count times) of
    the training samples, in first-seen order."""
    vocab: dict[str, int] = {}
    answers: dict[str, int] = {}
    caption_counts: Counter[str] = Counter()
    for sample in samples:
        if sample.kind is InputKind.PAIR:
            texts, answer = [CHANGED_QUESTION, DESCRIBE_QUESTION], changed_answer(sample)
            caption_counts.update(w for caption in sample.references for w in words(caption))
        else:
            texts, answer = [sample.instruction], sample.references[0] if sample.references else None
        for word in (w for text in texts for w in words(text)):
            vocab.setdefault(word, len(vocab))
        if answer:
            answers.setdefault(answer.strip().lower(), len(answers))
    frequent = (w for w, n in caption_counts.items() if n >= min_caption_word_count)
    caption_vocab = {w: i for i, w in enumerate(frequent)}
    return vocab, answers, caption_vocab


@torch.no_grad()
def accuracy(model: VisionPretrainer, dataset: QuestionedImages, batch_size: int) -> dict[str, float]:
    """Held-out answer accuracy, pictures' and pairs' questions apart (pairs: changed yes/no)."""
    model.eval()
    right = {"pictures": 0, "pairs": 0}
    total = {"pictures": 0, "pairs": 0}
    for start in tqdm(range(0, len(dataset), batch_size), desc="held-out", unit="batch", leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out = model.logits(batch)
        hits = (out["answers"].argmax(-1) == out["labels"]).tolist()
        # an answer never seen in training (label -100) counts as wrong; describe questions have none
        asked = [("pairs" if is_pair else "pictures", d)
                 for is_pair, ds in zip(batch["pair"], batch["describe"]) for d in ds]
        for hit, (kind, describe) in zip(hits, asked):
            if not describe:
                right[kind] += hit
                total[kind] += 1
    model.train()
    return {kind: right[kind] / total[kind] for kind in total if total[kind]}


def train_vision(config: VisionConfig, resume: str | Path | None = None) -> Path:
    """Run the stage; returns out/checkpoint (vision.safetensors + vision.json)."""
    spec = model_spec(config.model_spec)
    train_samples = [s for d in config.data for s in read_spec(d)]
    has_pairs = any(s.kind is InputKind.PAIR for s in train_samples)
    if has_pairs and not spec.with_change:
        raise ConfigError("data: image pairs need model_spec.with_change = true (the CEM fuses them)")
    # a batch without pairs leaves the CEM and the caption-word head without gradient
    accelerator = loop.make_accelerator(config, find_unused_parameters=has_pairs)
    out = loop.prepare_out(config, accelerator)
    preprocessor = ImagePreprocessor(default_image_processor(spec.image_size), spec.image_aspect_ratio)
    vocab, answers, caption_vocab = vocabularies(train_samples, config.min_caption_word_count)
    if not answers:
        raise ConfigError("data: no training sample has an answer")
    tower = VisionTower.from_config(spec.vision_config())
    freeze_unused_tower_layers(tower)
    projector = MultimodalProjector(spec.vision_hidden, spec.llm_hidden,
                                    change_grid=spec.grid if has_pairs else None)
    model = VisionPretrainer(tower, projector, AnswerClassifier(spec.llm_hidden, len(vocab), len(answers),
                                                                len(caption_vocab)))
    dataset = QuestionedImages(train_samples, preprocessor, vocab, answers, caption_vocab, config.num_frames,
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
                held_out, preprocessor, vocab, answers, caption_vocab, config.num_frames, augment=False),
                config.batch_size)
        final.mkdir(parents=True, exist_ok=True)
        state = {**{TOWER_PREFIX + k: v for k, v in trained.vision_tower.state_dict().items()},
                 **{PROJECTOR_PREFIX + k: v for k, v in trained.projector.state_dict().items()}}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(final / WEIGHTS_FILE))
        (final / INFO_FILE).write_text(json.dumps(
            {"model_spec": config.model_spec, "accuracy": scores, "answers": list(answers),
             "question_words": len(vocab), "caption_words": list(caption_vocab)}, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return final


def load_vision_init(model: UniRSModel, folder: str | Path, model_spec: dict[str, Any]) -> None:
    """Copy a vision-stage checkpoint's tower, projector and (trained on pairs) CEM weights into
    `model` (same spec)."""
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
    expected = [k for k in model.state_dict() if k.startswith((TOWER_PREFIX, SINGLE_PREFIX))]
    not_loaded = sorted(set(expected) & set(missing))
    if not_loaded or unexpected:
        raise ConfigError(f"vision_init: {weights_file} does not fit the model "
                          f"(missing {not_loaded[:3]}, unexpected {unexpected[:3]})")
