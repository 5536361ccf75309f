"""Inference API: ask about an image, describe change in a pair, classify a sequence.

Every request goes the same way: read chips (georeferenced) -> vision features (cached per chip)
-> optional clue from the base VLM (cached per input) -> prompt -> batched greedy generation (answers
cached per chips + prompt: greedy decoding is deterministic, so a repeated question costs a read).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from . import prompts
from .inputs.pair import read_pair
from .inputs.preprocess import ImagePreprocessor
from .inputs.raster import read_chip
from .inputs.video import read_frame_stack, read_video_frames
from .model.checkpoint import LoadedModel, load_checkpoint
from .types import Chip, InputKind, Result

TASK_NAMES = {InputKind.IMAGE: "ask", InputKind.PAIR: "change", InputKind.SEQUENCE: "classify"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v"}
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"


class EngineError(RuntimeError):
    """A request the engine cannot answer; the message says which input and why."""


class Cancelled(EngineError):
    """The caller asked to stop; results computed so far are discarded."""


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
    timings: dict[str, float] = field(default_factory=dict)


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

    def get(self, key):
        if key not in self:
            return None
        self.move_to_end(key)
        return self[key]

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


def _n_slots(kind: InputKind, features: torch.Tensor) -> int:
    """<image> slots in the prompt: one for an image or a pair, one per frame for a sequence."""
    return features.shape[0] if kind is InputKind.SEQUENCE else 1


class _StopWhenCancelled(StoppingCriteria):
    """Ends generate() at the next token once the caller cancels (a long caption must not block)."""

    def __init__(self, is_cancelled: Callable[[], bool]):
        self.is_cancelled = is_cancelled

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.is_cancelled(), dtype=torch.bool,
                          device=input_ids.device)


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
                 num_frames: int | None = None, max_new_tokens: int = 64, cache_size: int = 64):
        self.model = model
        self.clue_model = clue_model
        self.num_frames = num_frames or int(model.model.config.get("num_video_frames", 8))
        self.max_new_tokens = max_new_tokens
        self.preprocess = ImagePreprocessor.from_checkpoint(model.path)
        self._features = _LRU(cache_size)   # chip hash -> (P, D) features of self.model
        self._clues = _LRU(cache_size * 4)  # (kind, chip hashes) -> clue text
        # Greedy decoding is deterministic: (kind, chip hashes, message, max tokens) -> answer text.
        self._answers = _LRU(cache_size * 4)
        # Window reads of unchanged files: (kind, file stamps, region) -> chips. Few: a chip is up to
        # 2 x 1024^2 x bands bytes.
        self._reads = _LRU(READ_CACHE_SIZE)

    @classmethod
    def load(cls, model_dir: str | Path | None = None, *, device: str | None = None,
             dtype: str | None = None, clue_model_dir: str | Path | None = None,
             num_frames: int | None = None, max_new_tokens: int = 64) -> "Engine":
        model = load_checkpoint(model_dir or default_model_dir(), device=device, dtype=dtype)
        clue = load_checkpoint(clue_model_dir, device=device, dtype=dtype) if clue_model_dir else None
        return cls(model, clue_model=clue, num_frames=num_frames, max_new_tokens=max_new_tokens)

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
            "num_frames": self.num_frames,
            "clue_model_id": self.clue_model.model_id if self.clue_model else None,
            "parameters": counts,
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        }

    def ask(self, image, question: str, *, bounds=None, bounds_crs=None, bands=None,
            clue: bool = False, max_new_tokens: int | None = None,
            is_cancelled: Callable[[], bool] | None = None) -> Result:
        req = Request(InputKind.IMAGE, [image], question, clue=clue, bounds=bounds,
                      bounds_crs=bounds_crs, bands=bands)
        return self.run_batch([req], max_new_tokens=max_new_tokens, is_cancelled=is_cancelled)[0]

    def describe_change(self, before, after, instruction: str | None = None, *, bounds=None,
                        bounds_crs=None, bands=None, clue: bool = False,
                        max_new_tokens: int | None = None,
                        is_cancelled: Callable[[], bool] | None = None) -> Result:
        req = Request(InputKind.PAIR, [before, after],
                      instruction or prompts.CHANGE_DESCRIBE_INSTRUCTION, clue=clue, bounds=bounds,
                      bounds_crs=bounds_crs, bands=bands)
        return self.run_batch([req], max_new_tokens=max_new_tokens, is_cancelled=is_cancelled)[0]

    def classify_sequence(self, frames, classes: Sequence[str] | None = None, *, clue: bool = False,
                          max_new_tokens: int | None = None,
                          is_cancelled: Callable[[], bool] | None = None) -> Result:
        classes = tuple(classes or prompts.ERA_CLASSES)
        inputs = [frames] if isinstance(frames, (str, Path)) else list(frames)
        req = Request(InputKind.SEQUENCE, inputs, prompts.classify_instruction(classes), clue=clue,
                      classes=classes)
        return self.run_batch([req], max_new_tokens=max_new_tokens, is_cancelled=is_cancelled)[0]

    def run_batch(self, requests: Sequence[Request], *, batch_size: int = 8,
                  max_new_tokens: int | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  is_cancelled: Callable[[], bool] | None = None) -> list[Result]:
        """Answer many requests, `batch_size` per generate call; same answers as one by one.

        `is_cancelled` is polled between batches and at every generated token; raises Cancelled."""
        results: list[Result] = []
        for start in range(0, len(requests), batch_size):
            self._check(is_cancelled)
            chunk = [self._prepare(r) for r in requests[start:start + batch_size]]
            results.extend(self._answer(chunk, max_new_tokens or self.max_new_tokens, is_cancelled))
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
        """The change-score threshold for this model's reviews (review/calibrate.py: the user's, the
        checkpoint's, else the default)."""
        return self.change_threshold_with_source[0]

    @property
    def change_threshold_with_source(self) -> tuple[float, str]:
        from .review.calibrate import model_threshold

        return model_threshold(self.model.model_id, self.model.model.config)

    def change_scores(self, pairs: Sequence[tuple[Chip, Chip]]) -> list[float]:
        """Cheap change scores of aligned pairs from the Change Extraction module (no text), in one
        batched vision pass; the features stay cached for a following describe request."""
        if not self.model.model.mm_projector.has_change:
            raise EngineError(f"{self.model.model_id} has no Change Extraction module: change scores "
                              "need a UniRS checkpoint")
        feats = self._encode([chip for pair in pairs for chip in pair])   # (2B, P, D)
        with torch.inference_mode():
            scores = self._score(feats[0::2], feats[1::2])                 # (B,)
        return [float(s) for s in scores]

    # ---- steps --------------------------------------------------------------------------------

    def _read(self, req: Request) -> list[Chip]:
        """The request's chips; an image or pair read again from unchanged files comes from memory."""
        key = _read_key(req) if req.kind in (InputKind.IMAGE, InputKind.PAIR) else None
        chips = self._reads.get(key) if key else None
        if chips is None:
            chips = self._read_files(req)
            if key:
                self._reads.put(key, chips)
        return chips

    def _read_files(self, req: Request) -> list[Chip]:
        kw = dict(bounds=req.bounds, bounds_crs=req.bounds_crs, bands=req.bands)
        try:
            if req.kind is InputKind.IMAGE:
                self._expect(req, 1)
                return [self._chip(req.inputs[0], **kw)]
            if req.kind is InputKind.PAIR:
                self._expect(req, 2)
                before, after = req.inputs
                if isinstance(before, Chip) and isinstance(after, Chip):
                    return [before, after]
                return list(read_pair(str(before), str(after), **kw))
            if req.kind is InputKind.SEQUENCE:
                if not req.inputs:
                    raise EngineError("a sequence request needs a video or at least one frame")
                first = req.inputs[0]
                if len(req.inputs) == 1 and isinstance(first, (str, Path)) \
                        and Path(first).suffix.lower() in VIDEO_SUFFIXES:
                    return read_video_frames(str(first), n=self.num_frames)
                if all(isinstance(f, Chip) for f in req.inputs):
                    return list(req.inputs)[: self.num_frames]
                return read_frame_stack([str(f) for f in req.inputs], n=self.num_frames, **kw)
        except EngineError:
            raise
        except (OSError, ValueError) as exc:  # rasterio/PyAV errors carry the file name
            raise EngineError(str(exc)) from exc
        raise EngineError(f"unknown input kind {req.kind!r}")

    @staticmethod
    def _expect(req: Request, n: int) -> None:
        if len(req.inputs) != n:
            raise EngineError(f"a {req.kind.value} request needs {n} input(s), got {len(req.inputs)}")

    @staticmethod
    def _chip(src, **kw) -> Chip:
        return src if isinstance(src, Chip) else read_chip(str(src), **kw)

    @staticmethod
    def _check(is_cancelled: Callable[[], bool] | None) -> None:
        if is_cancelled and is_cancelled():
            raise Cancelled("cancelled by the caller")

    def _score(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(B, P, D) before/after features -> (B,) 1 - mean cosine similarity in the CEM's space."""
        return self.model.model.mm_projector.layers["change"].change_score(before, after)

    def _encode(self, chips: list[Chip], loaded: LoadedModel | None = None,
                keys: Sequence[str] | None = None) -> torch.Tensor:
        """Vision features of chips, (N, P, D); the main model's are cached per chip content."""
        loaded = loaded or self.model
        if loaded is not self.model:
            return self._encode_uncached(chips, loaded)
        keys = keys or [_chip_key(c) for c in chips]
        missing = [i for i, k in enumerate(keys) if self._features.get(k) is None]
        if missing:
            feats = self._encode_uncached([chips[i] for i in missing], loaded)  # (M, P, D)
            for i, f in zip(missing, feats):
                self._features.put(keys[i], f)
        return torch.stack([self._features.get(k) for k in keys])          # (N, P, D)

    def _encode_uncached(self, chips: list[Chip], loaded: LoadedModel) -> torch.Tensor:
        pre = self.preprocess if loaded is self.model else ImagePreprocessor.from_checkpoint(loaded.path)
        pixels = pre(chips).to(loaded.device, loaded.dtype)                 # (N, 3, S, S)
        with torch.inference_mode():
            return loaded.model.encode_images(pixels)                       # (N, P, D)

    def _prepare(self, req: Request) -> _Prepared:
        t0 = time.perf_counter()
        chips = self._read(req)
        t1 = time.perf_counter()
        if req.kind is InputKind.PAIR and not self.model.model.mm_projector.has_change:
            raise EngineError(f"{self.model.model_id} has no Change Extraction module (a VILA-1.5 "
                              "checkpoint?): pair requests need a UniRS checkpoint")
        keys = tuple(_chip_key(c) for c in chips)
        features = self._encode(chips, keys=keys)
        t2 = time.perf_counter()
        return _Prepared(req, chips, keys, features, {"read_s": t1 - t0, "encode_s": t2 - t1})

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
        # The base VLM sees a pair as two images in two slots (VILA's native multi-image input).
        kind = InputKind.SEQUENCE if req.kind is InputKind.PAIR else req.kind
        feats = self._encode(prep.chips, self.clue_model)
        msg = prompts.user_message(kind, prompts.CLUE_PROMPTS[req.kind], _n_slots(kind, feats),
                                   task_tag=False)
        clue = self._generate(self.clue_model, [(kind, feats, msg)], self.max_new_tokens,
                              is_cancelled)[0]
        self._clues.put(key, clue)
        return clue

    @staticmethod
    def _user_message(prep: _Prepared, clue: str | None) -> str:
        req = prep.request
        n = _n_slots(req.kind, prep.features)
        if not req.raw_instruction:
            return prompts.user_message(req.kind, req.instruction, n, clue=clue)
        # Raw: the caller wrote the text; add the <image> markers it lacks.
        if prompts.IMAGE_TOKEN in req.instruction:
            return req.instruction
        return f"{prompts.IMAGE_TOKEN}\n" * n + req.instruction

    @staticmethod
    def _generate(loaded: LoadedModel, items: list[tuple[InputKind, torch.Tensor, str]],
                  max_new_tokens: int, is_cancelled: Callable[[], bool] | None = None) -> list[str]:
        """Greedy answers for (kind, features (N, P, D), user message) items in one generate call."""
        model, tok = loaded.model, loaded.tokenizer
        stop = StoppingCriteriaList([_StopWhenCancelled(is_cancelled)]) if is_cancelled else None
        with torch.inference_mode():
            slots = [model.visual_slots(feats, kind) for kind, feats, _ in items]  # (n_slots, T, H)
            ids = [prompts.encode(tok, msg)[0] for _, _, msg in items]
            out = model.generate(ids, slots, max_new_tokens=max_new_tokens, stopping_criteria=stop)
        Engine._check(is_cancelled)  # a cut-short answer is never returned as if complete
        return [tok.decode(o, skip_special_tokens=True).strip() for o in out]

    def _answer(self, batch: list[_Prepared], max_new_tokens: int,
                is_cancelled: Callable[[], bool] | None = None) -> list[Result]:
        clues = [self._clue(p, is_cancelled) for p in batch]
        messages = [self._user_message(p, c) for p, c in zip(batch, clues)]
        keys = [(p.request.kind.value, p.keys, m, max_new_tokens) for p, m in zip(batch, messages)]
        todo = [i for i, k in enumerate(keys) if self._answers.get(k) is None]
        t0 = time.perf_counter()
        if todo:
            fresh = self._generate(
                self.model, [(batch[i].request.kind, batch[i].features, messages[i]) for i in todo],
                max_new_tokens, is_cancelled)
            for i, answer in zip(todo, fresh):
                self._answers.put(keys[i], answer)
        gen_s = time.perf_counter() - t0
        answers = [self._answers.get(k) for k in keys]
        results = []
        for i, (prep, answer, clue, msg) in enumerate(zip(batch, answers, clues, messages)):
            req = prep.request
            timings = dict(prep.timings, generate_s=gen_s if i in todo else 0.0, batch_size=len(todo),
                           answer_cached=i not in todo)
            timings["total_s"] = timings["read_s"] + timings["encode_s"] + gen_s
            results.append(Result(
                task=req.task, answer=answer, prompt=prompts.conversation(msg), clue=clue,
                model_id=self.model.model_id, device=str(self.model.device), timings=timings,
                georef=[c.georef for c in prep.chips if c.georef is not None],
                extra=self._extra(prep, answer)))
        return results

    def _extra(self, prep: _Prepared, answer: str) -> dict:
        req = prep.request
        if req.kind is InputKind.PAIR:
            with torch.inference_mode():
                score = self._score(prep.features[:1], prep.features[1:])   # (1,)
            return {"changed": not prompts.says_no_change(answer), "change_score": float(score[0])}
        if req.kind is InputKind.SEQUENCE:
            classes = tuple(req.classes or ())
            return {"label": prompts.match_class(answer, classes) if classes else None,
                    "classes": list(classes),
                    "frames": [c.georef.source if c.georef else None for c in prep.chips]}
        return {}
