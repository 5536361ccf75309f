"""More comparison questions for training, answered from the object counts the benchmark writes.

The writer asks two comparisons per image (one "yes", one "no", of any form), so "equal" questions
answered "yes" are about one in ten, too few for the LLM to learn to compare two counts. This
reader asks `per_image` more about every image of a split of the synthetic RSVQA benchmark, from
its counts/<stem>.npy and with the writer's templates, balanced over the forms "more", "less" and
"equal" and their answers. Train-split data only: the benchmark's own questions stay what they
were, so evaluation is untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import prompts
from ...types import InputKind, Sample
from ..records import DataError, check_on_error, read_json, report, require_file
from ..rsvqa import LAYOUTS
from .object_counts import COUNTED, read_counts
from .questions import COMPARE, comparison

# (form, answer is yes) in turn, so that every form is asked as often with either answer
_TURNS = tuple((form, yes) for yes in (True, False) for form in COMPARE)


def read_count_questions(root: str | Path, split: str = "train", *, on_error: str = "raise",
                         per_image: int = 4, seed: int = 0) -> list[Sample]:
    """`per_image` comparison Samples per image of `split` (RSVQA-LR layout under `root`), in
    the form of read_rsvqa's; an image's questions depend on `seed` and its id only."""
    check_on_error(on_error)
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    root = Path(root)
    prefix, image_dir = LAYOUTS["lr"]
    source = root / f"{prefix}_{split}_images.json"
    records = read_json(source)
    if not isinstance(records, dict) or not isinstance(records.get("images"), list):
        raise DataError(source, "expected an object with an 'images' list")

    samples = []
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
        rng = np.random.default_rng([seed, int(record["id"])])
        by_kind = dict(zip(COUNTED, counts.tolist()))
        for k in range(per_image):
            form, yes = _TURNS[(n * per_image + k) % len(_TURNS)]
            kind, question, answer = comparison(by_kind, rng, yes, forms=(form,))
            samples.append(Sample(
                sample_id=f"counts-{record['id']}-{k}",
                kind=InputKind.IMAGE,
                images=[image],
                instruction=f"{question}\n{prompts.SHORT_ANSWER_SUFFIX}",
                references=[answer],
                meta={"benchmark": "rsvqa", "question_type": kind, "image_id": record["id"], "split": split},
            ))
    return samples
