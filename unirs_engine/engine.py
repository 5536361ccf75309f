"""Inference API: ask about an image, describe change in a pair, classify a sequence.

Every request goes the same way, through the stages of stages.py: read chips (georeferenced) -> vision
features (cached here per chip) -> optional clue from the base VLM (cached per input) -> prompt ->
batched greedy generation (answers cached per chips + prompt: greedy decoding is deterministic, so a
repeated question costs a read). Engine is the caching and checking layer over those stages.

Bad input is refused before the work it would waste, with one line naming the input and the limit:
a prompt longer than the model's context (before reading), a read larger than `max_read_pixels`
(before reading), an input with less than `min_valid_fraction` of its pixels holding data (before
the vision pass).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import prompts, sizing
from .checkpoint_info import request_memory
from .errors import UnirsError
from .inputs.preprocess import ImagePreprocessor
from .inputs.raster import MAX_READ_PIXELS
from .inputs.video import MIN_FRAMES
from .model.change_score import feature_change_score, match_gain
from .model.checkpoint import LoadedModel, load_checkpoint
from .review.schema import COSINE_SCORE, HEAD_SCORE, SCORES, THRESHOLD_KEYS
from .stages import GenerateItem, clue_item, encode, generate, read_inputs
from .thresholds import model_threshold
from .types import CEM_PAIR, PAIR_MODES, TWO_IMAGE_PAIR, Chip, InputKind, Result, image_slots, valid_in_all

TASK_NAMES = {InputKind.IMAGE: "ask", InputKind.PAIR: "change", InputKind.SEQUENCE: "classify"}
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"
# Below this fraction of pixels with data (both dates for a pair, every frame of a sequence) a
# request is refused: the model, trained on full scenes, would answer about the grey padding with
# confidence. One half is also the change review's default for skipping a tile (review/job.py).
MIN_VALID_FRACTION = 0.5
# What the instruction is called in messages, per input kind.
_INSTRUCTION_NAMES = {InputKind.IMAGE: "question", InputKind.PAIR: "instruction",
                      InputKind.SEQUENCE: "instruction (with its class list)"}


class EngineError(UnirsError, RuntimeError):
    """A request the engine cannot answer; the message says which input and why."""


class Cancelled(EngineError):
    """The caller asked to stop; results computed so far are discarded."""


class InvalidRequest(EngineError):
    """A parameter out of range (max_new_tokens, batch_size, num_frames, min_valid_fraction...)."""


class PromptTooLong(InvalidRequest):
    """The instruction does not fit the model's context beside the images and the answer."""


class InputError(EngineError):
    """An input the engine cannot read or use: missing, not a raster, too large to read..."""


class NotEnoughData(InputError):
    """Too few pixels of an input hold data (nodata, NaN, outside the other date)."""


class OutOfMemory(EngineError):
    """The device ran out of memory; the message gives the figures and what to change."""


log = logging.getLogger("unirs.engine")


@dataclass
class Request:
    kind: InputKind
    inputs: list                      # IMAGE: [img]; PAIR: [before, after]; SEQUENCE: frames or [video]
    instruction: str
    clue: bool = False
    bounds: tuple[float, float, float, float] | None = None
    bounds_crs: str | None = None
    bands: Sequence[int] | None = None
    raw_instruction: bool = False     # True: the instruction is used as is (no task tag)
    classes: Sequence[str] | None = None  # SEQUENCE: label set for extra["label"]
    task: str | None = None           # the Result's task name; default from the kind
    min_valid_fraction: float | None = None  # None: the engine's (e.g. a review passes its own)
    pair_mode: str | None = None      # PAIR: "cem" or "two-images" (types.PAIR_MODES); None: the model's

    def __post_init__(self):
        self.kind = InputKind(self.kind)
        self.task = self.task or TASK_NAMES[self.kind]


@dataclass
class _Prepared:
    """A request after reading: its chips and their cached vision features."""

    request: Request
    chips: list[Chip]
    keys: tuple[str, ...]             # content hash per chip
    features: torch.Tensor            # (N, P, D) on the model device
    valid_fraction: float             # pixels with data: of the image, in both dates, of the worst frame
    pair_mode: str | None             # how a pair goes in (None for other kinds)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_slots(self) -> int:
        return image_slots(self.request.kind, self.features.shape[0], self.pair_mode)


