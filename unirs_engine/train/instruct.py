"""Joint instruction tuning (paper Sec. III-C, IV-A): images, pairs and videos mixed; the vision
tower, Change Extraction module and projector frozen (and kept in eval mode so the CEM's BatchNorm
statistics stay); the LLM fully fine-tuned with AdamW and a cosine schedule with warmup.

With `count_weight` > 0 (the demo recipe, synthetic images) a throw-away linear head reads every
object count of the image from one LLM layer's output (`count_layer`, default the last) at the
position that predicts the answer, and its loss joins the answer loss: the comparisons ("more roads
than water areas?") need the counts gathered there, and one yes/no per question teaches that
slowly. Read below the last layer, the layers above it are left to compare them. The parts go to
out/losses.jsonl.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset

from ..data.synthetic.object_counts import COUNTED, MAX_COUNT
from ..inputs.preprocess import ImagePreprocessor
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..model.unirs import UniRSModel
from ..prompts import IGNORE_INDEX
from ..types import CEM_PAIR
from . import loop
from .config import AlignConfig, ConfigError, InstructConfig, save_config
from .data import build_mixture, collate, instruction_dataset, modality_groups
from .feature_cache import cache_tower_features

CHECKPOINT_DIR = "checkpoint"
LOSS_PARTS = ("answer", "count")  # with a count head: loop.LossParts logs them


class AnswerCountHead(nn.Module):
    """Throw-away: one hidden state (H,) -> per kind of COUNTED, logits over 0..MAX_COUNT objects.
    Linear, so the counts have to be plainly in the LLM's state, not computed by the head."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.classify = nn.Linear(hidden, len(COUNTED) * (MAX_COUNT + 1))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.classify(states).unflatten(-1, (len(COUNTED), MAX_COUNT + 1))  # (M, H) -> (M, K, C)


def answer_predictors(labels: torch.Tensor) -> torch.Tensor:
    """(B,): in each row of `labels` (B, L), the position whose output is the answer's first token
    (the one before the first label that is not IGNORE_INDEX)."""
    return (labels != IGNORE_INDEX).int().argmax(1) - 1


class MultimodalLoss(nn.Module):
    """One training step's forward: pixels (or cached tower features) -> visual slots -> spliced
    sequence -> answer loss (+ count_weight x the count head's loss on the items with counts).
    `losses` holds the last forward's parts.

    The whole step sits in one forward so that DDP/DeepSpeed see every trained parameter."""

    def __init__(self, model: UniRSModel, train_vision: bool,
                 features: dict[str, torch.Tensor] | None = None, count_weight: float = 0.0,
                 count_layer: int = -1) -> None:
        super().__init__()
        self.model = model
        self.train_vision = train_vision
        self.features = features  # feature_cache.cache_tower_features: {input key: (N, P, D)}
        self.counter = AnswerCountHead(model.llm.config.hidden_size) if count_weight > 0 else None
        self.count_weight = count_weight
        self.count_layer = count_layer  # index into the LLM's hidden_states (0 = the embeddings)
        self.losses: dict[str, torch.Tensor] = {}

    def forward(self, batch: dict[str, list]) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_vision and torch.is_grad_enabled()):
            if "feature_key" in batch:
                cached = [self.features[key] for key in batch["feature_key"]]
                counts = [f.shape[0] for f in cached]
                features = torch.cat(cached).to(self.model.llm.device)                # (sum N, P, D)
            else:
                counts = [pixels.shape[0] for pixels in batch["pixel_values"]]
                features = self.model.encode_images(torch.cat(batch["pixel_values"]))  # (sum N, P, D)
            # A pair sample is a CEM pair: its prompt has one <image> (pair_as_frames makes it a sequence).
            slots = [self.model.visual_slots(f, kind, CEM_PAIR)                    # (n_slots, T, H)
                     for f, kind in zip(features.split(counts), batch["kind"])]
        inputs = self.model.embed(batch["input_ids"], slots, batch["labels"], padding_side="right")
        counted = [i for i, c in enumerate(batch.get("counts", ())) if c is not None] if self.counter else []
        out = self.model.llm(**inputs, output_hidden_states=bool(counted))
        self.losses = {"answer": out.loss.detach()}
        if not counted:
            return out.loss
        layer = out.hidden_states[self.count_layer]                            # (B, L, H)
        states = layer[counted, answer_predictors(inputs["labels"][counted])]  # (M, H)
        logits = self.counter(states)                                          # (M, K, MAX_COUNT+1)
        targets = torch.stack([batch["counts"][i] for i in counted]).to(logits.device)  # (M, K)
        count = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.losses["count"] = count.detach()
        return out.loss + self.count_weight * count


