"""The engine's pipeline as plain functions, in data-flow order: read -> encode -> prompt -> generate.

Engine (engine.py) is a caching and checking layer over them; training (train/data.py, train/clues.py)
calls them directly, so an input is read, a clue prompt built and an answer generated one way everywhere.
Errors are the readers' (OSError, ValueError naming the file); Engine turns them into its own.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from . import prompts
from .inputs.pair import read_pair
from .inputs.preprocess import ImagePreprocessor
from .inputs.raster import read_chip
from .inputs.video import MIN_FRAMES, read_sequence
from .model.checkpoint import LoadedModel
from .types import TWO_IMAGE_PAIR, Chip, InputKind, image_slots


class GenerateItem(NamedTuple):
    """One prompt of a generate call: an input's features, how they become slots, the user message."""

    kind: InputKind
    features: torch.Tensor            # (N, P, D)
    message: str
    pair_mode: str | None = None


# ---- read -----------------------------------------------------------------------------------------

def read_inputs(kind: InputKind, inputs: Sequence, *, num_frames: int, **raster_kw: Any) -> list[Chip]:
    """The chips of an input: [image], [before, after] on one grid (the after warped onto the before's),
    or up to `num_frames` frames of one video or of dated rasters. Chips given are used as they are.
    `raster_kw`: bounds, bounds_crs, bands, max_read_pixels (inputs/raster.py)."""
    expected = {InputKind.IMAGE: 1, InputKind.PAIR: 2}.get(kind)
    if expected is not None and len(inputs) != expected:
        raise ValueError(f"a {kind.value} request needs {expected} input(s), got {len(inputs)}")
    if kind is InputKind.IMAGE:
        src = inputs[0]
        return [src if isinstance(src, Chip) else read_chip(str(src), **raster_kw)]
    if kind is InputKind.PAIR:
        before, after = inputs
        if isinstance(before, Chip) and isinstance(after, Chip):
            return [before, after]
        return list(read_pair(str(before), str(after), **raster_kw))
    if inputs and all(isinstance(f, Chip) for f in inputs):
        chips = list(inputs)[:num_frames]
        if len(chips) < MIN_FRAMES:
            raise ValueError(f"{len(chips)} frame(s) given; a sequence needs at least {MIN_FRAMES}")
        return chips
    return read_sequence(list(inputs), num_frames, **raster_kw)


# ---- encode ---------------------------------------------------------------------------------------

def encode(loaded: LoadedModel, chips: list[Chip], preprocess: ImagePreprocessor | None = None) -> torch.Tensor:
    """Vision features of chips, (N, P, D), with the model's own preprocessing unless given."""
    preprocess = preprocess or ImagePreprocessor.from_checkpoint(loaded.path)
    pixels = preprocess(chips).to(loaded.device, loaded.dtype)          # (N, 3, S, S)
    with torch.inference_mode():
        return loaded.model.encode_images(pixels)                       # (N, P, D)


# ---- prompt ---------------------------------------------------------------------------------------

def clue_item(kind: InputKind, features: torch.Tensor) -> GenerateItem:
    """The base VLM's clue prompt for an input (paper Table II, no task tag). It sees a pair as two
    images in two slots (VILA's native multi-image input)."""
    pair_mode = TWO_IMAGE_PAIR if kind is InputKind.PAIR else None
    message = prompts.user_message(kind, prompts.CLUE_PROMPTS[kind], image_slots(kind, features.shape[0], pair_mode),
                                   task_tag=False)
    return GenerateItem(kind, features, message, pair_mode)


# ---- generate -------------------------------------------------------------------------------------

class _StopWhenCancelled(StoppingCriteria):
    """Ends generation at the next token once the caller cancels (the answer is then discarded)."""

    def __init__(self, is_cancelled: Callable[[], bool]):
        self.is_cancelled = is_cancelled

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), bool(self.is_cancelled()), dtype=torch.bool,
                          device=input_ids.device)


def generate(loaded: LoadedModel, items: list[GenerateItem], max_new_tokens: int,
             is_cancelled: Callable[[], bool] | None = None) -> list[str]:
    """Greedy answers of the items in one generate call. Cut short when `is_cancelled()` turns true:
    the caller checks it again and must not use the answers then."""
    model, tok = loaded.model, loaded.tokenizer
    stop = StoppingCriteriaList([_StopWhenCancelled(is_cancelled)]) if is_cancelled else None
    with torch.inference_mode():
        slots = [model.visual_slots(it.features, it.kind, it.pair_mode) for it in items]  # (n_slots, T, H)
        ids = [prompts.encode(tok, it.message)[0] for it in items]
        out = model.generate(ids, slots, max_new_tokens=max_new_tokens, stopping_criteria=stop)
    return [tok.decode(o, skip_special_tokens=True).strip() for o in out]