def default_model_dir() -> Path:
    """UNIRS_MODEL, else the demo model shipped beside the package."""
    env = os.environ.get("UNIRS_MODEL")
    if env:
        return Path(env)
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_DIR
    raise EngineError(
        f"no model: pass --model DIR (a UniRS or VILA-1.5 checkpoint) or set UNIRS_MODEL; "
        f"the demo model is not installed at {DEFAULT_MODEL_DIR}"
    )


class _LRU(OrderedDict):
    """A small least-recently-used cache (vision features, clues)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get(self, key, default=None):
        """dict.get that also marks `key` as the most recently used."""
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    """`value` when it is an integer >= minimum, else InvalidRequest naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return value


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidRequest(f"{name} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.4g} %"


def _valid_fraction(req: Request, chips: list[Chip]) -> tuple[float, str]:
    """Fraction of pixels with data that decides the request, and what it is of (for messages):
    the image; the pixels valid in both dates of a pair; the worst frame of a sequence."""
    def name(chip: Chip, i: int) -> str:
        return chip.georef.source if chip.georef else f"input {i + 1}"

    if req.kind is InputKind.PAIR:
        before, after = chips
        return float(valid_in_all(chips).mean()), f"{name(before, 0)} and {name(after, 1)} (valid in both)"
    worst = min(range(len(chips)), key=lambda i: chips[i].valid_fraction)
    return chips[worst].valid_fraction, name(chips[worst], worst)


def _chip_key(chip: Chip) -> str:
    img = chip.image
    return hashlib.sha1(img.tobytes() + str(img.shape).encode()).hexdigest()


READ_CACHE_SIZE = 8


def _read_key(req: Request) -> tuple | None:
    """Identifies a read: the files (path, size, mtime) and the region; None unless every input is a
    local file (a Chip, a URL or a /vsi path is not cached)."""
    stamps = []
    for src in req.inputs:
        if isinstance(src, Chip):
            return None
        try:
            st = os.stat(src)
        except (OSError, TypeError, ValueError):
            return None
        stamps.append((os.path.abspath(src), st.st_size, st.st_mtime_ns))
    bounds = tuple(req.bounds) if req.bounds is not None else None
    bands = tuple(req.bands) if req.bands is not None else None
    return (req.kind.value, tuple(stamps), bounds, str(req.bounds_crs), bands)


class Engine:
    """A loaded UniRS checkpoint (plus an optional base VLM for clues) answering requests."""

    def __init__(self, model: LoadedModel, *, clue_model: LoadedModel | None = None,
                 num_frames: int | None = None, max_new_tokens: int = 64, cache_size: int = 64,
                 min_valid_fraction: float = MIN_VALID_FRACTION,
                 max_read_pixels: int | None = MAX_READ_PIXELS, batch_size: int | None = None):
        self.model = model
        self.clue_model = clue_model
        if num_frames is None:
            num_frames = int(model.model.config.get("num_video_frames", 8))
        self.num_frames = _positive_int("num_frames", num_frames, MIN_FRAMES)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.min_valid_fraction = _fraction("min_valid_fraction", min_valid_fraction)
        # Most source pixels one input read may touch (None: no limit); inputs/raster.py says why.
        self.max_read_pixels = None if max_read_pixels is None else _positive_int("max_read_pixels",
                                                                                   max_read_pixels)
        self._context: dict[int, tuple[int, int, int]] = {}  # id(LoadedModel) -> context sizes
        self.preprocess = ImagePreprocessor.from_checkpoint(model.path)
        self._features = _LRU(cache_size)   # chip hash -> (P, D) features of self.model
        self._clues = _LRU(cache_size * 4)  # (kind, chip hashes) -> clue text
        # Greedy decoding is deterministic: (kind, chip hashes, message, max tokens) -> answer text.
        self._answers = _LRU(cache_size * 4)
        # Window reads of unchanged files: (kind, file stamps, region) -> chips. Few: a chip is up to
        # 2 x 1024^2 x bands bytes.
        self._reads = _LRU(READ_CACHE_SIZE)
        # Requests per generate call: as many of the heaviest kind (a sequence) as the free memory holds.
        self.batch_size = _positive_int("batch_size", batch_size) if batch_size is not None else \
            sizing.default_batch_size(sizing.free_memory(torch.device(model.device)), self._request_bytes())
        self.warning = sizing.cpu_warning(model.model_id, model.checkpoint.total_parameters,
                                          str(model.dtype).removeprefix("torch.")) \
            if torch.device(model.device).type == "cpu" else None

    @classmethod
    def load(cls, model_dir: str | Path | None = None, *, device: str | None = None,
             dtype: str | None = None, clue_model_dir: str | Path | None = None,
             num_frames: int | None = None, max_new_tokens: int = 64,
             min_valid_fraction: float = MIN_VALID_FRACTION,
             max_read_pixels: int | None = MAX_READ_PIXELS, batch_size: int | None = None) -> "Engine":
        # Parameters first: a typo must not cost a model load.
        if num_frames is not None:
            _positive_int("num_frames", num_frames, MIN_FRAMES)
        if batch_size is not None:
            _positive_int("batch_size", batch_size)
        _positive_int("max_new_tokens", max_new_tokens)
        _fraction("min_valid_fraction", min_valid_fraction)
        model = load_checkpoint(model_dir or default_model_dir(), device=device, dtype=dtype)
        clue = load_checkpoint(clue_model_dir, device=device, dtype=dtype) if clue_model_dir else None
        engine = cls(model, clue_model=clue, num_frames=num_frames, max_new_tokens=max_new_tokens,
                     min_valid_fraction=min_valid_fraction, max_read_pixels=max_read_pixels,
                     batch_size=batch_size)
        if engine.warning:
            log.warning(engine.warning)
        return engine

    # ---- public API -------------------------------------------------------------------------

    def info(self) -> dict:
        m = self.model
        counts = {name: sum(p.numel() for p in part.parameters())
                  for name, part in (("vision_tower", m.model.vision_tower),
                                     ("mm_projector", m.model.mm_projector), ("llm", m.model.llm))}
        device = torch.device(m.device)
        return {
            "model_id": m.model_id,
            "model_dir": str(m.path),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "dtype": str(m.dtype).replace("torch.", ""),
            "has_change_module": m.model.mm_projector.has_change,
            "pair_mode": m.model.pair_mode,
            "change_score": self.change_score,
            "change_scores": self.change_scores_available,
            "num_frames": self.num_frames,
            "context_tokens": self._context_sizes(m)[0],
            "visual_tokens_per_slot": self._context_sizes(m)[1],
            "min_valid_fraction": self.min_valid_fraction,
            "max_read_pixels": self.max_read_pixels,
            "batch_size": self.batch_size,
            "warning": self.warning,
            "clue_model_id": self.clue_model.model_id if self.clue_model else None,
            "parameters": counts,
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        }

    def ask(self, image, question: str, *, bounds=None, bounds_crs=None, bands=None,
            clue: bool = False, short_answer: bool = True, max_new_tokens: int | None = None,
            is_cancelled: Callable[[], bool] | None = None) -> Result:
        req = Request(InputKind.IMAGE, [image], prompts.question_instruction(question, short_answer),
                      clue=clue, bounds=bounds, bounds_crs=bounds_crs, bands=bands)
        return self.run_batch([req], max_new_tokens=max_new_tokens, is_cancelled=is_cancelled)[0]

    def describe_change(self, before, after, instruction: str | None = None, *, bounds=None,
                        bounds_crs=None, bands=None, clue: bool = False, pair_mode: str | None = None,
                        max_new_tokens: int | None = None,
                        is_cancelled: Callable[[], bool] | None = None) -> Result:
        req = Request(InputKind.PAIR, [before, after],
                      instruction or prompts.CHANGE_DESCRIBE_INSTRUCTION, clue=clue, bounds=bounds,
                      bounds_crs=bounds_crs, bands=bands, pair_mode=pair_mode)
        return self.run_batch([req], max_new_tokens=max_new_tokens, is_cancelled=is_cancelled)[0]

    def classify_sequence(self, frames, classes: Sequence[str] | None = None, *, clue: bool = False,
                          max_new_tokens: int | None = None,
                          is_cancelled: Callable[[], bool] | None = None) -> Result:
        classes = tuple(classes or prompts.ERA_CLASSES)
        inputs = [frames] if isinstance(frames, (str, Path)) else list(frames)
        req = Request(InputKind.SEQUENCE, inputs, prompts.classify_instruction(classes), clue=clue,
                      classes=classes)
        return self.run_batch([req], max_new_tokens=max_new_tokens, is_cancelled=is_cancelled)[0]

    def run_batch(self, requests: Sequence[Request], *, batch_size: int | None = None,
                  max_new_tokens: int | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  is_cancelled: Callable[[], bool] | None = None) -> list[Result]:
        """Answer many requests, `batch_size` (default: the engine's) per generate call; same answers
        as one by one.

        Every prompt is checked against the model's context before any input is read.
        `is_cancelled` is polled between batches and at every generated token; raises Cancelled."""
        batch_size = self.batch_size if batch_size is None else _positive_int("batch_size", batch_size)
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else \
            _positive_int("max_new_tokens", max_new_tokens)
        for req in requests:
            self._check_pair_mode(req)
            self._check_prompt_fits(req, self._min_slots(req), max_new_tokens)
        results: list[Result] = []
        for start in range(0, len(requests), batch_size):
            self._check(is_cancelled)
            with self._memory_errors(min(batch_size, len(requests) - start)):
                chunk = [self._prepare(r) for r in requests[start:start + batch_size]]
                results.extend(self._answer(chunk, max_new_tokens, is_cancelled))
            if progress:
                progress(len(results), len(requests))
        return results

    def reserve_cache(self, chips: int) -> None:
        """Keep the features of at least `chips` chips (a batch scored, then described)."""
        self._features.capacity = max(self._features.capacity, chips)

    def clear_cache(self) -> None:
        """Forget cached vision features, clues and answers (e.g. to time a cold request)."""
        self._features.clear()
        self._clues.clear()
        self._answers.clear()
        self._reads.clear()

    @property
    def change_threshold(self) -> float:
        """The threshold of this model's default change score for reviews (thresholds.py: the user's,
        the checkpoint's, else the default)."""
        return self.change_threshold_with_source()[0]

    def change_threshold_with_source(self, score: str | None = None) -> tuple[float, str]:
        """(threshold, where it comes from) of `score` (default: the model's)."""
        score = self.resolve_score(score)
        return model_threshold(self.model.model_id, self.threshold_config_file(score), score)

    @property
    def change_score(self) -> str:
        """The change score this model gives by default: the first of change_scores_available."""
        return self.change_scores_available[0]

    @property
    def change_scores_available(self) -> list[str]:
        """The change scores this model can give, best first (checkpoint_info's rule): its change-score
        head's (change_score/), its CEM's cosine (a UniRS checkpoint), its vision tower's cosine (any)."""
        return self.model.checkpoint.change_scores

    def threshold_config_file(self, score: str | None = None) -> Path:
        """The config file that keeps the threshold calibrated for `score` (review/schema.py's
        THRESHOLD_KEYS; `unirs calibrate-threshold` writes it)."""
        return self.model.path / THRESHOLD_KEYS[self.resolve_score(score)][0]

    def resolve_score(self, score: str | None) -> str:
        """`score`, or the model's default for None; InvalidRequest for one this model cannot give."""
        if score is None:
            return self.change_score
        if score not in self.change_scores_available:
            why = "not a change score" if score not in SCORES else "not given by this model"
            raise InvalidRequest(f"change score {score!r} is {why}; {self.model.model_id} gives "
                                 f"{', '.join(self.change_scores_available)}")
        return score

    def change_features(self, pairs: Sequence[tuple[Chip, Chip]], *, gain_matched: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, D) before and after vision features of aligned pairs, in one batched vision pass;
        `gain_matched`: of the after chip with its colour balance matched to the before chip (what
        the change-score head reads; cached as a chip of its own)."""
        afters = [match_gain(b, a) if gain_matched else a for b, a in pairs]
        feats = self.encode([chip for (before, _), after in zip(pairs, afters) for chip in (before, after)])
        return feats[0::2], feats[1::2]                                    # (B, P, D) each

    def change_scores(self, pairs: Sequence[tuple[Chip, Chip]], score: str | None = None) -> list[float]:
        """Cheap change scores of aligned pairs (no text), higher = more likely changed, by `score`
        (review/schema.py; default: the model's). The features stay cached for a following describe."""
        score = self.resolve_score(score)
        with self._memory_errors(len(pairs)):
            before, after = self.change_features(pairs, gain_matched=score == HEAD_SCORE)   # (B, P, D) each
        with torch.inference_mode():
            if score == HEAD_SCORE:
                scores = self.model.change_head(before, after)                          # (B,)
            elif score == COSINE_SCORE:
                scores = self.model.model.mm_projector.layers["change"].change_score(before, after)  # (B,)
            else:
                scores = feature_change_score(before, after)                            # (B,)
        return [float(s) for s in scores]

    # ---- memory -------------------------------------------------------------------------------

    def _request_bytes(self) -> int:
        """Memory one request of the heaviest kind needs beyond the weights (checkpoint_info's rule): a
        sequence of num_frames slots, its text and its answer."""
        _, per_slot, _ = self._context_sizes(self.model)
        tokens = self.num_frames * per_slot + sizing.PLANNED_TEXT_TOKENS + self.max_new_tokens
        need = request_memory(self.model.checkpoint, str(self.model.dtype), tokens)
        return sum(need.values())

    @contextmanager
    def _memory_errors(self, n_requests: int):
        """Turn an allocation failure into OutOfMemory with the figures and the ways out."""
        try:
            yield
        except Exception as exc:
            if not sizing.is_out_of_memory(exc):
                raise
            device = torch.device(self.model.device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            weights = sum(p.numel() * p.element_size() for p in self.model.model.parameters())
            dtype = str(self.model.dtype).removeprefix("torch.")
            ways = [f"a smaller batch size (now {n_requests})" if n_requests > 1 else None,
                    "dtype bfloat16" if self.model.dtype == torch.float32 else None,
                    "device cpu" if device.type == "cuda" else "closing other programs"]
            raise OutOfMemory(
                f"out of memory on {device} answering {n_requests} request(s) at once: the model's weights "
                f"take {weights / 2**30:.1f} GiB in {dtype}, {sizing.free_memory(device) / 2**30:.1f} GiB "
                f"are free now; try {', or '.join(w for w in ways if w)}") from None

    # ---- steps --------------------------------------------------------------------------------

    def read(self, req: Request) -> list[Chip]:
        """The request's chips (stages.read_inputs); an image or pair read again from unchanged files
        comes from memory. InputError names the file and why."""
        key = _read_key(req) if req.kind in (InputKind.IMAGE, InputKind.PAIR) else None
        chips = self._reads.get(key) if key else None
        if chips is None:
            try:
                chips = read_inputs(req.kind, req.inputs, num_frames=self.num_frames, bounds=req.bounds,
                                    bounds_crs=req.bounds_crs, bands=req.bands,
                                    max_read_pixels=self.max_read_pixels)
            except (OSError, ValueError) as exc:  # the readers' messages name the file
                raise InputError(" ".join(str(exc).split())) from exc
            if key:
                self._reads.put(key, chips)
        return chips

    @staticmethod
    def _check(is_cancelled: Callable[[], bool] | None) -> None:
        if is_cancelled and is_cancelled():
            raise Cancelled("cancelled by the caller")

    def encode(self, chips: list[Chip], loaded: LoadedModel | None = None,
               keys: Sequence[str] | None = None) -> torch.Tensor:
        """Vision features of chips, (N, P, D) (stages.encode); the main model's are cached per chip
        content (`keys`: the chips' content keys when known)."""
        loaded = loaded or self.model
        if loaded is not self.model:
            return encode(loaded, chips)
        keys = keys or [_chip_key(c) for c in chips]
        missing = [i for i, k in enumerate(keys) if self._features.get(k) is None]
        if missing:
            feats = encode(loaded, [chips[i] for i in missing], self.preprocess)  # (M, P, D)
            for i, f in zip(missing, feats):
                self._features.put(keys[i], f)
        return torch.stack([self._features.get(k) for k in keys])          # (N, P, D)

    def _prepare(self, req: Request) -> _Prepared:
        t0 = time.perf_counter()
        chips = self.read(req)
        t1 = time.perf_counter()
        valid_fraction = self._check_valid_fraction(req, chips)
        keys = tuple(_chip_key(c) for c in chips)
        features = self.encode(chips, keys=keys)
        t2 = time.perf_counter()
        return _Prepared(req, chips, keys, features, valid_fraction, self._pair_mode(req),
                         {"read_s": t1 - t0, "encode_s": t2 - t1})

    def _pair_mode(self, req: Request) -> str | None:
        """How a pair request goes in: as asked, else the model's way; None for other kinds."""
        if req.kind is not InputKind.PAIR:
            return None
        return req.pair_mode or self.model.model.pair_mode

    def _check_pair_mode(self, req: Request) -> None:
        """InvalidRequest for a pair mode that is unknown or that this model cannot do."""
        if req.pair_mode is None:
            return
        if req.pair_mode not in PAIR_MODES:
            raise InvalidRequest(f"pair_mode must be one of {', '.join(PAIR_MODES)}, got {req.pair_mode!r}")
        if req.kind is not InputKind.PAIR:
            raise InvalidRequest(f"pair_mode is for pair requests, not {req.kind.value} requests")
        if req.pair_mode == CEM_PAIR and not self.model.model.mm_projector.has_change:
            raise InvalidRequest(f"{self.model.model_id} has no Change Extraction module: pair_mode "
                                 f"{CEM_PAIR!r} needs a UniRS checkpoint ({TWO_IMAGE_PAIR!r} works with any)")

    def _check_valid_fraction(self, req: Request, chips: list[Chip]) -> float:
        """The request's valid fraction; NotEnoughData below its minimum."""
        minimum = self.min_valid_fraction if req.min_valid_fraction is None else \
            _fraction("min_valid_fraction", req.min_valid_fraction)
        fraction, of = _valid_fraction(req, chips)
        if fraction < minimum:
            raise NotEnoughData(f"only {_percent(fraction)} of the pixels of {of} have data "
                                f"(minimum {_percent(minimum)})")
        return fraction

    # ---- prompt length ------------------------------------------------------------------------

    def _context_sizes(self, loaded: LoadedModel) -> tuple[int, int, int]:
        """(tokens the LLM reads at most, tokens per <image> slot, characters of the longest
        vocabulary piece) of a loaded model, measured once."""
        sizes = self._context.get(id(loaded))
        if sizes is None:
            model, tok = loaded.model, loaded.tokenizer
            limits = [int(model.llm.config.max_position_embeddings)]
            if 0 < (tok.model_max_length or 0) < 10 ** 9:   # transformers' "unset" is a huge number
                limits.append(int(tok.model_max_length))
            tower = model.vision_tower
            probe = torch.zeros(1, tower.grid ** 2, tower.hidden_size, device=loaded.device,
                                dtype=loaded.dtype)                                # (1, P, D)
            with torch.inference_mode():   # the projector's token count, not a copy of its formula
                per_slot = model.visual_slots(probe, InputKind.IMAGE).shape[1]   # (1, T, H) -> T
            longest = max(len(piece) for piece in tok.get_vocab())
            sizes = (min(limits), int(per_slot), longest)
            self._context[id(loaded)] = sizes
        return sizes

    def _check_prompt_fits(self, req: Request, slots: int, max_new_tokens: int,
                           clue: str | None = None) -> None:
        """PromptTooLong unless the prompt (template, `slots` image slots, instruction, clue) plus
        `max_new_tokens` fits the LLM's context."""
        context, per_slot, longest = self._context_sizes(self.model)
        room = context - max_new_tokens
        if room <= 0:
            raise InvalidRequest(f"max_new_tokens {max_new_tokens:,} leaves no room for the prompt: "
                                 f"this model reads at most {context:,} tokens")
        what = _INSTRUCTION_NAMES[req.kind] + (" with its clue" if clue else "")
        limit = f"this model reads at most {context:,} (with {max_new_tokens:,} kept for the answer)"
        # A piece covers at most `longest` characters: more characters than that many pieces fill
        # the context cannot fit, and are refused without tokenising megabytes.
        chars = len(req.instruction) + len(clue or "")
        if chars > room * longest:
            raise PromptTooLong(f"the {what} is {chars:,} characters, at least "
                                f"{math.ceil(chars / longest):,} tokens; {limit}")
        message = self._message(req, slots, clue)
        ids = prompts.encode(self.model.tokenizer, message)[0]
        n_slots = ids.count(prompts.IMAGE_TOKEN_INDEX)
        tokens = len(ids) - n_slots + n_slots * per_slot
        if tokens > room:
            raise PromptTooLong(f"the {what} makes a prompt of {tokens:,} tokens (template and "
                                f"{n_slots} image slot(s) of {per_slot} included); {limit}")

    def _min_slots(self, req: Request) -> int:
        """<image> slots the request will have at least, known before reading: one for an image, one
        or two for a pair, one per frame of a stack, MIN_FRAMES for a video (not counted yet)."""
        if req.kind is not InputKind.SEQUENCE:
            return image_slots(req.kind, 1, self._pair_mode(req))
        return max(MIN_FRAMES, min(len(req.inputs), self.num_frames))

    def _clue(self, prep: _Prepared, is_cancelled: Callable[[], bool] | None) -> str | None:
        """The base VLM's clue for this input (Table II prompt), cached per input."""
        req = prep.request
        if not req.clue:
            return None
        if self.clue_model is None:
            raise EngineError("a clue was requested but no clue model is loaded (--clue-model DIR)")
        key = (req.kind.value, prep.keys)
        cached = self._clues.get(key)
        if cached is not None:
            return cached
        item = clue_item(req.kind, self.encode(prep.chips, self.clue_model))
        clue = self._generate(self.clue_model, [item], self.max_new_tokens, is_cancelled)[0]
        self._clues.put(key, clue)
        return clue

    @staticmethod
    def _user_message(prep: _Prepared, clue: str | None) -> str:
        return Engine._message(prep.request, prep.n_slots, clue)

    @staticmethod
    def _message(req: Request, n: int, clue: str | None) -> str:
        """The user message of `req` with `n` <image> slots."""
        if not req.raw_instruction:
            return prompts.user_message(req.kind, req.instruction, n, clue=clue)
        # Raw: the caller wrote the text; add the <image> markers it lacks.
        if prompts.IMAGE_TOKEN in req.instruction:
            return req.instruction
        return f"{prompts.IMAGE_TOKEN}\n" * n + req.instruction

    @staticmethod
    def _generate(loaded: LoadedModel, items: list[GenerateItem], max_new_tokens: int,
                  is_cancelled: Callable[[], bool] | None = None) -> list[str]:
        """stages.generate, then Cancelled if the caller cancelled: a cut-short answer is never returned."""
        answers = generate(loaded, items, max_new_tokens, is_cancelled)
        Engine._check(is_cancelled)
        return answers

    def _answer(self, batch: list[_Prepared], max_new_tokens: int,
                is_cancelled: Callable[[], bool] | None = None) -> list[Result]:
        clues = [self._clue(p, is_cancelled) for p in batch]
        for prep, clue in zip(batch, clues):   # exactly now: the frames are counted, the clue written
            self._check_prompt_fits(prep.request, prep.n_slots, max_new_tokens, clue)
        messages = [self._user_message(p, c) for p, c in zip(batch, clues)]
        keys = [(p.request.kind.value, p.pair_mode, p.keys, m, max_new_tokens) for p, m in zip(batch, messages)]
        todo = [i for i, k in enumerate(keys) if self._answers.get(k) is None]
        t0 = time.perf_counter()
        if todo:
            fresh = self._generate(
                self.model, [GenerateItem(batch[i].request.kind, batch[i].features, messages[i], batch[i].pair_mode)
                             for i in todo], max_new_tokens, is_cancelled)
            for i, answer in zip(todo, fresh):
                self._answers.put(keys[i], answer)
        gen_s = time.perf_counter() - t0
        answers = [self._answers.get(k) for k in keys]
        results = []
        for i, (prep, answer, clue, msg) in enumerate(zip(batch, answers, clues, messages)):
            req = prep.request
            timings = dict(prep.timings, generate_s=gen_s if i in todo else 0.0)
            timings["total_s"] = timings["read_s"] + timings["encode_s"] + gen_s
            results.append(Result(
                task=req.task, answer=answer, prompt=prompts.conversation(msg), clue=clue,
                model_id=self.model.model_id, device=str(self.model.device), timings=timings,
                answer_cached=i not in todo, batch_size=len(todo) if i in todo else 0,
                georef=[c.georef for c in prep.chips if c.georef is not None],
                extra=self._extra(prep, answer)))
        return results

    def _extra(self, prep: _Prepared, answer: str) -> dict:
        req = prep.request
        extra = {"valid_fraction": prep.valid_fraction}
        if req.kind is InputKind.PAIR:   # the review's score, so that both surfaces give one number
            extra.update(changed=not prompts.says_no_change(answer), pair_mode=prep.pair_mode,
                         change_score=self.change_scores([(prep.chips[0], prep.chips[1])])[0],
                         change_score_kind=self.change_score)
        elif req.kind is InputKind.SEQUENCE:
            classes = tuple(req.classes or ())
            extra.update(label=prompts.match_class(answer, classes) if classes else None,
                         classes=list(classes),
                         frames=[c.georef.source if c.georef else None for c in prep.chips])
        return extra
