"""Where an instruction names a counted kind ("buildings", "groups of trees"): the positions the
instruct stage's noun count head reads (instruct.py, `noun_count_weight`).

A comparison ("Are there more roads than water areas?") needs the two kinds' counts side by side.
Supervising each kind's count at the token that ends its name, in a lower layer, leaves the
layers above to compare two numbers read from two positions, instead of picking two counts out
of the six the answer position holds.

Positions are kept as offsets back from the prompt's last token: the text after the last
`<image>` is not moved when the visual slots are spliced in, so an offset holds in the spliced
sequence too.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.synthetic.object_counts import COUNTED
from ..data.synthetic.scene import NOUNS
from ..prompts import IMAGE_TOKEN_INDEX

Phrase = tuple[int, tuple[int, ...]]  # (kind index in COUNTED, token ids)


def kind_phrases(tokenizer) -> list[Phrase]:
    """Each counted kind's singular and plural names as token ids, longest first (so "groups of
    trees" wins over a shorter name inside it)."""
    phrases = {(k, tuple(tokenizer(name, add_special_tokens=False)["input_ids"]))
               for k, kind in enumerate(COUNTED) for name in NOUNS[kind]}
    return sorted(phrases, key=lambda p: (-len(p[1]), p))


def noun_offsets(prompt_ids: Sequence[int], phrases: Sequence[Phrase]) -> list[tuple[int, int]]:
    """(offset back from the last of `prompt_ids`, kind index) of every kind name in the text after
    the last `<image>`, matched left to right, longest name first, without overlaps."""
    images = [i for i, t in enumerate(prompt_ids) if t == IMAGE_TOKEN_INDEX]
    last = len(prompt_ids) - 1
    found, i = [], images[-1] + 1 if images else 0
    while i <= last:
        match = next(((k, len(ids)) for k, ids in phrases if tuple(prompt_ids[i:i + len(ids)]) == ids), None)
        if match is None:
            i += 1
            continue
        kind, length = match
        found.append((last - (i + length - 1), kind))
        i += length
    return found
