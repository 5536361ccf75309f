"""The synthetic benchmark: generator -> real files -> the dataset readers; events, captions, mosaics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import rasterio

from unirs_engine import prompts
from unirs_engine.data import load_samples
from unirs_engine.data.synthetic import write_benchmark, write_mosaic_pair
from unirs_engine.data.synthetic.captions import NO_CHANGE_SENTENCES, change_captions
from unirs_engine.cli import main as cli_main
from unirs_engine.data.synthetic.events import CHANGE_EVENTS, NO_CHANGE, make_pair
from unirs_engine.data.synthetic.render import render
from unirs_engine.data.synthetic.scene import REGION_NAMES, make_scene
from unirs_engine.data.synthetic.video import N_FRAMES, VIDEO_CLASSES
from unirs_engine.data.synthetic.writer import assign_splits
from unirs_engine.types import InputKind

SMALL = dict(n_images=20, n_pairs=20, n_videos=8, size=64)
COUNT_WORDS = ("a", "two", "several", "many")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "bench"
    write_benchmark(out, seed=3, progress=False, **SMALL)
    return out


def test_readers_load_every_split_with_the_right_counts(bench):
    per_split = {s: load_samples("synthetic", bench, split=s, protocol="full") for s in ("train", "val", "test")}
    counts = {s: Counter(x.meta["benchmark"] for x in samples) for s, samples in per_split.items()}
    assert counts == {"train": {"rsvqa": 16 * 6, "levir-cc": 16, "era": 6},
                      "val": {"rsvqa": 2 * 6, "levir-cc": 2, "era": 1},
                      "test": {"rsvqa": 2 * 6, "levir-cc": 2, "era": 1}}
    # The GeoChat protocol (evaluation default) drops the count questions.
    test = load_samples("synthetic", bench, split="test")
    assert Counter(x.meta.get("question_type") for x in test if x.meta["benchmark"] == "rsvqa") == \
        {"presence": 4, "comp": 4, "rural_urban": 2}
    kinds = {x.meta["benchmark"]: x.kind for x in test}
    assert kinds == {"rsvqa": InputKind.IMAGE, "levir-cc": InputKind.PAIR, "era": InputKind.SEQUENCE}
    manifest = json.loads((bench / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["version"] == 1
    assert manifest["counts"]["levircc"]["pairs"] == {"train": 16, "val": 2, "test": 2}


def test_answers_are_exact_strings_and_yes_no_balanced(bench):
    samples = load_samples("synthetic", bench, split="train", protocol="full")
    vqa = [s for s in samples if s.meta["benchmark"] == "rsvqa"]
    for s in vqa:
        allowed = {"rural_urban": {"rural", "urban"}, "count": set("0123456789")}.get(s.meta["question_type"], {"yes", "no"})
        assert s.answer in allowed, (s.instruction, s.answer)
        assert s.instruction.endswith("\n" + prompts.SHORT_ANSWER_SUFFIX)
    yes_no = Counter(s.answer for s in vqa if s.meta["question_type"] in ("presence", "comp"))
    assert abs(yes_no["yes"] - yes_no["no"]) <= 0.15 * sum(yes_no.values())
    layouts = Counter(s.answer for s in vqa if s.meta["question_type"] == "rural_urban")
    assert layouts == {"rural": 8, "urban": 8}


def test_pairs_are_georeferenced_geotiffs_with_five_consistent_captions(bench):
    pairs = [s for s in load_samples("synthetic", bench, split="train") if s.kind is InputKind.PAIR]
    assert sum(s.meta["changeflag"] for s in pairs) == 8      # half of the 16 train pairs changed
    for s in pairs:
        assert len(s.references) == 5 and len(set(s.references)) == 5
        assert all(prompts.says_no_change(c) == (s.meta["changeflag"] == 0) for c in s.references), s.references
        with rasterio.open(s.images[0]) as a, rasterio.open(s.images[1]) as b:
            assert a.crs is not None and a.crs.to_epsg() // 100 == 326     # UTM north
            assert (a.crs, a.transform) == (b.crs, b.transform)            # the same place at two dates
            assert (a.count, a.width, a.height, a.dtypes[0]) == (3, 64, 64, "uint8")
            assert a.profile["tiled"] and a.compression.name == "lzw"


def test_videos_decode_with_the_right_frame_count_and_stacks_carry_dates(bench):
    videos = [s for s in load_samples("synthetic", bench, split="train") if s.kind is InputKind.SEQUENCE]
    for s in videos:
        assert s.meta["class"] in VIDEO_CLASSES and s.references == [s.meta["class"]]
        with av.open(s.video) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == N_FRAMES and frames[0].shape == (64, 64, 3)
    stack = sorted((bench / "era" / "stacks").iterdir())[0]
    tifs = sorted(stack.glob("frame_*.tif"))
    assert len(tifs) == N_FRAMES
    with rasterio.open(tifs[0]) as first, rasterio.open(tifs[-1]) as last:
        assert first.crs is not None
        assert first.tags()["ACQUISITION_DATE"] < last.tags()["ACQUISITION_DATE"]


def test_same_seed_same_json_other_seed_differs(bench, tmp_path):
    again = tmp_path / "again"
    write_benchmark(again, seed=3, progress=False, **SMALL)
    jsons = sorted(p.relative_to(bench) for p in bench.rglob("*.json"))
    assert len(jsons) == 3 * 3 + 4     # 9 RSVQA files, captions, ERA split, manifest, land-cover classes
    for rel in jsons:
        assert (bench / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    write_benchmark(other, seed=4, progress=False, **SMALL)
    assert (other / "levircc/LevirCCcaptions.json").read_bytes() != (bench / "levircc/LevirCCcaptions.json").read_bytes()


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "old.txt").write_text("x")
    tiny = dict(n_images=2, n_pairs=2, n_videos=0, size=32)
    with pytest.raises(FileExistsError, match="already exists"):
        write_benchmark(out, seed=0, progress=False, **tiny)
    write_benchmark(out, seed=0, progress=False, overwrite=True, **tiny)
    assert not (out / "old.txt").exists() and (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]   # no temporary folders left
    assert load_samples("era", out / "era", split="train") == []
    with pytest.raises(ValueError, match="even number"):
        write_benchmark(tmp_path / "c", seed=0, progress=False, n_images=1, n_pairs=1, n_videos=1, size=33)


def test_killed_run_leaves_no_benchmark(tmp_path):
    out = tmp_path / "killed"
    code = ("import sys; from unirs_engine.data.synthetic import write_benchmark; "
            f"write_benchmark({str(out)!r}, seed=0, n_images=5000, n_pairs=0, n_videos=0, size=32, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".killed.partial-*/rsvqa/Images_LR/3.tif")):
            assert proc.poll() is None and time.monotonic() < deadline, "the generator never started writing"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()


def test_assign_splits_exact_shares_spread_over_groups():
    groups = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    labels = assign_splits(groups, (0.8, 0.1, 0.1), np.random.default_rng(0))
    assert Counter(labels) == {"train": 80, "val": 10, "test": 10}
    for g, n in (("a", 50), ("b", 30), ("c", 20)):
        test = sum(1 for x, l in zip(groups, labels) if x == g and l == "test")
        assert abs(test - n / 10) <= 1


def test_every_changed_caption_says_what_how_many_and_where():
    assert all(prompts.says_no_change(s) for s in NO_CHANGE_SENTENCES)
    for event in CHANGE_EVENTS:
        for i in range(15):
            rng = np.random.default_rng([11, i])
            before, change = make_pair(rng, event)
            captions = change_captions(change, rng)
            assert len(set(captions)) == 5
            for c in captions:
                assert not prompts.says_no_change(c), c
                assert REGION_NAMES[change.region] in c, c
                if event != "flood":   # floods name the lake or river instead of a count
                    assert re.match(rf"^(there (is|are) |the crops in )?({'|'.join(COUNT_WORDS)}) ", c), c


def test_changes_are_visible_and_no_change_differs_only_by_noise():
    for event in CHANGE_EVENTS:
        for i in range(10):
            before, change = make_pair(np.random.default_rng([12, i]), event)
            changed = np.abs(render(before, 64) - render(change.after, 64)).max(-1) > 20   # (64, 64)
            assert changed.mean() >= 0.004, (event, i)   # at least one whole building's worth
    before, change = make_pair(np.random.default_rng(0), NO_CHANGE)
    np.testing.assert_array_equal(render(before, 64), render(change.after, 64))


def test_scene_layouts_and_water_is_visible_where_the_scene_says():
    for i in range(12):
        scene = make_scene(np.random.default_rng([13, i]), "urban" if i % 2 else "rural")
        if scene.layout == "urban":
            assert scene.count("building") >= 5 and scene.count("road") >= 1
        else:
            assert scene.count("building") <= 3
        rgb = render(scene, 64)
        water = (rgb[..., 0] < 70) & (rgb[..., 2] > rgb[..., 0] + 40)
        assert (water.mean() > 0.01) == (scene.count("water") > 0), i


def test_synth_command_registers_and_runs(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path / "cli"), "--seed", "1", "--images", "2", "--pairs", "2",
            "--videos", "1", "--size", "32", "--quiet"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "2 (2/0/0 train/val/test) pairs" in printed
    assert cli_main(argv) == 2 and "unirs synth: error: " in capsys.readouterr().err   # already exists


def test_synth_mosaic_command(tmp_path, capsys):
    argv = ["synth-mosaic", "--out", str(tmp_path / "m"), "--size", "256", "--tile", "128"]
    assert cli_main([*argv, "--after-crs", "EPSG:4326"]) == 0
    assert "changes.json" in capsys.readouterr().out
    with rasterio.open(tmp_path / "m" / "after_2023-06-01.tif") as a:
        assert a.crs.to_epsg() == 4326
    assert cli_main([*argv, "--after-crs", "EPSG:99999999"]) == 2
    assert "unirs synth-mosaic: error: after_crs 'EPSG:99999999' is not a CRS" in capsys.readouterr().err


def test_unirs_cli_runs_synth(tmp_path):
    out = tmp_path / "via-cli"
    run = subprocess.run([sys.executable, "-m", "unirs_engine.cli", "synth", "--out", str(out), "--images", "1",
                          "--pairs", "1", "--videos", "1", "--size", "32", "--quiet"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert (out / "manifest.json").is_file()


def test_mosaic_pair_warped_with_hole_and_ground_truth(tmp_path):
    before, after = write_mosaic_pair(tmp_path / "m", size=640, seed=2, tile=128, change_fraction=0.25,
                                      after_crs="EPSG:3857", after_res_factor=1.5, nodata_hole=True)
    truth = json.loads((tmp_path / "m" / "changes.json").read_text())
    assert len(truth["changed"]) == round(0.25 * 25)
    assert all(t["event"] in CHANGE_EVENTS and len(t["captions"]) == 5 for t in truth["changed"])
    with rasterio.open(before) as b, rasterio.open(after) as a:
        assert b.crs.to_string() == truth["crs"] and b.shape == (640, 640) and b.nodata is None
        assert a.crs.to_epsg() == 3857 and a.nodata == 0
        assert a.res[0] > 1.4 * b.res[0]                 # coarser than the default warp resolution
        assert b.overviews(1) == [2] and b.profile["tiled"] and b.compression.name == "lzw"
        assert b.tags()["ACQUISITION_DATE"] < a.tags()["ACQUISITION_DATE"]
        hole = rasterio.windows.from_bounds(*truth["nodata_hole"]["bounds"], transform=a.transform)
        centre = a.read(1, window=rasterio.windows.Window(hole.col_off + hole.width / 2 - 2,
                                                          hole.row_off + hole.height / 2 - 2, 4, 4))
        assert (centre == 0).all()


def test_mosaic_ground_truth_tiles_are_where_the_pixels_changed(tmp_path):
    before, after = write_mosaic_pair(tmp_path / "m", size=512, seed=5, tile=128, change_fraction=0.3)
    truth = json.loads((tmp_path / "m" / "changes.json").read_text())
    changed = {(t["row"], t["col"]) for t in truth["changed"]}
    with rasterio.open(before) as b, rasterio.open(after) as a:
        assert (a.crs, a.transform) == (b.crs, b.transform)
        diff = np.abs(b.read().astype(int) - a.read().astype(int)).max(0) > 40      # (512, 512)
    moved = {(r, c) for r in range(4) for c in range(4) if diff[r * 128:(r + 1) * 128, c * 128:(c + 1) * 128].mean() > 0.003}
    assert moved == changed


def test_mosaic_streams_tile_by_tile(tmp_path):
    tracemalloc.start()
    try:
        write_mosaic_pair(tmp_path / "big", size=2048, seed=0, tile=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2048 * 2048 * 3 / 2      # never near one whole uint8 mosaic in memory


# ---- land-cover fractions (dense targets of the vision stage) -------------------------------------

def test_landcover_beside_every_image_and_pair_date_matches_the_pixels(bench):
    from unirs_engine.data.synthetic.landcover import CLASSES, landcover_path, read_landcover
    from unirs_engine.data.synthetic.scene import GRID

    assert json.loads((bench / "landcover.json").read_text())["classes"] == list(CLASSES)
    samples = load_samples("synthetic", bench, split="train")
    pictures = {p for s in samples if s.kind is not InputKind.SEQUENCE for p in s.images}
    assert len(pictures) == 16 + 2 * 16
    water_seen = 0
    for path in sorted(pictures):
        stored = np.load(landcover_path(path))
        assert stored.shape == (len(CLASSES), GRID, GRID) and stored.dtype == np.uint8
        cover = read_landcover(path)                                        # (C, 32, 32) in 0..1
        assert cover.sum(0).max() <= 1.02                                  # one kind per pixel (+ rounding)
        with rasterio.open(path) as src:
            rgb = np.moveaxis(src.read(), 0, -1).astype(int)               # (64, 64, 3)
        blue = ((rgb[..., 0] < 70) & (rgb[..., 2] > rgb[..., 0] + 40)).reshape(GRID, 2, GRID, 2).mean((1, 3))
        water = cover[CLASSES.index("water")]
        assert abs(water.mean() - blue.mean()) < 0.01, path                 # shadows on water are not blue
        if water.mean() > 0.02:
            water_seen += 1
            assert np.corrcoef(water.ravel(), blue.ravel())[0, 1] > 0.9, path
    assert water_seen >= 5


def test_video_landcover_follows_each_frame_as_the_camera_saw_it(bench):
    from unirs_engine.data.synthetic.landcover import CLASSES, read_video_landcover
    from unirs_engine.data.synthetic.scene import GRID
    from unirs_engine.inputs.video import read_video_frames

    videos = [s for split in ("train", "val", "test") for s in load_samples("synthetic", bench, split=split)
              if s.kind is InputKind.SEQUENCE]
    assert len(videos) == 8
    cars = {}
    for sample in videos:
        cover = read_video_landcover(sample.video)                          # (12, C, 32, 32) in 0..1
        assert cover.shape == (N_FRAMES, len(CLASSES), GRID, GRID) and cover.sum(1).max() <= 1.02
        cars[sample.references[0]] = cover[:, CLASSES.index("car")].sum((1, 2)).mean()
        frames = read_video_frames(sample.video, n=N_FRAMES)                # all 12, 64 x 64
        for chip, water in zip(frames, cover[:, CLASSES.index("water")]):
            rgb = chip.image.astype(int)                                    # (64, 64, 3)
            blue = ((rgb[..., 0] < 70) & (rgb[..., 2] > rgb[..., 0] + 40)).reshape(GRID, 2, GRID, 2).mean((1, 3))
            # compression blurs the edges of water out of the blue test, more or less as libx264's
            # threads split the work (at 64 px edges are a large share: 0.10 for 0.12 seen once)
            assert blue.mean() == pytest.approx(water.mean(), rel=0.3, abs=0.01), sample.video
            if water.mean() > 0.03:   # the panning camera's frame, not the scene's grid
                assert np.corrcoef(water.ravel(), blue.ravel())[0, 1] > 0.9, sample.video
    assert cars["traffic congestion"] > 5 * max(cars["non-event"], 0.1)


def test_landcover_fractions_follow_the_objects_and_their_painting_order():
    from unirs_engine.data.synthetic.landcover import CLASSES, fractions
    from unirs_engine.data.synthetic.scene import Scene

    scene = Scene("rural", [], texture_seed=0)
    scene.add("water", "rect", (0, 0, 8, 8))
    scene.add("trees", "circles", ((4.0, 4.0, 2.0),))           # painted over the water
    scene.add("field", "rect", (16, 16, 32, 24))
    cover = fractions(scene, 64)                                 # (C, 32, 32)
    water, trees, field = (cover[CLASSES.index(k)] for k in ("water", "trees", "field"))
    assert field[16:, 16:24].min() == 1 and field.sum() == 16 * 8
    assert trees[4, 4] == 1 and water[4, 4] == 0 and water[0, 0] == 1 and water[8:].sum() == 0
    assert np.allclose((water + trees)[:8, :8], 1) and water.sum() + trees.sum() == 64
    assert cover.sum() == 64 + 16 * 8


def _answer_from_counts(question: str, count: dict[str, int]) -> str:
    """The answer a count or comparison question has, given the picture's object counts by kind."""
    from unirs_engine.data.synthetic.scene import NOUNS

    plural = {many: kind for kind, (_, many) in NOUNS.items()}
    if m := re.fullmatch(r"How many (.+) are there\?", question):
        return str(count[plural[m[1]]])
    how, a, b = next((how, plural[m[1]], plural[m[2]]) for how, pattern in (
        ("more", r"Are there more (.+) than (.+)\?"), ("less", r"Are there less (.+) than (.+)\?"),
        ("equal", r"Is the number of (.+) equal to the number of (.+)\?"))
        if (m := re.fullmatch(pattern, question)))
    holds = {"more": count[a] > count[b], "less": count[a] < count[b], "equal": count[a] == count[b]}[how]
    return "yes" if holds else "no"


