"""RSVQA-LR-style questions about one scene, answered from its object list.

Per image: two presence and two comparison questions (one "yes" and one "no" each whenever the
scene allows), one rural/urban and one count question. Answers are exactly "yes", "no", "rural",
"urban" or a number "0".."9".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from .scene import NOUNS, Scene

QUESTION_TYPES = ("presence", "comp", "rural_urban", "count")
_PRESENCE = ("Is there a {one}?", "Is a {one} present?", "Are there {many}?")
COMPARE = {
    "more": "Are there more {a} than {b}?",
    "less": "Are there less {a} than {b}?",
    "equal": "Is the number of {a} equal to the number of {b}?",
}


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(question_type, question, answer) tuples for `scene`."""
    first = bool(rng.random() < 0.5)   # which of the two presence/comparison questions is "yes"
    return [
        _presence(scene, rng, first), _presence(scene, rng, not first),
        _comparison(scene, rng, first), _comparison(scene, rng, not first),
        ("rural_urban", "Is it a rural or an urban area?", scene.layout),
        _count(scene, rng),
    ]


def _presence(scene: Scene, rng: np.random.Generator, want_yes: bool) -> tuple[str, str, str]:
    kinds = [k for k in NOUNS if (scene.count(k) > 0) == want_yes] or list(NOUNS)
    kind = kinds[int(rng.integers(len(kinds)))]
    one, many = NOUNS[kind]
    template = _PRESENCE[int(rng.integers(len(_PRESENCE)))]
    return "presence", template.format(one=one, many=many), "yes" if scene.count(kind) > 0 else "no"


def _comparison(scene: Scene, rng: np.random.Generator, want_yes: bool) -> tuple[str, str, str]:
    return comparison({kind: scene.count(kind) for kind in NOUNS}, rng, want_yes)


def comparison(counts: Mapping[str, int], rng: np.random.Generator, want_yes: bool,
               forms: Sequence[str] = tuple(COMPARE), max_gap: int | None = None) -> tuple[str, str, str]:
    """A ("comp", question, answer) comparing two kinds of NOUNS by their `counts`, of one of `forms`
    ("more", "less", "equal"), answered "yes" when `want_yes` and some pair of kinds allows it;
    with `max_gap`, of two kinds whose counts differ by at most that where the image has such."""
    options = []
    for (a, b), how in itertools.product(itertools.permutations(NOUNS, 2), forms):
        na, nb = counts[a], counts[b]
        yes = na > nb if how == "more" else na < nb if how == "less" else na == nb
        options.append((yes, abs(na - nb), a, b, how))
    matching = [o for o in options if o[0] == want_yes] or options
    if max_gap is not None:
        matching = [o for o in matching if o[1] <= max_gap] or matching
    yes, _, a, b, how = matching[int(rng.integers(len(matching)))]
    return "comp", COMPARE[how].format(a=NOUNS[a][1], b=NOUNS[b][1]), "yes" if yes else "no"


def _count(scene: Scene, rng: np.random.Generator) -> tuple[str, str, str]:
    kind = "building" if rng.random() < 0.5 else list(NOUNS)[int(rng.integers(len(NOUNS)))]
    return how_many({kind: scene.count(kind)}, kind)


def how_many(counts: Mapping[str, int], kind: str) -> tuple[str, str, str]:
    """The ("count", question, answer) asking how many objects of `kind` (of NOUNS) `counts` has."""
    return "count", f"How many {NOUNS[kind][1]} are there?", str(counts[kind])
