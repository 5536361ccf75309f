"""Plain data that crosses module boundaries: what was read, what was asked, what came back.

No torch here: the worker protocol and the QGIS client serialise these as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class InputKind(str, Enum):
    """How the visual input is routed through the model (never guessed from a frame count)."""

    IMAGE = "image"        # one image -> projector -> T tokens in one <image> slot (T = 196 at 384 px)
    PAIR = "pair"          # before/after -> (see PAIR_MODES) -> one or two <image> slots
    SEQUENCE = "sequence"  # N frames (video or dated stack) -> N x T tokens in N slots


# How a pair reaches the LLM. CEM_PAIR: the Change Extraction module fuses the dates into one slot
# (UniRS). TWO_IMAGE_PAIR: each date is projected into a slot of its own, in date order (the paper's
# "without CEM" setting; what a checkpoint without the module, e.g. VILA-1.5, does).
CEM_PAIR, TWO_IMAGE_PAIR = "cem", "two-images"
PAIR_MODES = (CEM_PAIR, TWO_IMAGE_PAIR)


def image_slots(kind: InputKind, n_features: int, pair_mode: str = CEM_PAIR) -> int:
    """<image> slots of an input: 1 for an image, 1 or 2 for a pair (by `pair_mode`), 1 per frame."""
    if kind is InputKind.PAIR:
        return 1 if pair_mode == CEM_PAIR else 2
    return n_features if kind is InputKind.SEQUENCE else 1


@dataclass(frozen=True)
class GeoRef:
    """Where a chip came from, so answers can be written back on the map."""

    source: str                               # file path (or "video:<path>#<frame>")
    crs: str | None                           # WKT of the chip's CRS; None when not georeferenced
    bounds: tuple[float, float, float, float] | None  # (left, bottom, right, top) in `crs`
    transform: tuple[float, ...] | None       # affine (a, b, c, d, e, f) of the chip grid
    width: int                                # chip size in pixels as read (before model resize)
    height: int
    bands: tuple[int, ...] = ()               # 1-based band indexes used for R, G, B

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeoRef":
        d = dict(d)
        for key in ("bounds", "transform", "bands"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class Chip:
    """An RGB picture ready for preprocessing, plus its georeference."""

    image: np.ndarray                   # (H, W, 3) uint8 RGB
    georef: GeoRef | None = None
    valid: np.ndarray | None = None     # (H, W) bool, False where nodata/outside; None = all valid

    @property
    def valid_fraction(self) -> float:
        """Fraction of the chip's pixels that hold data (1.0 without a mask)."""
        return 1.0 if self.valid is None else float(self.valid.mean())


def valid_in_all(chips: Sequence[Chip]) -> np.ndarray:
    """(H, W) bool: the pixels that hold data in every chip (chips of one grid, e.g. a pair's dates)."""
    common = np.ones(chips[0].image.shape[:2], bool)                        # (H, W)
    for chip in chips:
        if chip.valid is not None:
            common &= chip.valid
    return common


@dataclass
class Result:
    """One answer from the engine, with everything needed to record it."""

    task: str                           # "ask" | "change" | "classify"
    answer: str
    prompt: str                         # the full text prompt given to the LLM
    clue: str | None
    model_id: str
    device: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds: read_s, encode_s, generate_s, total_s
    answer_cached: bool = False         # the same input and prompt were answered before: no generation
    batch_size: int = 1                 # prompts generated together with this one (0 when cached)
    georef: list[GeoRef] = field(default_factory=list)       # one per input image/frame as read
    extra: dict[str, Any] = field(default_factory=dict)      # task-specific: changed, label, frames…

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["georef"] = [g.to_dict() for g in self.georef]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        d = dict(d)
        d["georef"] = [GeoRef.from_dict(g) for g in d.get("georef", [])]
        return cls(**d)


@dataclass
class Sample:
    """One dataset record, consumed alike by training and evaluation."""

    sample_id: str
    kind: InputKind
    images: list[str]                   # IMAGE: [path]; PAIR: [before, after]; SEQUENCE: frame paths
    instruction: str                    # the task instruction (no task tag, no <image>, no clue)
    references: list[str] = field(default_factory=list)  # ground-truth answers/captions
    video: str | None = None            # SEQUENCE given as a video file instead of frame paths
    meta: dict[str, Any] = field(default_factory=dict)   # question type, changeflag, class, split…

    @property
    def answer(self) -> str | None:
        """Training target: the first reference."""
        return self.references[0] if self.references else None