def tokens_per_slot(model: UniRSModel) -> int:
    """T: a g x g patch grid is padded to even and merged 2x2 by the projector."""
    return math.ceil(model.vision_tower.grid / 2) ** 2


def vlm_mixture(config: InstructConfig | AlignConfig, model: UniRSModel, tokenizer, image_processor, *,
                task_tag: bool, counts: bool = False, skip_log: Path | None = None) -> ConcatDataset:
    """The training items of `config.data`, as the model will splice them (with `counts`, the
    images' object counts too)."""
    preprocessor = ImagePreprocessor.for_config(image_processor, model.config)
    return build_mixture(config.data, lambda spec: instruction_dataset(
        spec, tokenizer, preprocessor, tokens_per_slot=tokens_per_slot(model),
        max_length=config.max_length, num_frames=config.num_frames, task_tag=task_tag,
        counts=counts, skip_log=skip_log))


def train_vlm(config: InstructConfig | AlignConfig, accelerator, model: UniRSModel, tokenizer,
              image_processor, *, train_vision: bool, task_tag: bool, resume: str | Path | None,
              count_weight: float = 0.0, count_layer: int = -1) -> Path:
    """The LLM-loss training both instruct and align run; writes out/checkpoint and returns it."""
    out = loop.prepare_out(config, accelerator)
    dataset = vlm_mixture(config, model, tokenizer, image_processor, task_tag=task_tag,
                          counts=count_weight > 0, skip_log=out / "skipped.jsonl")
    if count_weight > 0 and not any(part.any_counts() for part in dataset.datasets):
        raise ConfigError("count_weight: no training image has object counts (counts/ beside the images, "
                          "written by `unirs synth`)")
    features = None
    if config.cache_vision_features:  # the config refuses it with a tower in training
        features = cache_tower_features(model.to(accelerator.device), dataset, accelerator,
                                        num_workers=config.num_workers)
    loader = loop.make_loader(dataset, config, collate,
                             groups=modality_groups(dataset) if config.group_by_modality else None)
    step_module, optimizer, scheduler, loader, params = loop.prepare_adamw_cosine(
        config, accelerator, MultimodalLoss(model, train_vision, features, count_weight, count_layer), loader)
    if accelerator.is_main_process:
        save_config(config, out / "train_config.json")
    compute_loss = step_module
    if count_weight > 0:
        compute_loss = loop.LossParts(step_module, accelerator, out, LOSS_PARTS, config.log_every,
                                      loop.total_steps(config, loader, accelerator.gradient_accumulation_steps),
                                      loop.resumed_step(resume))
    stage = "align" if isinstance(config, AlignConfig) else "instruct"
    loop.run(config, accelerator, step_module, optimizer, scheduler, loader, compute_loss,
             params=params, resume=resume, desc=stage)
    accelerator.wait_for_everyone()
    final = out / CHECKPOINT_DIR
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(step_module).model
        save_checkpoint(trained.eval(), final, tokenizer, image_processor)
    accelerator.wait_for_everyone()
    return final


def train_instruct(config: InstructConfig, resume: str | Path | None = None) -> Path:
    """Run the stage; returns the fine-tuned checkpoint folder (out/checkpoint)."""
    # a batch without an image with counts leaves the count head without gradient
    accelerator = loop.make_accelerator(config, find_unused_parameters=config.count_weight > 0)
    loaded = load_checkpoint(config.model, device="cpu", dtype=torch.float32)
    model = loaded.model
    model.config.pop("_name_or_path", None)  # a new model, named after the folder it is saved in
    if config.drop_change_module:  # the "without CEM" ablation: saved without layers.change.*
        if model.mm_projector.has_change:
            del model.mm_projector.layers["change"]
    elif not model.mm_projector.has_change:
        raise ConfigError(f"{config.model}: the checkpoint has no Change Extraction module "
                          f"(run `unirs train cem` on it first)")
    if config.image_aspect_ratio:  # saved with the checkpoint, so inference pads the same way
        model.config["image_aspect_ratio"] = config.image_aspect_ratio
    layers = model.llm.config.num_hidden_layers
    if config.count_weight > 0 and not -layers <= config.count_layer <= layers:
        raise ConfigError(f"count_layer: {config.model}'s LLM has {layers} layers; expected 1..{layers} "
                          f"or -{layers}..-1, got {config.count_layer}")
    model.freeze(vision=True, projector=True)
    if config.gradient_checkpointing:
        model.llm.config.use_cache = False
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return train_vlm(config, accelerator, model, loaded.tokenizer, loaded.image_processor,
                     train_vision=False, task_tag=True, resume=resume, count_weight=config.count_weight,
                     count_layer=config.count_layer)