def test_object_counts_beside_every_image_and_pair_date_answer_its_questions(bench):
    from unirs_engine.data.synthetic.object_counts import COUNTED, counts_path, read_counts

    assert json.loads((bench / "landcover.json").read_text())["counted"] == list(COUNTED)
    samples = load_samples("synthetic", bench, split="train", protocol="full")
    pairs = [p for s in samples if s.kind is InputKind.PAIR for p in s.images]
    assert len(pairs) == 2 * 16 and all(read_counts(p).shape == (len(COUNTED),) for p in pairs)
    asked = Counter()
    for sample in (s for s in samples if s.meta.get("question_type") in ("count", "comp")):
        assert np.load(counts_path(sample.images[0])).dtype == np.uint8
        count = dict(zip(COUNTED, read_counts(sample.images[0]).tolist()))
        question = sample.instruction.split("\n")[0]
        assert sample.references[0] == _answer_from_counts(question, count), (sample.images[0], question)
        asked[sample.meta["question_type"]] += 1
    assert asked == {"count": 16, "comp": 32}


def _questions_answered_from_counts(samples: list, question_type: str, train_images: set[str]) -> list[str]:
    """The questions of training `samples` about every one of `train_images`, each checked to be
    of `question_type`, in rsvqa-lr's prompt form, and answered right from its image's counts."""
    from unirs_engine.data.synthetic.object_counts import COUNTED, read_counts

    assert len({s.sample_id for s in samples}) == len(samples)
    assert {s.images[0] for s in samples} == train_images
    questions = []
    for sample in samples:
        question, suffix = sample.instruction.split("\n")
        assert suffix == prompts.SHORT_ANSWER_SUFFIX and sample.kind is InputKind.IMAGE
        count = dict(zip(COUNTED, read_counts(sample.images[0]).tolist()))
        assert sample.references == [_answer_from_counts(question, count)], (sample.images[0], question)
        assert sample.meta["question_type"] == question_type
        questions.append(question)
    return questions


