"""A checkpoint without a Change Extraction module (VILA-1.5 layout) reviews mosaics with the vision
tower's feature score; any checkpoint can be asked for a score it gives, each with its own threshold."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from osgeo import ogr

from unirs_engine.cli import main
from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.data.synthetic.writer import write_benchmark
from unirs_engine.engine import Engine, InvalidRequest
from unirs_engine.inputs.pair import read_pair
from unirs_engine.review import ReviewError, ReviewJob, run_review
from unirs_engine.thresholds import threshold_key
from unirs_engine.testing.tiny import build_tiny_vila_checkpoint


@pytest.fixture(scope="module")
def vila(tmp_path_factory):
    return Engine.load(build_tiny_vila_checkpoint(tmp_path_factory.mktemp("vila") / "vila-tiny"),
                       device="cpu", max_new_tokens=4)


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    return write_mosaic_pair(tmp_path_factory.mktemp("mosaics"), size=128, tile=32, seed=3)


def _rows(out):
    ds = ogr.Open(str(out))
    (run,) = [f.items() for f in ds.GetLayerByName("unirs_review_runs")]
    tiles = [f.items() for f in ds.GetLayerByName("changes")]
    return run, tiles


def test_feature_score_is_one_minus_the_mean_patch_cosine(vila, mosaics):
    before, after = mosaics
    same = read_pair(str(before), str(before))
    pair = read_pair(str(before), str(after))
    feats = vila.encode(list(pair))                                               # (2, P, D)
    cosine = torch.nn.functional.cosine_similarity(feats[0], feats[1], dim=-1)   # (P,)
    s_same, s_pair = vila.change_scores([same, pair])
    assert s_same == pytest.approx(0.0, abs=1e-6)
    assert s_pair == pytest.approx(1.0 - float(cosine.mean()), abs=1e-6) and s_pair > 0


def test_a_vila_checkpoint_reviews_with_the_feature_score(vila, mosaics, tmp_path):
    before, after = mosaics
    out = tmp_path / "review.gpkg"
    summary = run_review(vila, ReviewJob(str(before), str(after), str(out), tile_size=32, threshold=0.0))
    run, tiles = _rows(out)
    assert summary.change_score == run["change_score"] == json.loads(run["job_json"])["score"] == "feature-cosine"
    assert len(tiles) == 16 and all(t["caption"] for t in tiles)   # threshold 0: every tile captioned
    assert all(t["score"] >= 0 for t in tiles)
    # A rerun that names no score resolves to the same one: it resumes (finished, nothing redone).
    again = run_review(vila, ReviewJob(str(before), str(after), str(out), tile_size=32, threshold=0.0))
    assert again.done == 0 and again.resumed_from == 16


def test_a_score_the_model_cannot_give_is_refused_before_any_tile(vila, mosaics, tmp_path):
    before, after = mosaics
    out = tmp_path / "head.gpkg"
    with pytest.raises(ReviewError, match="change score 'cem-cosine' is not given by this model; "
                                          "vila-tiny gives feature-cosine"):
        run_review(vila, ReviewJob(str(before), str(after), str(out), tile_size=32, score="cem-cosine"))
    assert not out.exists()
    with pytest.raises(ReviewError, match="score must be one of head, cem-cosine, feature-cosine"):
        ReviewJob(str(before), str(after), str(out), score="ssim")
    with pytest.raises(InvalidRequest, match="'ssim' is not a change score"):
        vila.change_scores([read_pair(str(before), str(after))], "ssim")


def test_each_score_keeps_its_own_threshold(tiny_checkpoint, mosaics, tmp_path, capsys):
    model = shutil.copytree(tiny_checkpoint, tmp_path / "model")
    data = tmp_path / "data"
    write_benchmark(data, seed=0, n_images=2, n_pairs=12, n_videos=2, size=64, splits=(0.5, 0.5, 0.0),
                    progress=False)
    assert main(["calibrate-threshold", "--model", str(model), "--data", str(data / "levircc"),
                 "--score", "feature-cosine"]) == 0
    assert capsys.readouterr().out.startswith("feature-cosine score threshold")
    config = json.loads((model / "config.json").read_text())
    feature = config[threshold_key("feature-cosine")]
    assert threshold_key("cem-cosine") not in config   # the CEM score's threshold is untouched
    assert config[threshold_key("feature-cosine") + "_info"]["score"] == "feature-cosine"

    engine = Engine.load(model, device="cpu", max_new_tokens=2)
    assert engine.change_score == "cem-cosine" and engine.change_threshold_with_source("feature-cosine") == \
        (pytest.approx(feature), "calibrated in the checkpoint")
    before, after = mosaics
    out = tmp_path / "feature.gpkg"
    assert main(["review", str(before), str(after), "--out", str(out), "--tile-size", "64", "--model", str(model),
                 "--score", "feature-cosine"]) == 0
    run, _ = _rows(out)
    assert run["change_score"] == "feature-cosine" and run["threshold"] == pytest.approx(feature)
    # The same output with another score is another review: refused, naming what differs.
    assert main(["review", str(before), str(after), "--out", str(out), "--tile-size", "64", "--model", str(model),
                 "--score", "cem-cosine"]) == 2
    said = capsys.readouterr().err
    assert "holds a review with" in said and "score='feature-cosine'" in said
