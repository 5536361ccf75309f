"""Five LEVIR-CC-style captions per pair: what changed, how many (a/two/several/many) and where.

The vocabulary is kept small and the sentences formulaic so a small model can learn them; the
no-change sentences are LEVIR-CC's own phrasings (prompts.says_no_change holds for each of them,
and for none of the changed ones).
"""

from __future__ import annotations

import numpy as np

from .events import NO_CHANGE, Change
from .scene import REGION_NAMES

N_CAPTIONS = 5

NO_CHANGE_SENTENCES = (
    "the scene is the same as before",
    "there is no difference",
    "the two scenes seem identical",
    "no change has occurred",
    "nothing has changed",
    "the scene remains the same",
    "there is no change",
    "the two images look the same",
)

# {n} count word, {obj} noun, {has} has/have, {is} is/are, {s} verb ending, {ctx} setting + space,
# {loc} location phrase, {w} lake/river.
TEMPLATES = {
    "construction": (
        "{n} {obj} {has} been built {ctx}{loc}",
        "{n} new {obj} {has} been constructed {loc}",
        "{n} {obj} {is} built {ctx}{loc}",
        "{n} new {obj} appear{s} {ctx}{loc}",
        "there {is} {n} new {obj} {loc}",
        "{n} {obj} {has} appeared {ctx}{loc}",
    ),
    "demolition": (
        "{n} {obj} {has} been demolished {loc}",
        "{n} {obj} {has} been removed {loc}",
        "{n} {obj} {has} disappeared {loc}",
        "{n} {obj} {is} torn down {loc}",
        "{n} {obj} {has} been replaced by bare land {loc}",
        "{n} {obj} {loc} {has} been demolished",
    ),
    "road": (
        "{n} road has been built {ctx}{loc}",
        "{n} new road has been constructed {loc}",
        "{n} road appears {ctx}{loc}",
        "{n} new road is built {ctx}{loc}",
        "{n} road has been constructed {ctx}{loc}",
        "there is {n} new road {loc}",
    ),
    "flood": (
        "the {w} has expanded {loc}",
        "the {w} has flooded the land {loc}",
        "the water area has become larger {loc}",
        "the {w} has become bigger {loc}",
        "the water of the {w} has spread {loc}",
        "the {w} has risen and covered the land {loc}",
    ),
    "harvest": (
        "{n} {obj} {has} been harvested {loc}",
        "{n} {obj} {has} turned from green to yellow {loc}",
        "{n} {obj} {is} harvested {loc}",
        "{n} green {obj} {has} become bare {loc}",
        "the crops in {n} {obj} have been harvested {loc}",
        "{n} {obj} {has} changed colour {loc}",
    ),
    "trees_cut": (
        "{n} {obj} {has} been cut down {loc}",
        "{n} {obj} {has} been removed {loc}",
        "{n} {obj} {has} disappeared {loc}",
        "{n} {obj} {has} been replaced by bare land {loc}",
        "{n} {obj} {is} cut down {loc}",
        "{n} {obj} {loc} {has} been cut down",
    ),
}
_NOUNS = {"construction": ("building", "buildings"), "demolition": ("building", "buildings"),
          "road": ("road", "roads"), "flood": ("", ""), "harvest": ("field", "fields"),
          "trees_cut": ("group of trees", "groups of trees")}


def count_word(n: int) -> str:
    """1 -> 'a', 2 -> 'two', 3-4 -> 'several', 5+ -> 'many' (LEVIR-CC's counting words)."""
    if n < 1:
        raise ValueError(f"a change involves at least one object, got {n}")
    return "a" if n == 1 else "two" if n == 2 else "several" if n <= 4 else "many"


def change_captions(change: Change, rng: np.random.Generator) -> list[str]:
    """N_CAPTIONS different captions of `change`, in random order."""
    if change.event == NO_CHANGE:
        pool = list(NO_CHANGE_SENTENCES)
    else:
        one = change.count == 1
        words = {"n": count_word(change.count), "obj": _NOUNS[change.event][0 if one else 1],
                 "has": "has" if one else "have", "is": "is" if one else "are", "s": "s" if one else "",
                 "ctx": f"{change.context} " if change.context else "",
                 "loc": REGION_NAMES[change.region], "w": change.water or ""}
        pool = [t.format(**words) for t in TEMPLATES[change.event]]
    return [pool[i] for i in rng.permutation(len(pool))[:N_CAPTIONS]]
