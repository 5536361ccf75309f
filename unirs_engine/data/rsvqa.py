"""RSVQA-LR and RSVQA-HR (Lobry et al.): split JSON files of images, questions and answers.

Layout: LR `LR_split_{split}_{images,questions,answers}.json` + `Images_LR/{id}.tif`;
HR `USGS_split_{split}_...json` (splits train, val, test, test_phili) + `Data/{id}.tif`.
Each file holds {"images"|"questions"|"answers": [records with "id" and "active"]}; inactive
records are not part of the dataset and are left out quietly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import prompts
from ..types import InputKind, Sample
from .records import DataError, check_on_error, read_json, report, require_file

LAYOUTS = {"lr": ("LR_split", "Images_LR"), "hr": ("USGS_split", "Data")}
PROTOCOLS = ("geochat", "full")
# GeoChat's LRBEN/HRBEN leave these out (docs/Evaluation.md).
GEOCHAT_EXCLUDED = {"count", "area"}


def read_rsvqa(root: str | Path, variant: str = "lr", split: str = "test", *, on_error: str = "raise",
               protocol: str = "geochat") -> list[Sample]:
    """One IMAGE sample per active question, in file order; references = [answer].

    protocol "geochat" drops count and area questions; "full" keeps every type. Both ask for a
    short answer ("{question}\\n" + prompts.SHORT_ANSWER_SUFFIX), as the answers are one word.
    """
    check_on_error(on_error)
    if variant not in LAYOUTS:
        raise ValueError(f"RSVQA variant must be one of {tuple(LAYOUTS)}, got {variant!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"RSVQA protocol must be one of {PROTOCOLS}, got {protocol!r}")
    root = Path(root)
    prefix, image_dir = LAYOUTS[variant]
    files = {part: root / f"{prefix}_{split}_{part}.json" for part in ("images", "questions", "answers")}
    images = {rec["id"]: rec.get("active", True) for rec in _records(files["images"], "images")}
    questions = _records(files["questions"], "questions")
    answers = _active_by_id(files["answers"], "answers")
    answer_of = {a.get("question_id"): a for a in answers.values()}

    samples = []
    for n, q in enumerate(questions):
        if not q.get("active", True) or (protocol == "geochat" and q.get("type") in GEOCHAT_EXCLUDED):
            continue
        try:
            sample = _sample(q, n, files["questions"], images, answers, answer_of, root / image_dir)
        except DataError as exc:
            report(exc, on_error)
            continue
        if sample is not None:
            sample.meta["split"] = split
            samples.append(sample)
    return samples


def _sample(q: dict, n: int, source: Path, images: dict[Any, bool], answers: dict, answer_of: dict,
            image_dir: Path) -> Sample | None:
    record = f"#{n} (id {q.get('id')})"
    for key in ("id", "img_id", "type", "question"):
        if key not in q:
            raise DataError(source, f"question has no {key!r}", record)
    if q["img_id"] not in images:
        raise DataError(source, f"image {q['img_id']!r} is not listed in the images file", record)
    if not images[q["img_id"]]:
        return None  # its image is inactive in this split: the question is not part of the dataset
    ids = q.get("answers_ids")
    found = [answers[i] for i in ids if i in answers] if ids is not None else [answer_of.get(q["id"])]
    found = [a for a in found if a is not None and "answer" in a]
    if not found:
        raise DataError(source, "question without an active answer", record)
    image = require_file(image_dir / f"{q['img_id']}.tif", source, record, "image")
    return Sample(
        sample_id=str(q["id"]),
        kind=InputKind.IMAGE,
        images=[image],
        instruction=f"{q['question'].strip()}\n{prompts.SHORT_ANSWER_SUFFIX}",
        references=[str(found[0]["answer"]).strip()],
        meta={"benchmark": "rsvqa", "question_type": q["type"], "image_id": q["img_id"],
              "question_id": q["id"]},
    )


def _records(path: Path, key: str) -> list[dict[str, Any]]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(path, f"expected an object with a {key!r} list")
    for n, rec in enumerate(data[key]):
        if not isinstance(rec, dict) or "id" not in rec:
            raise DataError(path, "expected an object with an 'id'", f"#{n}")
    return data[key]


def _active_by_id(path: Path, key: str) -> dict[Any, dict[str, Any]]:
    return {rec["id"]: rec for rec in _records(path, key) if rec.get("active", True)}
