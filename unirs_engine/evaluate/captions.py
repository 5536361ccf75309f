"""Change-caption scores: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D from pycocoevalcap, word level.

Text is normalised for LLM output without the PTBTokenizer (a Java dependency, and its rules were made
for human captions): lowercase, drop ".", split "," and ";" off as tokens, split on whitespace. Scores are fractions
(CIDEr-D about 0..10); papers print them x100.
"""

from __future__ import annotations

import re
import shutil
import warnings
from contextlib import contextmanager, nullcontext
from typing import Hashable, Iterator, Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from .. import prompts

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


def normalise_caption(text: str) -> str:
    """'The road is built, near trees.' -> 'the road is built , near trees'."""
    text = text.lower().replace(".", " ")        # a space, so "road.a" cannot fuse into one word
    text = re.sub(r"([,;])", r" \1 ", text)
    return " ".join(text.split())


def tokenised_inputs(hyps: Mapping[Hashable, str], refs: Mapping[Hashable, Sequence[str]]
                     ) -> tuple[dict, dict]:
    """(gts, res) exactly as pycocoevalcap's scorers take them: id -> list of normalised strings."""
    missing = [i for i in hyps if not refs.get(i)]
    if missing:
        raise ValueError(f"no reference captions for prediction id(s) {missing[:5]}")
    gts = {i: [normalise_caption(r) for r in refs[i]] for i in hyps}
    res = {i: [normalise_caption(h)] for i, h in hyps.items()}
    return gts, res


@contextmanager
def meteor_scorer() -> Iterator[Meteor | None]:
    """A METEOR scorer (one java subprocess) for the block; None, with a warning, without java."""
    if shutil.which("java") is None:
        warnings.warn("METEOR needs java on PATH (meteor-1.5.jar); METEOR is reported as None",
                      RuntimeWarning, stacklevel=3)
        yield None
        return
    meteor = Meteor()
    try:
        yield meteor
    finally:
        if meteor.lock.locked():  # compute_score failed midway; Meteor.__del__ would wait forever
            meteor.lock.release()
        meteor.meteor_p.kill()    # end java now, not whenever the object is collected
        meteor.meteor_p.wait()


def _scores(gts: dict, res: dict, meteor: Meteor | None) -> dict:
    if not res:
        return {**{m: None for m in METRICS}, "n": 0}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["METEOR"] = float(meteor.compute_score(gts, res)[0]) if meteor is not None else None
    out["ROUGE-L"] = float(rouge)
    out["CIDEr-D"] = float(cider)
    return {**out, "n": len(res)}


def caption_scores(hyps: Mapping[Hashable, str], refs: Mapping[Hashable, Sequence[str]]) -> dict:
    """Corpus scores of hypotheses (id -> caption) against references (id -> captions)."""
    gts, res = tokenised_inputs(hyps, refs)
    with meteor_scorer() if res else nullcontext() as meteor:
        return _scores(gts, res, meteor)


def scores_by_change(hyps: Mapping[Hashable, str], refs: Mapping[Hashable, Sequence[str]],
                     changeflag: Mapping[Hashable, int]) -> dict:
    """Scores on all / changed / unchanged pairs (LEVIR-CC `changeflag`), plus how often the
    caption's changed-or-not decision (prompts.says_no_change) agrees with the flag."""
    missing = [i for i in hyps if i not in changeflag]
    if missing:
        raise ValueError(f"no changeflag for prediction id(s) {missing[:5]}")
    gts, res = tokenised_inputs(hyps, refs)
    truth = {i: bool(int(changeflag[i])) for i in hyps}
    subsets = {"all": list(res), "changed": [i for i in res if truth[i]],
               "unchanged": [i for i in res if not truth[i]]}
    with meteor_scorer() if res else nullcontext() as meteor:  # one java process for all three
        out = {name: _scores({i: gts[i] for i in ids}, {i: res[i] for i in ids}, meteor)
               for name, ids in subsets.items()}
    decided = {i: not prompts.says_no_change(h) for i, h in hyps.items()}
    right = sum(decided[i] == truth[i] for i in hyps)
    out["change_decision"] = {"accuracy": right / len(hyps) if hyps else None, "n": len(hyps),
                              "predicted_changed": sum(decided.values()),
                              "true_changed": sum(truth.values())}
    return out
