"""Stage configurations: JSON files (`--config FILE`) with `--set key=value` overrides, validated.

One dataclass per stage; unknown keys, wrong types and out-of-range values are one-line errors that
name the file and the key. Keys starting with "_" are comments and ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..argtypes import key_value
from ..errors import UnirsError


class ConfigError(UnirsError, ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


PAIR_TASKS = ("levir-cc",)  # datasets of dated image pairs


@dataclass
class DatasetSpec:
    """One dataset of a training mixture, read with data.load_samples(task, root, split, **options)."""

    task: str                    # "rsvqa-lr", "levir-cc", "era", "geochat", ...
    root: str
    split: str = "train"
    repeat: int = 1              # listed `repeat` times in the mixture (released: LEVIR-CC x5, ERA x10)
    clues: str | None = None     # JSONL {"id": sample_id, "clue": text}; clue added to each prompt
    all_references: bool = False  # one training item per reference (LEVIR-CC: 5 captions), else the first
    options: dict[str, Any] = field(default_factory=dict)  # extra load_samples keywords
    pair_as_frames: bool = False  # pairs as 2-frame sequences, no CEM (paper's "without CEM" ablation)


@dataclass
class StageConfig:
    """What every stage shares: output, optimisation length and batch shape, checkpointing, logging."""

    out: str                     # run folder: checkpoint/, state-<step>/, log.jsonl
    seed: int = 0
    epochs: int = 1
    max_steps: int = 0           # > 0: stop after this many optimizer steps (also sets the schedule length)
    batch_size: int = 4          # per device
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0   # gradient clipping (0 = off), as the HF Trainer VILA used
    save_every: int = 0          # optimizer steps between resumable states (0 = none)
    keep_states: int = 2         # older state-<step> folders are deleted
    log_every: int = 1
    num_workers: int = 0         # DataLoader workers

    def check(self) -> list[str]:
        """Problems as 'key: reason' strings (empty when valid)."""
        problems = []
        for key in ("epochs", "batch_size", "grad_accum", "log_every", "keep_states"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("max_steps", "save_every", "num_workers"):
            if getattr(self, key) < 0:
                problems.append(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0:
            problems.append(f"lr: must be > 0, got {self.lr}")
        for key in ("weight_decay", "max_grad_norm"):
            if getattr(self, key) < 0:
                problems.append(f"{key}: must be >= 0, got {getattr(self, key)}")
        return problems


@dataclass
class InstructConfig(StageConfig):
    """Joint instruction tuning: frozen vision tower + CEM + projector, LLM fully fine-tuned."""

    model: str = ""              # starting checkpoint (VILA-1.5 layout, with the CEM)
    data: list[DatasetSpec] = field(default_factory=list)
    max_length: int = 4096       # tokens after splicing the visual slots
    num_frames: int = 8          # frames sampled per video
    warmup_ratio: float = 0.03
    gradient_checkpointing: bool = False
    image_aspect_ratio: str | None = None  # "pad" (UniRS) / "resize" (VILA-1.5); None keeps the model's
    drop_change_module: bool = False  # start without the checkpoint's CEM ("without CEM" ablation)
    group_by_modality: bool = False  # batches of images, pairs or videos only: less padding, faster
    cache_vision_features: bool = False  # encode each distinct input once (feature_cache.py): faster, memory
    count_weight: float = 0.0    # > 0: plus this x the loss of a throw-away head reading images' object counts (synthetic data)
    count_layer: int = -1        # the LLM layer whose output the count head reads (1 = first; -1 = last, normed)

    def check(self) -> list[str]:
        problems = super().check()
        if not self.model:
            problems.append("model: required (the starting checkpoint folder)")
        problems += _check_data(self.data)
        if self.max_length < 16:
            problems.append(f"max_length: must be >= 16, got {self.max_length}")
        problems += _check_frames_and_warmup(self.num_frames, self.warmup_ratio)
        if self.count_weight < 0:
            problems.append(f"count_weight: must be >= 0, got {self.count_weight}")
        if self.count_layer == 0:  # hidden_states[0] is the embeddings: nothing read from the picture yet
            problems.append("count_layer: must not be 0 (the embeddings); 1 is the first layer's output, -1 the last")
        if self.image_aspect_ratio not in (None, "pad", "resize"):
            problems.append(f"image_aspect_ratio: must be 'pad' or 'resize', got {self.image_aspect_ratio!r}")
        if self.drop_change_module:  # without the CEM, image pairs can only go in as frames
            problems += [f"data.{i}.pair_as_frames: must be true with drop_change_module (pairs need "
                         f"the Change Extraction module)" for i, spec in enumerate(self.data)
                         if spec.task in PAIR_TASKS and not spec.pair_as_frames]
        return problems


@dataclass
class VisionConfig(StageConfig):
    """Demo stage "vision": tower + projector (+ CEM, given image pairs) from random init with a
    throw-away answer classifier."""

    model_spec: dict[str, Any] = field(default_factory=dict)  # factory.ModelSpec fields
    data: list[DatasetSpec] = field(default_factory=list)   # images/videos with questions, captioned pairs
    num_frames: int = 8
    warmup_ratio: float = 0.03
    augment: bool = True         # random 90-degree rotations and flips of images and videos
    eval_split: str = "val"      # held-out accuracy of the classifier, reported in vision.json
    min_caption_word_count: int = 5  # image pairs: rarer caption words are not targets
    dense_weight: float = 0.0    # > 0: plus this x the loss of a per-token land-cover head (synthetic data)
    count_weight: float = 0.0    # > 0: plus this x the loss of a per-picture object-count head (synthetic data)

    def check(self) -> list[str]:
        problems = super().check()
        problems += _check_data(self.data)
        problems += _check_frames_and_warmup(self.num_frames, self.warmup_ratio)
        problems += [f"{name}: must be >= 0, got {value}" for name, value in
                     (("dense_weight", self.dense_weight), ("count_weight", self.count_weight)) if value < 0]
        return problems


@dataclass
class AlignConfig(StageConfig):
    """Demo stage 0: tower + projector + LLM from random init, or the LLM alone reading the frozen
    tower + projector (+ CEM) of the vision stage."""

    model_spec: dict[str, Any] = field(default_factory=dict)  # factory.ModelSpec fields
    vision_init: str = ""        # `unirs train vision` checkpoint: tower, projector (+ CEM); "" = random
    train_vision: bool = True    # false: tower + projector frozen (keeps what the vision stage learned)
    vocab_size: int = 1000       # sentencepiece vocabulary trained on the training texts
    data: list[DatasetSpec] = field(default_factory=list)
    tokenizer_data: list[DatasetSpec] = field(default_factory=list)  # more texts for the vocabulary
    max_length: int = 1024
    num_frames: int = 8
    warmup_ratio: float = 0.03
    group_by_modality: bool = False  # as InstructConfig's
    cache_vision_features: bool = False  # as InstructConfig's; only with train_vision false

    def check(self) -> list[str]:
        problems = super().check()
        problems += _check_data(self.data)
        if self.cache_vision_features and self.train_vision:
            problems.append("cache_vision_features: needs a frozen tower (train_vision false)")
        if self.vocab_size < 100:
            problems.append(f"vocab_size: must be >= 100, got {self.vocab_size}")
        if self.max_length < 16:
            problems.append(f"max_length: must be >= 16, got {self.max_length}")
        problems += _check_frames_and_warmup(self.num_frames, self.warmup_ratio)
        return problems


@dataclass
class CemConfig(StageConfig):
    """Chg2Cap-style pretraining of the Change Extraction module with a throw-away caption decoder."""

    model: str = ""              # checkpoint whose vision tower (frozen) feeds the CEM
    data: DatasetSpec | None = None  # LEVIR-CC format pairs with captions
    min_word_count: int = 5      # Chg2Cap: rarer words become <UNK>
    max_caption_length: int = 41  # words, incl. <START>/<END>
    decoder_heads: int = 8
    dropout: float = 0.1
    lr_step_epochs: int = 5      # Chg2Cap: StepLR(step 5 epochs, gamma 0.5)
    lr_gamma: float = 0.5
    max_grad_norm: float = 0.0   # Chg2Cap trains without clipping

    def check(self) -> list[str]:
        problems = super().check()
        if not self.model:
            problems.append("model: required (checkpoint with the vision tower)")
        if self.data is None:
            problems.append("data: required (a LEVIR-CC format dataset)")
        else:
            problems += _check_data([self.data])
        if self.min_word_count < 1:
            problems.append(f"min_word_count: must be >= 1, got {self.min_word_count}")
        if self.max_caption_length < 3:
            problems.append(f"max_caption_length: must be >= 3, got {self.max_caption_length}")
        if self.decoder_heads < 1:
            problems.append(f"decoder_heads: must be >= 1, got {self.decoder_heads}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.lr_step_epochs < 1 or not 0 < self.lr_gamma <= 1:
            problems.append("lr_step_epochs/lr_gamma: need step >= 1 and 0 < gamma <= 1")
        return problems


@dataclass
class ChangeScoreConfig(StageConfig):
    """The review's change-score head on the frozen tower's features of mosaic-like labelled pairs;
    full-batch training (an epoch is one optimizer step), then its threshold on the val pairs."""

    model: str = ""              # checkpoint whose tower (frozen) feeds the head; copied with the head added
    data: DatasetSpec | None = None  # LEVIR-CC format pairs with changeflag (split: the training pairs)
    val_split: str = "val"       # the threshold is calibrated on this split's pairs
    copies: int = 2              # mosaic-like copies of every training pair (review/augment.py)
    val_copies: int = 3          # ... of every val pair, for the threshold (review/calibrate.py HEAD_COPIES)
    hidden: int = 64
    dropout: float = 0.2
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-3
    batch_size: int = 32         # pairs per vision pass while extracting features

    def check(self) -> list[str]:
        problems = super().check()
        if not self.model:
            problems.append("model: required (the checkpoint to add the head to)")
        if self.data is None:
            problems.append("data: required (a LEVIR-CC format dataset with changeflag)")
        else:
            problems += _check_data([self.data])
        for key in ("copies", "val_copies", "hidden"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")
        return problems


def _check_frames_and_warmup(num_frames: int, warmup_ratio: float) -> list[str]:
    problems = [] if num_frames >= 1 else [f"num_frames: must be >= 1, got {num_frames}"]
    if not 0 <= warmup_ratio < 1:
        problems.append(f"warmup_ratio: must be in [0, 1), got {warmup_ratio}")
    return problems


def _check_data(data: list[DatasetSpec]) -> list[str]:
    problems = [] if data else ["data: at least one dataset is required"]
    for i, spec in enumerate(data):
        if spec.repeat < 1:
            problems.append(f"data.{i}.repeat: must be >= 1, got {spec.repeat}")
    return problems


STAGES: dict[str, type[StageConfig]] = {"vision": VisionConfig, "align": AlignConfig, "cem": CemConfig,
                                        "instruct": InstructConfig, "change-score": ChangeScoreConfig}


def load_config(stage: str, path: str | Path | None = None, overrides: list[str] = ()) -> StageConfig:
    """The stage's config from a JSON file plus `key=value` overrides (dotted keys reach into lists
    and dicts: `data.1.repeat=5`; values are JSON, else plain strings)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r} (expected one of {', '.join(STAGES)})")
    source = str(path) if path else "<command line>"
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the config ({exc.strerror})") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: invalid JSON at line {exc.lineno} ({exc.msg})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object of {stage} settings")
    for item in overrides:
        _apply_override(raw, item, source)
    config = _build(STAGES[stage], raw, source, prefix="")
    problems = config.check()
    if problems:
        raise ConfigError(f"{source}: invalid {stage} config: " + "; ".join(problems))
    return config


def _apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    try:
        key, value = key_value(item)
    except ArgumentTypeError as exc:
        raise ConfigError(f"--set {exc}") from None
    *parents, last = key.split(".")
    node: Any = raw
    for part in parents:
        try:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        except (IndexError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source}: --set {key}: no such entry ({part!r})") from exc
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{source}: --set {key}: index {last!r} out of range")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{source}: --set {key}: {'.'.join(parents)} is not a list or object")


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    """Dataclass `cls` from dict `raw`, checking keys and value types."""
    where = prefix.rstrip(".") or cls.__name__
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in fields and not k.startswith("_")]
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix}{unknown[0]!r} (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _convert(raw[name], hints[name], source, prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key {prefix}{name!r}")
    return cls(**values)


def _convert(value: Any, hint: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):            # `X | None`
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {json.dumps(value)}")
        return [_convert(v, args[0], source, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected an object, got {json.dumps(value)}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (type(value) is hint):
        raise ConfigError(f"{source}: {key}: expected {hint.__name__}, got {json.dumps(value)}")
    return value


def save_config(config: StageConfig, path: Path) -> None:
    """The resolved config (after overrides) next to the run, for the record."""
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
