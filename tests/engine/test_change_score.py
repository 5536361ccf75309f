"""The change-score head: its place in the checkpoint, the engine's choice of score, what it responds
to, the training stage and its threshold, and the review's record of the score it used."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from osgeo import ogr
from safetensors.torch import load_file

from unirs_engine.cli import main
from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.data.synthetic.writer import write_benchmark
from unirs_engine.engine import Engine
from unirs_engine.inputs.pair import read_pair
from unirs_engine.model.change_score import FOLDER, ChangeScoreHead
from unirs_engine.model.checkpoint import CheckpointError, load_checkpoint, save_change_head
from unirs_engine.review import ReviewError, ReviewJob, run_review
from unirs_engine.thresholds import threshold_key

CONFIG_KEY = threshold_key("head")
from unirs_engine.testing.rasters import pattern, write_raster

TOWER_WIDTH = 32   # testing/tiny.py's vision_hidden


def monotone_head(dim: int = TOWER_WIDTH) -> ChangeScoreHead:
    """A head whose logit is 4 x the mean pooled feature difference: score 0.5 for identical features,
    growing with any difference (so what it responds to is what reaches it)."""
    head = ChangeScoreHead(dim, hidden=4, dropout=0.0)
    with torch.no_grad():
        head.mlp[0].weight.fill_(1.0 / (2 * dim))
        head.mlp[0].bias.zero_()
        head.mlp[3].weight.fill_(1.0)
        head.mlp[3].bias.zero_()
    return head.eval()


@pytest.fixture(scope="module")
def head_checkpoint(tiny_checkpoint, tmp_path_factory):
    path = shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("head") / "model")
    save_change_head(monotone_head(), path, {CONFIG_KEY: 0.7})
    return path


@pytest.fixture(scope="module")
def head_engine(head_checkpoint):
    return Engine.load(head_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """GDAL-written 64 px scenes: before; after = before with other channel gains; after = before with a
    bright square (a real change)."""
    root = tmp_path_factory.mktemp("pairs")
    scene = pattern(64, 64, seed=4)                                              # (3, H, W)
    regained = (scene * np.array([0.75, 0.9, 0.8])[:, None, None]).round().astype(np.uint8)
    changed = scene.copy()
    changed[:, 16:48, 16:48] = 250
    return {name: str(write_raster(root / f"{name}.tif", data))
            for name, data in (("before", scene), ("regained", regained), ("changed", changed))}


def test_the_head_round_trips_in_its_own_folder_of_the_checkpoint(tiny_checkpoint, tmp_path):
    path = shutil.copytree(tiny_checkpoint, tmp_path / "model")
    torch.manual_seed(0)
    head = ChangeScoreHead(TOWER_WIDTH, hidden=8, dropout=0.2)
    head.fit_standardisation(torch.rand(10, 2 * TOWER_WIDTH))
    save_change_head(head.eval(), path, {"training": {"seed": 0}})

    assert sorted(p.name for p in (path / FOLDER).iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in path.iterdir()) == sorted([p.name for p in tiny_checkpoint.iterdir()] + [FOLDER])
    loaded = load_checkpoint(path, device="cpu")
    saved = load_file(str(path / FOLDER / "model.safetensors"))
    assert set(saved) == set(head.state_dict())
    for name, tensor in head.state_dict().items():
        assert torch.equal(loaded.change_head.state_dict()[name], tensor)
    assert loaded.change_head_config["type"] == "unirs-change-score"
    assert loaded.change_head_config["training"] == {"seed": 0}
    before, after = torch.rand(3, 25, TOWER_WIDTH), torch.rand(3, 25, TOWER_WIDTH)
    assert torch.equal(loaded.change_head(before, after), head(before, after))


def test_a_head_for_another_tower_is_refused_naming_its_file(tiny_checkpoint, tmp_path):
    path = shutil.copytree(tiny_checkpoint, tmp_path / "model")
    save_change_head(monotone_head(dim=48), path, {})
    with pytest.raises(CheckpointError, match=r"change_score/config.json: dim is 48, expected .* 32"):
        load_checkpoint(path, device="cpu")


def test_without_a_head_the_cem_cosine_score_and_the_top_level_threshold_are_used(tiny_checkpoint, pairs):
    engine = Engine.load(tiny_checkpoint, device="cpu")
    assert engine.model.change_head is None and engine.info()["change_score"] == "cem-cosine"
    assert engine.threshold_config_file() == tiny_checkpoint / "config.json"
    assert engine.change_scores_available == ["cem-cosine", "feature-cosine"]
    chips = read_pair(pairs["before"], pairs["changed"])
    feats = engine.encode(list(chips))                                          # (2, P, D)
    with torch.no_grad():
        cosine = engine.model.model.mm_projector.layers["change"].change_score(feats[:1], feats[1:])
    assert engine.change_scores([chips]) == pytest.approx([float(cosine[0])])


def test_with_a_head_the_engine_says_so_and_uses_its_threshold(head_engine, head_checkpoint):
    assert head_engine.info()["change_score"] == "head"
    assert head_engine.change_threshold_with_source() == (0.7, "calibrated in the checkpoint")
    assert head_engine.threshold_config_file() == head_checkpoint / FOLDER / "config.json"
    assert head_engine.change_scores_available == ["head", "cem-cosine", "feature-cosine"]
    # Each score has its own threshold: the others are not calibrated in this checkpoint.
    assert head_engine.change_threshold_with_source("feature-cosine")[1].startswith("default")
    assert head_engine.threshold_config_file("cem-cosine") == head_checkpoint / "config.json"


def test_the_head_score_responds_to_a_real_change_and_not_to_a_gain_change(head_engine, pairs):
    same = read_pair(pairs["before"], pairs["before"])
    regained = read_pair(pairs["before"], pairs["regained"])
    changed = read_pair(pairs["before"], pairs["changed"])
    s_same, s_regained, s_changed = (s - 0.5 for s in head_engine.change_scores([same, regained, changed]))
    assert s_changed > 0.02 and abs(s_same) < 0.01 * s_changed and s_regained < 0.1 * s_changed
    # the gain matching is what makes it so: on the raw after chip the gain change reads as change
    with torch.no_grad():
        raw = head_engine.model.change_head(*head_engine.change_features([regained], gain_matched=False))
    assert float(raw[0]) - 0.5 > 5 * s_regained


def test_describe_change_reports_the_review_score(head_engine, pairs):
    result = head_engine.describe_change(pairs["before"], pairs["changed"], max_new_tokens=2)
    expected = head_engine.change_scores([read_pair(pairs["before"], pairs["changed"])])[0]
    assert result.extra["change_score"] == pytest.approx(expected)
    assert result.extra["change_score_kind"] == "head"


def _run_records(gpkg) -> list[dict]:
    ds = ogr.Open(str(gpkg))   # held while its layer is read (a layer outliving its dataset crashes GDAL)
    return [f.items() for f in ds.GetLayerByName("unirs_review_runs")]


def test_the_review_records_which_score_it_used_and_refuses_to_resume_with_another(head_engine, tiny_checkpoint,
                                                                                  tmp_path):
    before, after = write_mosaic_pair(tmp_path / "mosaics", size=128, tile=64, seed=1)
    out = tmp_path / "review.gpkg"
    summary = run_review(head_engine, ReviewJob(str(before), str(after), str(out), tile_size=64))
    assert summary.change_score == "head" and summary.threshold == 0.7
    (record,) = _run_records(out)
    assert record["change_score"] == "head" and record["threshold_source"] == "calibrated in the checkpoint"

    cosine = Engine.load(tiny_checkpoint, device="cpu")
    with pytest.raises(ReviewError, match="change_score='head'"):
        run_review(cosine, ReviewJob(str(before), str(after), str(out), tile_size=64))
    other = tmp_path / "cosine.gpkg"
    assert run_review(cosine, ReviewJob(str(before), str(after), str(other), tile_size=64)).change_score == "cem-cosine"
    (record,) = _run_records(other)
    assert record["change_score"] == "cem-cosine"


@pytest.fixture(scope="module")
def levircc(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_benchmark(root, seed=0, n_images=2, n_pairs=16, n_videos=2, size=64, splits=(0.5, 0.5, 0.0),
                    progress=False)
    return root / "levircc"


def _train(tiny_checkpoint, levircc, out) -> int:
    return main(["train", "change-score", "--config", "configs/demo-change-score.json",
                 "--set", f"out={out}", "--set", f"model={tiny_checkpoint}", "--set", f"data.root={levircc}",
                 "--set", "epochs=30", "--set", "batch_size=8", "--set", "copies=1", "--set", "seed=3"])


def test_the_stage_writes_a_loadable_checkpoint_whose_threshold_calibrate_recomputes(tiny_checkpoint, levircc,
                                                                                      tmp_path, capsys):
    assert _train(tiny_checkpoint, levircc, tmp_path / "run") == 0
    final = tmp_path / "run" / "checkpoint"
    config = json.loads((final / FOLDER / "config.json").read_text())
    training = config["training"]
    assert (training["seed"], training["pairs"], training["copies"], training["epochs"]) == (3, 8, 1, 30)
    assert "git_commit" in training and training["features_and_fit_s"] > 0
    info = config[f"{CONFIG_KEY}_info"]
    assert (info["score"], info["copies"], info["seed"], info["changed"] + info["unchanged"]) == ("head", 3, 3, 3 * 8)
    # the VILA-1.5 parts are the input checkpoint's, untouched
    for part in ("config.json", "mm_projector/model.safetensors", "vision_tower/model.safetensors"):
        assert (final / part).read_bytes() == (tiny_checkpoint / part).read_bytes()
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2   # every 25 epochs + the last

    engine = Engine.load(final, device="cpu")
    assert engine.change_score == "head" and engine.change_threshold == pytest.approx(config[CONFIG_KEY])
    stored = config[CONFIG_KEY]
    assert main(["calibrate-threshold", "--model", str(final), "--data", str(levircc), "--split", "val"]) == 0
    assert "head score threshold" in capsys.readouterr().out
    assert json.loads((final / FOLDER / "config.json").read_text())[CONFIG_KEY] == pytest.approx(stored)

    # deterministic for its seed
    assert _train(tiny_checkpoint, levircc, tmp_path / "again") == 0
    again = load_file(str(tmp_path / "again" / "checkpoint" / FOLDER / "model.safetensors"))
    for name, tensor in load_file(str(final / FOLDER / "model.safetensors")).items():
        assert torch.equal(again[name], tensor)
