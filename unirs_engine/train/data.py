"""Training data: Samples -> (kind, pixel_values, input_ids, labels), mixtures with repeats, collate.

The prompt is built exactly as at inference (prompts.user_message + prompts.encode), so the loss
falls only on the answer. A sample that cannot be read or does not fit is reported (warning +
skip log) and replaced by the next readable one, so every batch keeps its size (needed for DDP).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from .. import prompts
from ..data import load_samples
from ..data.synthetic.object_counts import MAX_COUNT, counts_path, read_counts
from ..errors import UnirsError
from ..inputs.preprocess import ImagePreprocessor
from ..inputs.video import read_frame_stack
from ..stages import read_inputs
from ..types import Chip, InputKind, Sample


class SampleError(UnirsError, ValueError):
    """A sample that cannot be used for training; the message names the record and its file."""


class SkippedSampleWarning(UserWarning):
    """A training sample was skipped (unreadable, or too long to fit)."""


def spliced_length(ids: list[int], tokens_per_slot: int) -> int:
    """The LLM positions of token `ids` once every `<image>` placeholder is `tokens_per_slot` long."""
    return len(ids) + ids.count(prompts.IMAGE_TOKEN_INDEX) * (tokens_per_slot - 1)


def read_chips(sample: Sample, num_frames: int) -> list[Chip]:
    """The sample's pictures, read as the engine reads a request (stages.read_inputs): [image],
    [before, after] on one grid, or up to `num_frames` frames."""
    return read_inputs(sample.kind, [sample.video] if sample.video else sample.images, num_frames=num_frames)


def sample_source(sample: Sample) -> str:
    """The file(s) a sample reads, for messages."""
    return sample.video or ", ".join(sample.images)


def sample_label(sample: Sample) -> str:
    """How messages name a sample: its id and the file(s) it reads."""
    return f"sample {sample.sample_id!r} ({sample_source(sample)})"


def load_clues(path: str | Path) -> dict[str, str]:
    """A clue file: JSON lines {"id": sample_id, "clue": text} (written by the base VLM)."""
    clues = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                clues[str(record["id"])] = str(record["clue"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SampleError(f"{path}:{n}: expected {{\"id\": ..., \"clue\": ...}} ({exc})") from exc
    return clues


class SkippingDataset(Dataset):
    """Base for datasets whose `load(i)` may raise SampleError: the item is reported and the next
    index tried instead, so a bad file costs one warning, not the run."""

    def __init__(self, skip_log: Path | None = None) -> None:
        self.skip_log = skip_log

    def load(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                return self.load(i)
            except SampleError as exc:
                self._report(exc)
        raise SampleError(f"{type(self).__name__}: none of the {len(self)} samples could be read")

    def _report(self, exc: SampleError) -> None:
        warnings.warn(f"skipping training sample: {exc}", SkippedSampleWarning, stacklevel=3)
        if self.skip_log is not None:
            with open(self.skip_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"error": str(exc)}) + "\n")


class InstructionDataset(SkippingDataset):
    """Items {kind, sample_id, pixel_values (N,3,S,S), input_ids, labels} for the LLM loss; once
    `cached` is set (feature_cache.py), `feature_key` (the input's key) instead of pixel_values;
    with `counts`, also `counts`: a single image's object counts (K,) where the synthetic writer
    left them (data/synthetic/object_counts.py), else None.

    `tokens_per_slot` (T) is what one `<image>` becomes after splicing, so `max_length` counts the
    real sequence length; only answer tokens are ever truncated, never a visual slot.
    """

    def __init__(self, samples: Sequence[Sample], tokenizer, preprocessor: ImagePreprocessor, *,
                 tokens_per_slot: int, max_length: int, num_frames: int,
                 clues: dict[str, str] | None = None, task_tag: bool = True,
                 all_references: bool = False, pair_as_frames: bool = False, counts: bool = False,
                 skip_log: Path | None = None) -> None:
        super().__init__(skip_log)
        if not samples:
            raise SampleError("no training samples")
        self.samples = list(samples)
        # (sample, reference) pairs; a sample without references is kept so that it gets reported
        self.items = [(i, j) for i, s in enumerate(self.samples)
                      for j in range(max(1, len(s.references) if all_references else 1))]
        self.tokenizer, self.preprocessor = tokenizer, preprocessor
        self.tokens_per_slot, self.max_length, self.num_frames = tokens_per_slot, max_length, num_frames
        self.clues, self.task_tag, self.pair_as_frames = clues, task_tag, pair_as_frames
        self.counts = counts
        self.cached = None  # feature_cache.CachedInputs, set when the tower's features are cached
        if clues is not None:
            missing = [s.sample_id for s in self.samples if s.sample_id not in clues]
            if missing:
                raise SampleError(f"the clue file has no clue for {len(missing)} of {len(self.samples)} "
                                  f"samples (first: {missing[0]!r})")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict[str, Any]:
        i, j = self.items[index]
        sample = self.samples[i]
        where = sample_label(sample)
        if j >= len(sample.references) or not sample.references[j].strip():
            raise SampleError(f"{where}: no answer to train on")
        if self.cached is None:
            pixels = self.read_pixels(index)                                   # (N, 3, S, S)
            n_pictures, visual = pixels.shape[0], {"pixel_values": pixels}
        else:
            key = self.input_key(index)
            if key in self.cached.unreadable:
                raise SampleError(self.cached.unreadable[key])
            n_pictures, visual = self.cached.frames[key], {"feature_key": key}
        kind = self.modality(index)    # how the slots are built
        n_slots = n_pictures if kind is InputKind.SEQUENCE else 1
        clue = self.clues[sample.sample_id] if self.clues is not None else None
        message = prompts.user_message(sample.kind, sample.instruction, n_slots, clue,
                                       task_tag=self.task_tag)
        ids, labels = prompts.encode(self.tokenizer, message, sample.references[j])
        ids, labels = self._truncate(ids, labels, where)
        item = {"kind": kind, "sample_id": sample.sample_id, **visual, "input_ids": ids, "labels": labels}
        if self.counts:
            item["counts"] = self.object_counts(sample)
        return item

    def any_counts(self) -> bool:
        """Whether any single image of the dataset has object counts."""
        return any(counts_path(s.images[0]).is_file() for s in self.samples if s.kind is InputKind.IMAGE)

    @staticmethod
    def object_counts(sample: Sample) -> torch.Tensor | None:
        """(K,) object counts of a single image, at most MAX_COUNT each; None for other samples
        and images without counts."""
        if sample.kind is not InputKind.IMAGE:
            return None
        try:
            counts = read_counts(sample.images[0])
        except (ValueError, OSError) as exc:
            raise SampleError(f"{sample_label(sample)}: {exc}") from exc
        return None if counts is None else torch.from_numpy(counts).clamp(max=MAX_COUNT)

    def read_pixels(self, index: int) -> torch.Tensor:
        """(N, 3, S, S): the pictures of item `index` as the model takes them; SampleError if unreadable."""
        sample = self.samples[self.items[index][0]]
        # Without the CEM (paper IV-E2) a pair is spliced like a 2-frame video; its dates are read
        # one by one, as the engine reads a sequence request, and keep the change tag and instruction.
        as_frames = self.modality(index) is not sample.kind
        try:
            chips = read_frame_stack(sample.images) if as_frames else read_chips(sample, self.num_frames)
        except (ValueError, OSError) as exc:
            raise SampleError(f"{sample_label(sample)}: {exc}") from exc
        return self.preprocessor(chips)

    def input_key(self, index: int) -> str:
        """Which pictures item `index` reads and how: items of one key have the same tower features."""
        sample = self.samples[self.items[index][0]]
        files = [sample.video] if sample.video else list(sample.images)
        return json.dumps([sample.kind.value, self.modality(index).value, self.num_frames, files])

    def modality(self, index: int) -> InputKind:
        """How item `index` goes into the LLM, known without reading it: a pair is a sequence of
        two frames when `pair_as_frames`, any other sample is of its own kind."""
        kind = self.samples[self.items[index][0]].kind
        return InputKind.SEQUENCE if self.pair_as_frames and kind is InputKind.PAIR else kind

    def _truncate(self, ids: list[int], labels: list[int], where: str) -> tuple[list[int], list[int]]:
        """Cut the tail so that the spliced length fits `max_length`; never cut into a slot."""
        length = spliced_length(ids, self.tokens_per_slot)
        excess = length - self.max_length
        if excess <= 0:
            return ids, labels
        keep = len(ids) - excess
        last_slot = len(ids) - 1 - ids[::-1].index(prompts.IMAGE_TOKEN_INDEX)
        if keep <= last_slot or all(label == prompts.IGNORE_INDEX for label in labels[:keep]):
            raise SampleError(f"{where}: {length} tokens do "
                              f"not fit max_length {self.max_length} with any of the answer left")
        return ids[:keep], labels[:keep]


def instruction_dataset(spec, tokenizer, preprocessor: ImagePreprocessor,
                        **kwargs: Any) -> InstructionDataset:
    """The InstructionDataset of one config.DatasetSpec (unreadable records reported and skipped)."""
    samples = read_spec(spec)
    clues = load_clues(spec.clues) if spec.clues else None
    try:
        return InstructionDataset(samples, tokenizer, preprocessor, clues=clues,
                                  all_references=spec.all_references,
                                  pair_as_frames=spec.pair_as_frames, **kwargs)
    except SampleError as exc:
        raise SampleError(f"{spec.task} data at {spec.root} ({spec.split}): {exc}") from exc


def read_spec(spec) -> list[Sample]:
    """load_samples for a config.DatasetSpec; bad records are reported (warnings) and skipped."""
    try:
        return load_samples(spec.task, spec.root, split=spec.split, on_error="skip", **spec.options)
    except TypeError as exc:  # an option the reader does not take
        raise SampleError(f"{spec.task} data at {spec.root}: bad options {spec.options} ({exc})") from exc


def collate(items: list[dict[str, Any]]) -> dict[str, list]:
    """Lists, not stacks: items hold different numbers of images and tokens."""
    return {key: [item[key] for item in items] for key in items[0]}


def modality_groups(mixture: ConcatDataset) -> list[InputKind]:
    """Each item's InstructionDataset.modality, in the mixture's order (for loop.GroupedSampler)."""
    return [part.modality(i) for part in mixture.datasets for i in range(len(part))]


def build_mixture(specs: Sequence[Any], make_dataset: Callable[[Any], Dataset]) -> ConcatDataset:
    """Each spec's dataset listed `spec.repeat` times (the released recipe's upsampling)."""
    parts = []
    for spec in specs:
        dataset = make_dataset(spec)
        parts += [dataset] * spec.repeat
    return ConcatDataset(parts)
