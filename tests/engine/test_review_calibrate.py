"""The change-score threshold: picked by balanced accuracy, stored in the checkpoint by
`unirs calibrate-threshold`, or learnt from an analyst's verdicts (`--from-review`) and kept per user;
used by a review that names no threshold."""

from __future__ import annotations

import json
import shutil

import pytest
from osgeo import ogr

from unirs_engine.cli import main
from unirs_engine.data.levircc import read_levircc
from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.data.synthetic.writer import write_benchmark
from unirs_engine.engine import Engine
from unirs_engine.inputs.pair import read_pair
from unirs_engine.review import DEFAULT_THRESHOLD, LAYER, ReviewError, ReviewJob, run_review
from unirs_engine.review.calibrate import best_threshold
from unirs_engine.review.store import now_iso
from unirs_engine.thresholds import USER_THRESHOLDS, threshold_key

CONFIG_KEY = threshold_key("cem-cosine")


def _set_verdict(path, fid, verdict, by) -> None:
    """An analyst's verdict, written as the QGIS plugin's set_verdict writes it (through OGR)."""
    ds = ogr.Open(str(path), 1)
    layer = ds.GetLayerByName(LAYER)
    feature = layer.GetFeature(fid)
    feature["verdict"], feature["reviewed_at"], feature["reviewed_by"] = verdict, now_iso(), by
    layer.SetFeature(feature)


def test_best_threshold_by_balanced_accuracy():
    cal = best_threshold([0.1, 0.2, 0.3, 0.4], [False, False, True, True])
    assert (cal.threshold, cal.balanced_accuracy, cal.changed, cal.unchanged) == pytest.approx((0.25, 1.0, 2, 2))
    # overlapping: cutting at 3.5 keeps 3 of 4 changed and both unchanged -> (3/4 + 1) / 2
    cal = best_threshold([1, 2, 3, 4, 5, 6], [False, True, False, True, True, True])
    assert (cal.threshold, cal.balanced_accuracy) == pytest.approx((3.5, 0.875))
    # equal scores are never split; of equally good cuts the lower one wins
    assert best_threshold([1, 1, 2], [False, True, True]).threshold == pytest.approx(1.5)
    assert best_threshold([1, 2, 3, 4], [False, True, False, True]).threshold == pytest.approx(1.5)


def test_best_threshold_needs_both_labels():
    with pytest.raises(ReviewError, match="needs changed and unchanged pairs, got 2 changed and 0 unchanged"):
        best_threshold([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        best_threshold([0.1, 0.2, 0.3], [True, False])


@pytest.fixture(scope="module")
def levircc(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_benchmark(root, seed=0, n_images=2, n_pairs=12, n_videos=2, size=64, splits=(0.5, 0.5, 0.0),
                    progress=False)
    pairs = read_levircc(root / "levircc", "val")
    assert {p.meta["changeflag"] for p in pairs} == {0, 1}   # both kinds to calibrate on
    return root / "levircc"


def test_calibrated_threshold_is_stored_and_used_by_a_review(tiny_checkpoint, levircc, tmp_path, capsys):
    model = shutil.copytree(tiny_checkpoint, tmp_path / "model")
    assert Engine.load(model).change_threshold == DEFAULT_THRESHOLD   # nothing calibrated yet

    assert main(["calibrate-threshold", "--model", str(model), "--data", str(levircc)]) == 0
    stored = json.loads((model / "config.json").read_text())
    assert "balanced accuracy" in capsys.readouterr().out and stored[f"{CONFIG_KEY}_info"]["changed"] > 0

    engine = Engine.load(model)
    pairs = read_levircc(levircc, "val")
    scores = engine.change_scores([read_pair(*p.images) for p in pairs])   # the same scores, recomputed
    expected = best_threshold(scores, [bool(p.meta["changeflag"]) for p in pairs]).threshold
    assert engine.change_threshold == stored[CONFIG_KEY] == pytest.approx(expected)

    before, after = write_mosaic_pair(tmp_path / "mosaics", size=128, tile=64, seed=1)
    out = tmp_path / "review.gpkg"
    run_review(engine, ReviewJob(str(before), str(after), str(out), tile_size=64))   # no threshold given
    ds = ogr.Open(str(out))
    (record,) = [f.items() for f in ds.GetLayerByName("unirs_review_runs")]
    assert json.loads(record["job_json"])["threshold"] == record["threshold"] == pytest.approx(expected)
    assert record["threshold_source"] == "calibrated in the checkpoint"
    tiles = [(f["score"], f["score_above_threshold"]) for f in ds.GetLayerByName("changes")]
    assert len(tiles) == 4 and all(changed == (score >= expected) for score, changed in tiles)


def test_calibrate_threshold_errors(tiny_checkpoint, tmp_path, capsys):
    assert main(["calibrate-threshold", "--model", str(tiny_checkpoint), "--data", str(tmp_path)]) == 2
    assert "LevirCCcaptions.json" in capsys.readouterr().err


def test_recalibrating_from_verdicts_is_kept_per_user_and_used_by_the_next_review(tiny_checkpoint, tmp_path,
                                                                                   monkeypatch, capsys):
    monkeypatch.setenv("UNIRS_HOME", str(tmp_path / "home"))   # the user's thresholds, this test's own
    engine = Engine.load(tiny_checkpoint)
    before, after = write_mosaic_pair(tmp_path / "mosaics", size=128, tile=32, seed=2)
    first = tmp_path / "first.gpkg"
    run_review(engine, ReviewJob(str(before), str(after), str(first), tile_size=32, threshold=0.0))
    ds = ogr.Open(str(first))
    ranked = sorted((f["score"], f.GetFID()) for f in ds.GetLayerByName("changes"))
    del ds
    assert len(ranked) >= 12
    for _, fid in ranked[:5]:                    # the analyst rejects the five lowest scores...
        _set_verdict(first, fid, "rejected", by="analyst")
    assert main(["calibrate-threshold", "--from-review", str(first)]) == 2   # ...not enough yet
    assert "needs at least 5 confirmed and 5 rejected tiles; first.gpkg has 0 confirmed and 5 rejected" in \
        capsys.readouterr().err
    for _, fid in ranked[-5:]:                   # ...and confirms the five highest
        _set_verdict(first, fid, "confirmed", by="analyst")

    assert main(["calibrate-threshold", "--from-review", str(first)]) == 0
    said = capsys.readouterr().out
    learnt = (ranked[4][0] + ranked[-5][0]) / 2   # midway between the highest rejected and lowest confirmed
    assert said.startswith(f"unirs-tiny: threshold 0 -> {learnt:.4g}, balanced accuracy on your verdicts "
                           "50.0 % -> 100.0 % (5 confirmed, 5 rejected)")
    stored = json.loads((tmp_path / "home" / USER_THRESHOLDS).read_text())["unirs-tiny"]
    assert stored["threshold"] == pytest.approx(learnt) and stored["review"] == str(first)

    assert Engine.load(tiny_checkpoint).change_threshold == pytest.approx(learnt)   # wins over the default
    second = tmp_path / "second.gpkg"
    summary = run_review(engine, ReviewJob(str(before), str(after), str(second), tile_size=32))
    assert summary.threshold == pytest.approx(learnt)
    assert summary.changed == sum(score >= learnt for score, _ in ranked) >= 5
    ds = ogr.Open(str(second))
    (record,) = [f.items() for f in ds.GetLayerByName("unirs_review_runs")]
    assert record["threshold"] == pytest.approx(learnt)
    assert record["threshold_source"].startswith("your verdicts in first.gpkg (")