def test_more_comparisons_for_training_are_right_balanced_and_only_of_their_split(bench):
    root = bench / "rsvqa"
    extra = load_samples("synthetic-comparisons", root, split="train", per_image=6)
    train_images = {s.images[0] for s in load_samples("rsvqa-lr", root, split="train")}
    assert len(extra) == 16 * 6
    forms = Counter()
    for sample, question in zip(extra, _questions_answered_from_counts(extra, "comp", train_images)):
        form = "equal" if question.startswith("Is the number") else question.split()[2]
        forms[form, sample.references[0]] += 1
    # The writer asks "equal ... yes" about one question in ten; here about one in six.
    assert len(forms) == 6 and forms["equal", "yes"] >= 12 and min(forms.values()) >= 12, forms
    again = load_samples("synthetic-comparisons", root, split="train", per_image=6)
    assert [(s.instruction, s.references) for s in again] == [(s.instruction, s.references) for s in extra]
    other = load_samples("synthetic-comparisons", root, split="train", per_image=6, seed=1)
    assert [s.instruction for s in other] != [s.instruction for s in extra]
    test_images = {s.images[0] for s in load_samples("synthetic-comparisons", root, split="test")}
    assert test_images and not test_images & train_images


def test_near_tie_comparisons_compare_kinds_within_max_gap_where_the_image_has_them(bench):
    import itertools

    from unirs_engine.data.synthetic.object_counts import COUNTED, read_counts
    from unirs_engine.data.synthetic.questions import COMPARE
    from unirs_engine.data.synthetic.scene import NOUNS

    def asked(question):  # (form, kind a, kind b) of a comparison
        return next((form, a, b) for form, (a, b) in itertools.product(COMPARE, itertools.permutations(NOUNS, 2))
                    if question == COMPARE[form].format(a=NOUNS[a][1], b=NOUNS[b][1]))

    root = bench / "rsvqa"
    train_images = {s.images[0] for s in load_samples("rsvqa-lr", root, split="train")}
    near = {}
    for max_gap in (None, 1):
        extra = load_samples("synthetic-comparisons", root, split="train", per_image=6, max_gap=max_gap)
        gaps = []
        for sample, question in zip(extra, _questions_answered_from_counts(extra, "comp", train_images)):
            count = dict(zip(COUNTED, read_counts(sample.images[0]).tolist()))
            form, a, b = asked(question)
            gaps.append(abs(count[a] - count[b]))
            if max_gap is not None and gaps[-1] > max_gap:
                # only where no pair of kinds within the gap asks the same form with the same answer
                alike = [x for x, y in itertools.permutations(NOUNS, 2) if abs(count[x] - count[y]) <= max_gap
                         and _answer_from_counts(COMPARE[form].format(a=NOUNS[x][1], b=NOUNS[y][1]), count)
                         == sample.references[0]]
                assert not alike, (question, count)
        near[max_gap] = sum(g <= 1 for g in gaps) / len(gaps)
    assert near[1] >= 0.9 and near[1] > near[None], near
    with pytest.raises(ValueError, match="max_gap must be >= 0"):
        load_samples("synthetic-comparisons", root, split="train", max_gap=-1)


