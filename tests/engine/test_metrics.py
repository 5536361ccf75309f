"""Caption, VQA and classification metrics: cross-checked against pycocoevalcap and by hand."""

import math

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from unirs_engine.evaluate.captions import (_scores, caption_scores, normalise_caption, scores_by_change,
                                            tokenised_inputs)
from unirs_engine.evaluate.metrics import (UNMATCHED, classification_report, normalise_answer,
                                           vqa_accuracy)

# Ten LEVIR-CC-like groups: (hypothesis, references) as a model and annotators write them,
# with the word tokens we expect after normalisation written out by hand.
GROUPS = {
    "p0": ("Many buildings have been built along the road.",
           ["many buildings have been built along the road .", "Some houses appear beside the road.",
            "a row of buildings is constructed near the road"]),
    "p1": ("There is no change.",
           ["the scene is the same as before .", "there is no difference .", "no change has occurred"]),
    "p2": ("A road has been constructed in the bare land, near the trees.",
           ["a road is built in the bare land", "a new road appears on the bare land ; trees remain ."]),
    "p3": ("Two houses are demolished at the top.",
           ["two buildings at the top have been removed", "the houses at the top disappear ."]),
    "p4": ("", ["the scene remains unchanged ."]),
    "p5": ("the lake has grown larger",
           ["the water area becomes larger , covering the fields", "the lake expands to the left",
            "flood water extends over the farmland", "the lake grows", "more water appears"]),
    "p6": ("The fields at the bottom have been harvested.",
           ["the fields at the bottom are harvested", "the farmland at the bottom changes colour ."]),
    "p7": ("SEVERAL TREES WERE CUT DOWN ON THE RIGHT.",
           ["several trees on the right are cut down", "trees on the right have been removed"]),
    "p8": ("many buildings; a road",
           ["many buildings and a road have been built", "a road and many houses appear"]),
    "p9": ("there is no difference", ["there is no difference .", "nothing has changed"]),
}
TOKENISED = {
    "p0": ("many buildings have been built along the road",
           ["many buildings have been built along the road", "some houses appear beside the road",
            "a row of buildings is constructed near the road"]),
    "p1": ("there is no change",
           ["the scene is the same as before", "there is no difference", "no change has occurred"]),
    "p2": ("a road has been constructed in the bare land , near the trees",
           ["a road is built in the bare land", "a new road appears on the bare land ; trees remain"]),
    "p3": ("two houses are demolished at the top",
           ["two buildings at the top have been removed", "the houses at the top disappear"]),
    "p4": ("", ["the scene remains unchanged"]),
    "p5": ("the lake has grown larger",
           ["the water area becomes larger , covering the fields", "the lake expands to the left",
            "flood water extends over the farmland", "the lake grows", "more water appears"]),
    "p6": ("the fields at the bottom have been harvested",
           ["the fields at the bottom are harvested", "the farmland at the bottom changes colour"]),
    "p7": ("several trees were cut down on the right",
           ["several trees on the right are cut down", "trees on the right have been removed"]),
    "p8": ("many buildings ; a road",
           ["many buildings and a road have been built", "a road and many houses appear"]),
    "p9": ("there is no difference", ["there is no difference", "nothing has changed"]),
}
CHANGEFLAG = {"p0": 1, "p1": 0, "p2": 1, "p3": 1, "p4": 0, "p5": 1, "p6": 1, "p7": 1, "p8": 1, "p9": 0}


def _hyps_refs(groups):
    return {i: h for i, (h, _) in groups.items()}, {i: r for i, (_, r) in groups.items()}


def _direct(gts, res):
    """pycocoevalcap's own scorers, called as the RSICC repositories call them."""
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    try:
        met, _ = meteor.compute_score(gts, res)
    finally:
        meteor.meteor_p.kill()
    return {"BLEU-1": bleu[0], "BLEU-2": bleu[1], "BLEU-3": bleu[2], "BLEU-4": bleu[3], "METEOR": met,
            "ROUGE-L": Rouge().compute_score(gts, res)[0], "CIDEr-D": Cider().compute_score(gts, res)[0]}


