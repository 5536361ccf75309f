"""More questions for training, answered from the object counts the benchmark writes.

Comparisons (task "synthetic-comparisons"): the writer asks two per image (one "yes", one "no", of
any form), so "equal" questions answered "yes" are about one in ten, too few for the LLM to learn
to compare two counts. read_comparison_questions asks `per_image` more about every image of a
split of the synthetic RSVQA benchmark, from its counts/<stem>.npy and with the writer's
templates, balanced over the forms "more", "less" and "equal" and their answers. With `max_gap` 1
they compare kinds whose counts differ by at most one where the image has such: the near ties,
which the demo model gets wrong. Asking only those did not help it (recipe G, docs/training.md).

Counts (task "synthetic-counts"): the writer asks one "How many ...?" per image, half of them about
buildings, so the LLM reads the other kinds' numbers less exactly than the vision tower's count head
does, and comparisons need two of them. read_how_many_questions asks `per_image` of them about
every image, the kinds taking turns across images.

Train-split data only: the benchmark's own questions stay what they were, so evaluation is
untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ... import prompts
from ...types import InputKind, Sample
from ..records import DataError, check_on_error, read_json, report, require_file
from ..rsvqa import LAYOUTS
from .object_counts import COUNTED, read_counts
from .questions import COMPARE, comparison, how_many

# (form, answer is yes) in turn, so that every form is asked as often with either answer
_TURNS = tuple((form, yes) for yes in (True, False) for form in COMPARE)


def read_comparison_questions(root: str | Path, split: str = "train", *, on_error: str = "raise",
                              per_image: int = 4, seed: int = 0, max_gap: int | None = None) -> list[Sample]:
    """`per_image` comparison Samples per image of `split` (RSVQA-LR layout under `root`), in
    the form of read_rsvqa's; an image's questions depend on `seed` and its id only. `max_gap`:
    compare kinds whose counts differ by at most that many, where the image has such a pair."""
    if max_gap is not None and max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    samples = []
    for n, record_id, image, counts in _counted_images(root, split, on_error, per_image):
        rng = np.random.default_rng([seed, int(record_id)])
        for k in range(per_image):
            form, yes = _TURNS[(n * per_image + k) % len(_TURNS)]
            samples.append(_sample(f"counts-{record_id}-{k}", image, record_id, split,
                                   *comparison(counts, rng, yes, forms=(form,), max_gap=max_gap)))
    return samples


def read_how_many_questions(root: str | Path, split: str = "train", *, on_error: str = "raise",
                            per_image: int = 2) -> list[Sample]:
    """`per_image` "How many ...?" Samples per image of `split` (at most one per kind of COUNTED),
    the kinds taking turns so that every kind is asked about as often."""
    if per_image > len(COUNTED):
        raise ValueError(f"per_image must be <= {len(COUNTED)} (the kinds counted), got {per_image}")
    samples = []
    for n, record_id, image, counts in _counted_images(root, split, on_error, per_image):
        for k in range(per_image):
            kind = COUNTED[(n * per_image + k) % len(COUNTED)]
            samples.append(_sample(f"how-many-{record_id}-{kind}", image, record_id, split,
                                   *how_many(counts, kind)))
    return samples


def _counted_images(root: str | Path, split: str, on_error: str,
                    per_image: int) -> Iterator[tuple[int, str, str, dict[str, int]]]:
    """(n, image id, image path, {kind: count}) of every active image of `split` with counts."""
    check_on_error(on_error)
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    root = Path(root)
    prefix, image_dir = LAYOUTS["lr"]
    source = root / f"{prefix}_{split}_images.json"
    records = read_json(source)
    if not isinstance(records, dict) or not isinstance(records.get("images"), list):
        raise DataError(source, "expected an object with an 'images' list")
    for n, record in enumerate(r for r in records["images"] if r.get("active", True)):
        try:
            if "id" not in record:
                raise DataError(source, "image record has no 'id'", f"#{n}")
            image = require_file(root / image_dir / f"{record['id']}.tif", source, f"#{n}", "image")
            counts = read_counts(image)
            if counts is None:
                raise DataError(source, f"no object counts beside {image} (written by `unirs synth`)", f"#{n}")
        except DataError as exc:
            report(exc, on_error)
            continue
        yield n, record["id"], image, dict(zip(COUNTED, counts.tolist()))


def _sample(sample_id: str, image: str, image_id: str, split: str, question_type: str, question: str,
            answer: str) -> Sample:
    """One question about `image` in the form of read_rsvqa's."""
    return Sample(
        sample_id=sample_id,
        kind=InputKind.IMAGE,
        images=[image],
        instruction=f"{question}\n{prompts.SHORT_ANSWER_SUFFIX}",
        references=[answer],
        meta={"benchmark": "rsvqa", "question_type": question_type, "image_id": image_id, "split": split},
    )
