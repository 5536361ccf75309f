"""Demo stage "vision": the small vision tower and projector learn to see before the LLM exists.

Trained from random init together with the LLM (the align stage alone), the tower learned features
that separate scenes but the projector collapsed to near-constant "soft prompt" tokens: the LLM
fitted the answer priors and ignored the image. Here tower + projector are trained first with a
throw-away question-conditioned answer classifier on the same images and videos (VQA as
classification, one answer class per distinct training answer), so every projected token has to
carry what the questions ask about. Image pairs (LEVIR-CC format) go through the Change
Extraction module and the same projector and are asked whether anything changed (yes/no from
`changeflag`) and which words their captions use (multi-label), so the tower also learns to keep
what changes between two dates. With `dense_weight` > 0 a throw-away per-token land-cover head
is trained beside it on the synthetic benchmark's per-cell fractions of pictures and video frames
(data/synthetic/landcover.py): every projected token has to say what covers its part of the
picture, small objects included.
With `count_weight` > 0 a throw-away per-picture count head learns how many objects of each kind
the picture shows (data/synthetic/object_counts.py), what the RSVQA comparisons ask about.
The align stage then starts from these weights (`vision_init`) and keeps them frozen; the cem
stage goes on training this CEM. Part of the demo recipe (`VISION=0 scripts/train_demo.sh` leaves
it out; results of both in docs/training.md).

Writes out/checkpoint/{vision.safetensors, vision.json}: the tower's `vision_tower.*`, the
projector's `mm_projector.layers.single.*` and, with pairs, the CEM's `mm_projector.layers.change.*`
weights (the keys of UniRSModel's state dict), and the model spec, vocabularies and held-out
accuracy (and the land-cover head's per-class token AP, the count head's per-kind accuracy). The
loss's parts go to out/losses.jsonl.
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

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..data.synthetic.landcover import CLASSES as LANDCOVER_CLASSES
from ..data.synthetic.landcover import landcover_path, read_landcover, read_video_landcover
from ..data.synthetic.object_counts import COUNTED, MAX_COUNT, counts_path, read_counts
from ..inputs.preprocess import ImagePreprocessor
from ..inputs.video import frame_indexes
from ..model.checkpoint import default_image_processor
from ..model.factory import ModelSpec
from ..model.projector import MultimodalProjector
from ..model.unirs import UniRSModel
from ..model.vision import VisionTower
from ..types import InputKind, Sample
from . import loop
from .config import ConfigError, VisionConfig, save_config
from .data import (SampleError, SkippingDataset, collate, read_chips, read_spec, sample_label,
                   sample_source)

WEIGHTS_FILE = "vision.safetensors"
INFO_FILE = "vision.json"
LOSS_PARTS = ("classifier", "dense", "count")  # with a land-cover or count head: loop.LossParts logs them
DENSE_POSITIVE = 0.1           # held-out AP: a token "has" a class that covers >= 10 % of its area
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
    describe [bool per question], caption_words multi-hot (W,) (zeros but for pairs),
    landcover (N,C,G,G) fractions of each picture or frame, or None (not asked for, or none written),
    counts (N,K) object counts of each picture, or None (not asked for, a video, or none written)}.

    Grouping the questions of one image costs one tower pass for all of them."""

    def __init__(self, samples: Sequence[Sample], preprocessor: ImagePreprocessor, vocab: dict[str, int],
                 answers: dict[str, int], caption_vocab: dict[str, int], num_frames: int,
                 augment: bool, landcover: bool = False, counts: bool = False) -> None:
        super().__init__()
        groups: dict[str, list[Sample]] = {}
        for sample in samples:
            groups.setdefault(sample_source(sample), []).append(sample)
        self.groups = list(groups.values())
        self.preprocessor, self.vocab, self.answers = preprocessor, vocab, answers
        self.caption_vocab, self.num_frames, self.augment = caption_vocab, num_frames, augment
        self.landcover, self.counts = landcover, counts

    def __len__(self) -> int:
        return len(self.groups)

    def question(self, text: str) -> list[int]:
        unknown = len(self.vocab)  # one id for words never seen in training
        return [self.vocab.get(w, unknown) for w in words(text)] or [unknown]

    def landcover_of(self, sample: Sample) -> torch.Tensor | None:
        """(N, C, G, G) fractions of an image's or a pair's pictures, or of the frames of a video
        that read_chips reads; None when any is missing (a frame stack has none)."""
        if not self.landcover:
            return None
        if sample.kind is InputKind.SEQUENCE:
            frames = read_video_landcover(sample.video) if sample.video else None       # (F, C, G, G)
            if frames is None:
                return None
            return torch.from_numpy(frames[frame_indexes(len(frames), self.num_frames)])  # (N, C, G, G)
        covers = [read_landcover(path) for path in sample.images]
        if any(cover is None for cover in covers):
            return None
        return torch.from_numpy(np.stack(covers))                                     # (N, C, G, G)

    def counts_of(self, sample: Sample) -> torch.Tensor | None:
        """(N, K) object counts of an image's or a pair's pictures; None when any is missing."""
        if not self.counts or sample.kind is InputKind.SEQUENCE:
            return None
        counts = [read_counts(path) for path in sample.images]
        if any(c is None for c in counts):
            return None
        return torch.from_numpy(np.stack(counts)).clamp(max=MAX_COUNT)                # (N, K)

    def load(self, index: int) -> dict[str, Any]:
        group = self.groups[index]
        try:
            pixels = self.preprocessor(read_chips(group[0], self.num_frames))          # (N, 3, S, S)
            landcover = self.landcover_of(group[0])                                 # (N, C, G, G) or None
            counts = self.counts_of(group[0])                                       # (N, K) or None
        except (ValueError, OSError) as exc:
            raise SampleError(f"{sample_label(group[0])}: {exc}") from exc
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
                    "caption_words": caption_words, "landcover": landcover, "counts": counts}
        # The answers (presence, counts, events) do not change under these. Torch's own RNG: in a
        # loader worker it is reseeded every epoch from the loader's seeded generator.
        # The land-cover grid (rows, cols like the pixels) turns and flips with them; counts stay.
        if self.augment:
            turns = int(torch.randint(4, (1,)))
            pixels = torch.rot90(pixels, turns, dims=(2, 3))
            landcover = None if landcover is None else torch.rot90(landcover, turns, dims=(2, 3))
            if torch.rand(1) < 0.5:
                pixels = pixels.flip(3)
                landcover = None if landcover is None else landcover.flip(3)
        return {"pixel_values": pixels, "pair": False,
                "questions": [self.question(s.instruction) for s in group],
                "answers": [self.answers.get(s.references[0].strip().lower(), -100) for s in group],
                "describe": [False] * len(group), "caption_words": caption_words, "landcover": landcover,
                "counts": counts}


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