@pytest.fixture(scope="module")
def cross_check():
    hyps, refs = _hyps_refs(GROUPS)
    gts = {i: r for i, (_, r) in TOKENISED.items()}
    res = {i: [h] for i, (h, _) in TOKENISED.items()}
    return caption_scores(hyps, refs), _direct(gts, res)


def test_normalise_caption_matches_hand_tokenisation():
    for i, (hyp, refs) in GROUPS.items():
        want_hyp, want_refs = TOKENISED[i]
        assert normalise_caption(hyp) == want_hyp
        assert [normalise_caption(r) for r in refs] == want_refs
    assert normalise_caption("  Road.A  new\nroad;x,y ") == "road a new road ; x , y"


@pytest.mark.parametrize("metric", ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"])
def test_caption_scores_equal_pycocoevalcap(cross_check, metric):
    ours, direct = cross_check
    assert ours["n"] == 10
    assert ours[metric] == pytest.approx(direct[metric], abs=1e-9)
    assert 0.0 < ours[metric] < (10.0 if metric == "CIDEr-D" else 1.0)  # a real, non-degenerate score


def test_identical_captions_score_one_and_cider_by_hand():
    # Three images whose captions share no n-gram: every idf is log(3) > 0 and each image's
    # hypothesis vector equals its reference's, so cosine = 1 for each n and an image scores
    # mean over n = 1..4 x 10 = 10. The 3-word caption has no 4-gram (cosine 0): 3/4 x 10 = 7.5.
    hyps = {"a": "a red roof", "b": "two green fields appear", "c": "water rises quickly here now"}
    refs = {i: [h] for i, h in hyps.items()}
    s = caption_scores(hyps, refs)
    for n in range(1, 5):
        assert s[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert s["ROUGE-L"] == 1.0
    assert s["METEOR"] == pytest.approx(1.0)
    assert s["CIDEr-D"] == pytest.approx((7.5 + 10 + 10) / 3, abs=1e-12)


def test_cider_of_a_single_image_corpus_is_zero():
    # One image: idf = log(1) - log(df = 1) = 0 for every n-gram, so even a perfect caption scores 0.
    hyp, refs = {"x": "many buildings are built"}, {"x": ["many buildings are built"]}
    gts, res = {"x": ["many buildings are built"]}, {"x": ["many buildings are built"]}
    assert Cider().compute_score(gts, res)[0] == 0.0
    assert _scores(*tokenised_inputs(hyp, refs), None)["CIDEr-D"] == 0.0   # (no METEOR java needed)


def test_bleu_and_rouge_by_hand():  # pure python scorers: METEOR left out
    def scores(h, r):
        return _scores({"i": [r], "j": ["zz"]}, {"i": [h], "j": ["zz"]}, None)

    # Half the unigrams match, equal lengths -> BLEU-1 = corpus precision (2 + 1) / (4 + 1) = 0.6.
    assert scores("a b c d", "a b x y")["BLEU-1"] == pytest.approx(3 / 5, abs=1e-8)
    # Short hypothesis: precision 1, brevity penalty exp(1 - 5/3) over the corpus (4+1 ref words).
    assert scores("a b", "a b c d")["BLEU-1"] == pytest.approx(math.exp(1 - 5 / 3), abs=1e-8)
    # LCS 3 of 4 both ways -> P = R = 0.75 -> F_beta = 0.75; mean with the perfect "zz" image.
    assert scores("a b c d", "a x c d")["ROUGE-L"] == pytest.approx((0.75 + 1.0) / 2)


def test_scores_by_change_splits_and_decides():
    hyps, refs = _hyps_refs(GROUPS)
    out = scores_by_change(hyps, refs, CHANGEFLAG)
    assert (out["all"]["n"], out["changed"]["n"], out["unchanged"]["n"]) == (10, 7, 3)
    changed = [i for i in hyps if CHANGEFLAG[i]]
    alone = caption_scores({i: hyps[i] for i in changed}, {i: refs[i] for i in changed})
    for metric in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"):
        assert out["changed"][metric] == pytest.approx(alone[metric], abs=1e-12)
    # Captions saying "no change": p1, p9 (right, unchanged). p4 is empty -> read as "changed"
    # though unchanged (wrong). The 7 changed captions never say "no change" (right): 9 of 10.
    d = out["change_decision"]
    assert d == {"accuracy": 0.9, "n": 10, "predicted_changed": 8, "true_changed": 7}


def test_meteor_without_java_is_none_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    with pytest.warns(RuntimeWarning, match="java"):
        s = caption_scores({"a": "a road"}, {"a": ["a road is built"]})
    assert s["METEOR"] is None and s["ROUGE-L"] > 0


def test_caption_scores_need_references():
    with pytest.raises(ValueError, match="p7"):
        caption_scores({"p7": "trees"}, {"p7": []})
    empty = caption_scores({}, {})
    assert empty["n"] == 0 and empty["CIDEr-D"] is None


def test_vqa_normalisation():
    assert normalise_answer(" Yes.") == "yes"
    assert normalise_answer("Rural area") == "ruralarea"
    assert normalise_answer("no\n") == "no"
    assert normalise_answer("Yes, there is") != normalise_answer("yes")


def test_vqa_accuracy_per_type_and_question_weighted_average():
    preds = {1: "Yes.", 2: "no", 3: "yes", 4: "Rural", 5: "urban", 6: "yes", 7: "No."}
    answers = {1: "yes", 2: "yes", 3: "yes", 4: "rural", 5: "rural", 6: "no", 7: "no"}
    types = {1: "presence", 2: "presence", 3: "presence", 4: "rural_urban", 5: "rural_urban",
             6: "comp", 7: "comp"}
    out = vqa_accuracy(preds, answers, types)
    assert out["per_type"] == {"comp": 0.5, "presence": 2 / 3, "rural_urban": 0.5}
    assert out["per_type_n"] == {"comp": 2, "presence": 3, "rural_urban": 2}
    assert out["overall"] == 4 / 7 and out["n"] == 7   # not the mean of the per-type figures
    with pytest.raises(ValueError, match="8"):
        vqa_accuracy({8: "yes"}, answers, types)


def test_vqa_answers_outside_their_types_answer_space_are_counted():
    preds = {1: "No change.", 2: "Yes", 3: "12", 4: "twelve", 5: "Urban", 6: "yes",
             7: "between 10m2 and 100m2", 8: "0m2"}
    answers = {1: "yes", 2: "no", 3: "3", 4: "3", 5: "rural", 6: "rural",
               7: "between 10m2 and 100m2", 8: "more than 1000m2"}
    types = {1: "presence", 2: "comp", 3: "count", 4: "count", 5: "rural_urban", 6: "rural_urban",
             7: "area", 8: "area"}
    out = vqa_accuracy(preds, answers, types)
    # "0m2" is no reference of this set's area questions: a type without a rule takes its references.
    assert out["out_of_space"] == {"area": 1, "comp": 0, "count": 1, "presence": 1, "rural_urban": 1}
    assert out["out_of_space_n"] == 4
    assert out["out_of_space_examples"] == [[1, "No change."], [4, "twelve"], [6, "yes"], [8, "0m2"]]
    assert out["per_type"]["area"] == 0.5 and out["per_type"]["presence"] == 0


def test_classification_report_by_hand():
    classes = ("flood", "fire", "harvesting", "concert")
    true = {"v1": "flood", "v2": "flood", "v3": "flood", "v4": "fire", "v5": "fire", "v6": "harvesting"}
    pred = {"v1": "flood", "v2": "flood", "v3": "fire", "v4": "fire", "v5": None, "v6": "flood"}
    out = classification_report(pred, true, classes)
    assert out["overall_accuracy"] == 3 / 6 and out["n"] == 6
    # flood predicted 3 times (v1, v2 right; v6 wrong); fire twice (v4 right, v3 wrong).
    assert out["per_class_precision"] == {"flood": 2 / 3, "fire": 0.5, "harvesting": None, "concert": None}
    assert out["per_class_recall"] == {"flood": 2 / 3, "fire": 0.5, "harvesting": 0.0, "concert": None}
    assert out["confusion"] == {"flood": {"flood": 2, "fire": 1}, "fire": {"fire": 1, UNMATCHED: 1},
                                "harvesting": {"flood": 1}}
    assert out["unmatched"] == 1
    with pytest.raises(ValueError, match="v9.*volcano"):
        classification_report({"v9": None}, {"v9": "volcano"}, classes)
