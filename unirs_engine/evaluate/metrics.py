"""VQA accuracy (GeoChat protocol) and scene-classification scores (ERA: OA, per-class precision)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Hashable, Mapping, Sequence

UNMATCHED = "(unmatched)"  # confusion column of answers that name no class
OUT_OF_SPACE_LISTED = 5     # answers outside their question type's space kept as examples

# What an answer to each RSVQA question type may be (normalised). A type without a rule here (HR's
# "area") takes its references' answers as its space. Anything else, a change caption given to a
# single-image question say, is out of the type's answer space.
ANSWER_SPACES = {
    "presence": {"yes", "no"}.__contains__,
    "comp": {"yes", "no"}.__contains__,
    "rural_urban": {"rural", "urban"}.__contains__,
    "count": str.isdigit,
}


def normalise_answer(text: str) -> str:
    """GeoChat's VQA scoring: lowercase, remove whitespace and '.' ('Yes.' -> 'yes')."""
    return re.sub(r"[\s.]", "", text.lower())


def vqa_accuracy(preds: Mapping[Hashable, str], answers: Mapping[Hashable, str],
                 types: Mapping[Hashable, str]) -> dict:
    """Exact-match accuracy overall and per question type, and the answers outside their type's
    answer space (ANSWER_SPACES): how many per type, and the first few as (id, answer).

    "overall" weighs every question equally, as GeoChat's and UniRS' "Avg. Accuracy" columns do
    (UniRS LR: 91.64 / 92.68 / 90.00 per type -> 92.21 average).
    """
    missing = [i for i in preds if i not in answers or i not in types]
    if missing:
        raise ValueError(f"no answer or question type for prediction id(s) {missing[:5]}")
    references: dict[str, set[str]] = {}
    for i, answer in answers.items():
        references.setdefault(types.get(i), set()).add(normalise_answer(answer))
    in_space = {t: ANSWER_SPACES.get(t, refs.__contains__) for t, refs in references.items()}
    right: Counter = Counter()
    total: Counter = Counter()
    outside: Counter = Counter()
    examples = []
    for i, pred in preds.items():
        qtype, said = types[i], normalise_answer(pred)
        total[qtype] += 1
        right[qtype] += said == normalise_answer(answers[i])
        if not in_space[qtype](said):
            outside[qtype] += 1
            if len(examples) < OUT_OF_SPACE_LISTED:
                examples.append([i, pred])
    n = sum(total.values())
    return {
        "overall": sum(right.values()) / n if n else None,
        "per_type": {t: right[t] / total[t] for t in sorted(total)},
        "per_type_n": {t: total[t] for t in sorted(total)},
        "n": n,
        "out_of_space": {t: outside[t] for t in sorted(total)},
        "out_of_space_n": sum(outside.values()),
        "out_of_space_examples": examples,
    }


def classification_report(pred_labels: Mapping[Hashable, str | None],
                          true_labels: Mapping[Hashable, str], classes: Sequence[str]) -> dict:
    """Overall accuracy, per-class precision and recall, confusion counts.

    `pred_labels` come from prompts.match_class; None (no class named) counts as wrong.
    Precision of a class never predicted (recall of a class never true) is None: undefined.
    """
    known = set(classes)
    for i, label in true_labels.items():
        if label not in known:
            raise ValueError(f"sample {i!r}: true class {label!r} is not one of the {len(classes)} classes")
    missing = [i for i in true_labels if i not in pred_labels]
    if missing:
        raise ValueError(f"no prediction for sample id(s) {missing[:5]}")
    confusion: dict[str, Counter] = {}                        # true -> predicted -> count
    for i, true in true_labels.items():
        pred = pred_labels[i] if pred_labels[i] in known else UNMATCHED
        confusion.setdefault(true, Counter())[pred] += 1
    predicted = sum(confusion.values(), Counter())
    true_n = {t: sum(row.values()) for t, row in confusion.items()}
    hits = {c: confusion[c][c] if c in confusion else 0 for c in classes}
    n = len(true_labels)
    return {
        "overall_accuracy": sum(hits.values()) / n if n else None,
        "per_class_precision": {c: hits[c] / predicted[c] if predicted[c] else None for c in classes},
        "per_class_recall": {c: hits[c] / true_n[c] if c in true_n else None for c in classes},
        "confusion": {t: dict(row) for t, row in confusion.items()},
        "unmatched": predicted[UNMATCHED],
        "n": n,
    }