class LandCoverHead(nn.Module):
    """Throw-away dense head: each projected visual token -> one logit per land-cover class, trained
    (soft BCE) towards the fractions of the picture area the token covers."""

    def __init__(self, hidden: int, n_classes: int, patch_grid: int) -> None:
        super().__init__()
        self.classify = nn.Linear(hidden, n_classes)
        self.patch_grid = patch_grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(tokens)                                          # (M, T, H) -> (M, T, C)

    def targets(self, fractions: torch.Tensor) -> torch.Tensor:
        """(M, C, G, G) per-cell fractions -> (M, T, C) per token, in the projector's token order."""
        g = self.patch_grid
        x = nn.functional.adaptive_avg_pool2d(fractions, g)                   # (M, C, g, g): per patch
        x = nn.functional.pad(x, (0, g % 2, 0, g % 2))                        # (M, C, g', g'), as DownSampleBlock
        x = nn.functional.avg_pool2d(x, 2)                                    # (M, C, g'/2, g'/2): per 2x2 merge
        # DownSampleBlock's token t = col * g'/2 + row (column pairs major)
        return x.transpose(2, 3).flatten(2).transpose(1, 2)                   # (M, T, C)


class CountHead(nn.Module):
    """Throw-away per-picture head: its projected tokens -> per kind, logits over 0..MAX_COUNT
    objects. Each token is transformed on its own, then the picture's tokens are averaged (a fixed
    number of tokens: a scaled sum, which can count what the tokens hold)."""

    def __init__(self, hidden: int, n_kinds: int) -> None:
        super().__init__()
        self.per_token = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU())
        self.classify = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                      nn.Linear(hidden, n_kinds * (MAX_COUNT + 1)))
        self.n_kinds = n_kinds

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.per_token(tokens).mean(1)                               # (M, T, H) -> (M, H)
        return self.classify(pooled).unflatten(-1, (self.n_kinds, MAX_COUNT + 1))  # (M, K, MAX_COUNT+1)