def test_more_comparisons_refuse_images_without_counts(bench, tmp_path):
    import shutil

    from unirs_engine.data import DataError, SkippedRecordWarning

    root = tmp_path / "rsvqa"
    shutil.copytree(bench / "rsvqa", root)
    image = Path(load_samples("rsvqa-lr", root, split="train")[0].images[0])
    missing = image.parent / "counts" / f"{image.stem}.npy"
    missing.unlink()
    with pytest.raises(DataError, match=f"no object counts beside .*{missing.stem}.tif"):
        load_samples("synthetic-comparisons", root, split="train")
    with pytest.warns(SkippedRecordWarning, match="no object counts"):
        kept = load_samples("synthetic-comparisons", root, split="train", on_error="skip", per_image=2)
    assert len(kept) == 2 * 15
    with pytest.raises(ValueError, match="per_image must be >= 1"):
        load_samples("synthetic-comparisons", root, split="train", per_image=0)


def test_how_many_questions_for_training_are_right_and_take_turns_over_the_kinds(bench):
    from unirs_engine.data.synthetic.object_counts import COUNTED

    root = bench / "rsvqa"
    extra = load_samples("synthetic-counts", root, split="train", per_image=3)
    train_images = {s.images[0] for s in load_samples("rsvqa-lr", root, split="train")}
    assert len(extra) == 16 * 3
    asked = Counter(_questions_answered_from_counts(extra, "count", train_images))
    # 48 questions over 6 kinds, in turn: every kind 8 times, never twice about one image.
    assert sorted(asked.values()) == [8] * len(COUNTED), asked
    assert all(len({s.instruction for s in extra if s.images[0] == image}) == 3 for image in train_images)
    test_images = {s.images[0] for s in load_samples("synthetic-counts", root, split="test")}
    assert test_images and not test_images & train_images
    with pytest.raises(ValueError, match="per_image must be <= 6"):
        load_samples("synthetic-counts", root, split="train", per_image=7)
    with pytest.raises(ValueError, match="per_image must be >= 1"):
        load_samples("synthetic-counts", root, split="train", per_image=0)


def test_writing_landcover_and_counts_leaves_every_other_file_as_it_was(bench, tmp_path, monkeypatch):
    from unirs_engine.data.synthetic import writer

    monkeypatch.setattr(writer, "write_landcover", lambda *args: None)
    monkeypatch.setattr(writer, "write_video_landcover", lambda *args: None)
    monkeypatch.setattr(writer, "write_counts", lambda *args: None)
    plain = tmp_path / "plain"
    write_benchmark(plain, seed=3, progress=False, **SMALL)
    files = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    with_masks = {p.relative_to(bench) for p in bench.rglob("*") if p.is_file()}
    assert {rel for rel in with_masks if not {"landcover", "counts"} & set(rel.parts)} == set(files)
    assert len(files) > 100
    for rel in files:   # libx264 is not byte-reproducible run to run (threads), with or without masks
        if rel.suffix != ".mp4":
            assert (bench / rel).read_bytes() == (plain / rel).read_bytes(), rel