class VisionPretrainer(nn.Module):
    """Tower -> (CEM for pairs) -> projector -> classifier (+ land-cover head, + count head); one
    forward per micro-batch (what DDP needs to see). `losses` holds the last forward's loss parts."""

    def __init__(self, tower: VisionTower, projector: MultimodalProjector, head: AnswerClassifier,
                 dense: LandCoverHead | None = None, dense_weight: float = 0.0,
                 counter: CountHead | None = None, count_weight: float = 0.0) -> None:
        super().__init__()
        self.vision_tower, self.projector, self.head = tower, projector, head
        self.dense, self.dense_weight = dense, dense_weight
        self.counter, self.count_weight = counter, count_weight
        self.losses: dict[str, torch.Tensor] = {}

    def visual_tokens(self, batch: dict[str, list]) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Each item's projected tokens: (N, T, H) for an image or video, (1, T, H) for a pair; and,
        with a land-cover or count head, those of its own pictures where it has their targets
        ((N, T, H); a pair's two dates projected apart, without the CEM), else None."""
        counts = [p.shape[0] for p in batch["pixel_values"]]
        maps = list(self.vision_tower(torch.cat(batch["pixel_values"])).split(counts))  # (N, P, D) each
        items = list(maps)
        pairs = [i for i, is_pair in enumerate(batch["pair"]) if is_pair]
        if pairs:
            fused = self.projector.fuse_pair(torch.stack([maps[i][0] for i in pairs]),
                                             torch.stack([maps[i][1] for i in pairs]))  # (n_pairs, P, D)
            for j, i in enumerate(pairs):
                items[i] = fused[j:j + 1]                                               # (1, P, D)
        covered = [i for i in range(len(items))
                   if (self.dense is not None and batch["landcover"][i] is not None)
                   or (self.counter is not None and batch["counts"][i] is not None)]
        dates = [i for i in covered if batch["pair"][i]]   # images: their item tokens are their pictures'
        inputs = items + [maps[i] for i in dates]
        tokens = list(self.projector.project(torch.cat(inputs)).split([m.shape[0] for m in inputs]))  # (N', T, H)
        pictures: list[torch.Tensor | None] = [None] * len(items)
        for i in covered:
            pictures[i] = tokens[len(items) + dates.index(i)] if i in dates else tokens[i]
        return tokens[:len(items)], pictures

    def logits(self, batch: dict[str, list]) -> dict[str, torch.Tensor]:
        """Answer logits (Q, C) with labels (Q,); caption-word logits and targets (Qd, W) for the
        Qd describe questions; with a land-cover head and pictures with land cover, its logits and
        targets (M, T, C) for their M pictures; with a count head and pictures with counts, its
        logits (M', K, MAX_COUNT+1) and targets (M', K)."""
        items, pictures = self.visual_tokens(batch)
        per_item = [t.flatten(0, 1) for t in items]                                      # (N*T, H) each
        device = per_item[0].device
        longest = max(t.shape[0] for t in per_item)
        padded = torch.stack([nn.functional.pad(t, (0, 0, 0, longest - t.shape[0])) for t in per_item])
        mask = torch.stack([torch.arange(longest, device=device) >= t.shape[0] for t in per_item])
        # each question sees its own item's tokens
        owner = torch.tensor([i for i, qs in enumerate(batch["questions"]) for _ in qs], device=device)
        questions = [q for qs in batch["questions"] for q in qs]
        answer_logits, word_logits = self.head(padded[owner], mask[owner], questions)  # (Q, C), (Q, W)
        describe = torch.tensor([d for ds in batch["describe"] for d in ds], device=device)
        out = {"answers": answer_logits,
               "labels": torch.tensor([a for ans in batch["answers"] for a in ans], device=device),
               "words": word_logits[describe],                                          # (Qd, W)
               "word_targets": torch.stack(batch["caption_words"]).to(device)[owner[describe]]}
        covered = [i for i, t in enumerate(pictures) if t is not None and batch["landcover"][i] is not None]
        if self.dense is not None and covered:
            out["dense"] = self.dense(torch.cat([pictures[i] for i in covered]))        # (M, T, C)
            out["dense_targets"] = self.dense.targets(
                torch.cat([batch["landcover"][i] for i in covered]).to(device))         # (M, T, C)
        counted = [i for i, t in enumerate(pictures) if t is not None and batch["counts"][i] is not None]
        if self.counter is not None and counted:
            out["counts"] = self.counter(torch.cat([pictures[i] for i in counted]))     # (M', K, MAX_COUNT+1)
            out["count_targets"] = torch.cat([batch["counts"][i] for i in counted]).to(device)  # (M', K)
        return out

    def forward(self, batch: dict[str, list]) -> torch.Tensor:
        out = self.logits(batch)
        loss = nn.functional.cross_entropy(out["answers"], out["labels"], ignore_index=-100)
        if out["words"].numel():  # describe questions asked, and caption words to find
            loss = loss + nn.functional.binary_cross_entropy_with_logits(out["words"], out["word_targets"])
        self.losses = {"classifier": loss.detach()}
        if "dense" in out:  # summed over the classes (most are absent from most tokens), mean over tokens
            dense = nn.functional.binary_cross_entropy_with_logits(
                out["dense"], out["dense_targets"], reduction="none").sum(-1).mean()
            self.losses["dense"] = dense.detach()
            loss = loss + self.dense_weight * dense
        if "counts" in out:  # mean over pictures and kinds
            count = nn.functional.cross_entropy(out["counts"].flatten(0, 1), out["count_targets"].flatten())
            self.losses["count"] = count.detach()
            loss = loss + self.count_weight * count
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


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AP of ranking (n,) `scores` for (n,) bool `positive`: the mean precision at each positive."""
    hits = positive[scores.argsort(descending=True)].float()                   # (n,)
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)                # (n,)
    return float((precision * hits).sum() / hits.sum())


@dataclasses.dataclass
class HeldOutScores:
    accuracy: dict[str, float]                    # pictures' and pairs' questions apart
    landcover_ap: dict[str, dict[str, float]]     # per class seen: AP and positive_share
    count_accuracy: dict[str, dict[str, float]]   # per kind: accuracy and majority (of the held-out counts)


@torch.no_grad()
def held_out_scores(model: VisionPretrainer, dataset: QuestionedImages, batch_size: int) -> HeldOutScores:
    """Held-out answer accuracy, pictures' and pairs' questions apart (pairs: changed yes/no);
    with a land-cover head, per class seen, the AP of its token logits for the tokens with at least
    DENSE_POSITIVE of the class, beside those tokens' share (the AP of a random ranking); with a
    count head, per kind, the share of pictures whose count it gets exactly, beside the share of
    the most common count."""
    model.eval()
    right = {"pictures": 0, "pairs": 0}
    total = {"pictures": 0, "pairs": 0}
    dense, dense_targets, counts, count_targets = [], [], [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="held-out", unit="batch", leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out = model.logits(batch)
        if "dense" in out:
            dense.append(out["dense"].flatten(0, 1).cpu())                       # (M*T, C)
            dense_targets.append(out["dense_targets"].flatten(0, 1).cpu())       # (M*T, C)
        if "counts" in out:
            counts.append(out["counts"].argmax(-1).cpu())                        # (M', K)
            count_targets.append(out["count_targets"].cpu())                     # (M', K)
        hits = (out["answers"].argmax(-1) == out["labels"]).tolist()
        # an answer never seen in training (label -100) counts as wrong; describe questions have none
        asked = [("pairs" if is_pair else "pictures", d)
                 for is_pair, ds in zip(batch["pair"], batch["describe"]) for d in ds]
        for hit, (kind, describe) in zip(hits, asked):
            if not describe:
                right[kind] += hit
                total[kind] += 1
    model.train()
    ap = {}
    if dense:
        logits, positive = torch.cat(dense), torch.cat(dense_targets) >= DENSE_POSITIVE  # (n, C) each
        ap = {name: {"ap": average_precision(logits[:, c], positive[:, c]),
                     "positive_share": float(positive[:, c].float().mean())}
              for c, name in enumerate(LANDCOVER_CLASSES) if positive[:, c].any()}
    counted = {}
    if counts:
        predicted, actual = torch.cat(counts), torch.cat(count_targets)         # (n, K) each
        counted = {name: {"accuracy": float((predicted[:, k] == actual[:, k]).float().mean()),
                          "majority": float(actual[:, k].bincount().max() / len(actual))}
                   for k, name in enumerate(COUNTED)}
    return HeldOutScores({kind: right[kind] / total[kind] for kind in total if total[kind]}, ap, counted)


def train_vision(config: VisionConfig, resume: str | Path | None = None) -> Path:
    """Run the stage; returns out/checkpoint (vision.safetensors + vision.json)."""
    spec = model_spec(config.model_spec)
    train_samples = [s for d in config.data for s in read_spec(d)]
    has_pairs = any(s.kind is InputKind.PAIR for s in train_samples)
    if has_pairs and not spec.with_change:
        raise ConfigError("data: image pairs need model_spec.with_change = true (the CEM fuses them)")
    dense, counting = config.dense_weight > 0, config.count_weight > 0
    if dense and not any(landcover_path(s.video or s.images[0]).is_file()
                         for s in train_samples if s.video or s.images):
        raise ConfigError("dense_weight: no training picture has land-cover fractions (landcover/ beside "
                          "the images and videos, written by `unirs synth`)")
    if counting and not any(counts_path(s.images[0]).is_file() for s in train_samples if s.images):
        raise ConfigError("count_weight: no training picture has object counts (counts/ beside "
                          "the images, written by `unirs synth`)")
    # a batch without pairs leaves the CEM and the caption-word head without gradient, one
    # without land cover or counts their heads
    accelerator = loop.make_accelerator(config, find_unused_parameters=has_pairs or dense or counting)
    out = loop.prepare_out(config, accelerator)
    preprocessor = ImagePreprocessor(default_image_processor(spec.image_size), spec.image_aspect_ratio)
    vocab, answers, caption_vocab = vocabularies(train_samples, config.min_caption_word_count)
    if not answers:
        raise ConfigError("data: no training sample has an answer")
    tower = VisionTower.from_config(spec.vision_config())
    freeze_unused_tower_layers(tower)
    projector = MultimodalProjector(spec.vision_hidden, spec.llm_hidden,
                                    change_grid=spec.grid if has_pairs else None)
    classifier = AnswerClassifier(spec.llm_hidden, len(vocab), len(answers), len(caption_vocab))
    # made last, in this order: without them every other module starts as before
    head = LandCoverHead(spec.llm_hidden, len(LANDCOVER_CLASSES), spec.grid) if dense else None
    counter = CountHead(spec.llm_hidden, len(COUNTED)) if counting else None
    model = VisionPretrainer(tower, projector, classifier, head, config.dense_weight, counter, config.count_weight)
    dataset = QuestionedImages(train_samples, preprocessor, vocab, answers, caption_vocab, config.num_frames,
                               augment=config.augment, landcover=dense, counts=counting)
    model, optimizer, scheduler, loader, params = loop.prepare_adamw_cosine(
        config, accelerator, model, loader=loop.make_loader(dataset, config, collate))
    if accelerator.is_main_process:
        save_config(config, out / "train_config.json")
    compute_loss = model
    if dense or counting:
        compute_loss = loop.LossParts(model, accelerator, out, LOSS_PARTS, config.log_every,
                                      loop.total_steps(config, loader, accelerator.gradient_accumulation_steps),
                                      loop.resumed_step(resume))
    loop.run(config, accelerator, model, optimizer, scheduler, loader, compute_loss, params=params,
             resume=resume, desc="vision")
    accelerator.wait_for_everyone()
    final = out / CHECKPOINT_DIR
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        held_out = [s for d in config.data
                    for s in read_spec(dataclasses.replace(d, split=config.eval_split))]
        scores = {}
        if held_out:
            scores[config.eval_split] = held_out_scores(trained, QuestionedImages(
                held_out, preprocessor, vocab, answers, caption_vocab, config.num_frames, augment=False,
                landcover=dense, counts=counting), config.batch_size)
        final.mkdir(parents=True, exist_ok=True)
        state = {**{TOWER_PREFIX + k: v for k, v in trained.vision_tower.state_dict().items()},
                 **{PROJECTOR_PREFIX + k: v for k, v in trained.projector.state_dict().items()}}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(final / WEIGHTS_FILE))
        info = {"model_spec": config.model_spec,
                "accuracy": {split: s.accuracy for split, s in scores.items()}, "answers": list(answers),
                "question_words": len(vocab), "caption_words": list(caption_vocab)}
        # the heads themselves are not kept, like the classifier
        if dense:
            info["landcover_ap"] = {split: s.landcover_ap for split, s in scores.items()}
        if counting:
            info["count_accuracy"] = {split: s.count_accuracy for split, s in scores.items()}
        (final / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
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
