"""run_review end to end on small GDAL-written mosaics with the tiny model: skips, output, batching,
kill/cancel and resume, bounded reading."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import torch
from osgeo import ogr
from osgeo_utils.samples.validate_gpkg import check as validate_gpkg
from rasterio.transform import Affine

from unirs_engine.data.synthetic.mosaic import GROUND_TRUTH, write_mosaic_pair
from unirs_engine.engine import Engine
from unirs_engine.review import LAYER, ReviewError, ReviewJob, plan_review, run_review
from unirs_engine.review.tiles import TileReader
from unirs_engine.testing.rasters import write_raster

ogr.UseExceptions()
SIZE = 256


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def holed(tmp_path_factory) -> dict:
    """Same-CRS mosaics whose after has a nodata hole, and the writer's record of it."""
    root = tmp_path_factory.mktemp("holed")
    before, after = write_mosaic_pair(root, size=SIZE, tile=64, nodata_hole=True, seed=3)
    truth = json.loads((root / GROUND_TRUTH).read_text())
    return {"before": str(before), "after": str(after), "truth": truth, "root": root}


def _job(m, name: str, **kw) -> ReviewJob:
    return ReviewJob(m["before"], m["after"], str(m["root"] / name), **kw)


# The resumable job of the kill/cancel tests: 64 tiles of 32 px, every valid tile captioned.
RESUME = dict(tile_size=32, caption_all=True, batch_size=4, date_before="2019-06-01", date_after="2023-06-01")


@pytest.fixture(scope="module")
def reference(engine, holed) -> list[tuple]:
    """The uninterrupted review that stopped-and-resumed ones must equal."""
    job = _job(holed, "reference.gpkg", **RESUME)
    summary = run_review(engine, job)
    assert summary.done == summary.total_tiles == 64 and not summary.cancelled
    return _rows(job.out)


def _rows(path) -> list[tuple]:
    """(row, col, score, score_above_threshold, caption_says_change, caption, bounds envelope) of every
    feature, read with OGR."""
    ds = ogr.Open(str(path))
    layer = ds.GetLayerByName(LAYER)
    rows = [(f["tile_row"], f["tile_col"], f["score"], f["score_above_threshold"], f["caption_says_change"],
             f["caption"], f.GetGeometryRef().GetEnvelope()) for f in layer]
    return rows


def _same(got: list[tuple], want: list[tuple]) -> None:
    assert [(r[0], r[1]) for r in got] == [(r[0], r[1]) for r in want]       # same tiles, same order
    np.testing.assert_allclose([r[2] for r in got], [r[2] for r in want], atol=1e-5)
    assert [r[3:] for r in got] == [r[3:] for r in want]                     # decisions, captions, polygons


def _run_state(path) -> dict:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        keys = ("next_tile", "total_tiles", "finished", "skipped_nodata", "skipped_outside")
        return dict(zip(keys, conn.execute(f"SELECT {', '.join(keys)} FROM unirs_review_runs").fetchone()))
    finally:
        conn.close()


def _valid(path) -> None:
    assert validate_gpkg(str(path), extra_checks=True, warning_as_error=True) == []
    info = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(path)], capture_output=True, text=True)
    assert info.returncode == 0 and info.stderr == ""


# ---- skipped tiles --------------------------------------------------------------------------------

def test_nodata_hole_tiles_are_skipped_and_counted_as_the_writer_made_them(engine, holed):
    job = _job(holed, "hole.gpkg", tile_size=32)
    plan = plan_review(job)
    fractions = _outside_hole(plan, holed["truth"]["nodata_hole"]["window"])
    clear_skip = {t for t, f in fractions.items() if f < 0.4}
    clear_keep = {t for t, f in fractions.items() if f > 0.6}
    assert len(clear_skip) >= 2 and any(f == 0 for f in fractions.values())  # the hole swallows whole tiles

    summary = run_review(engine, job)
    written = {(r[0], r[1]) for r in _rows(job.out)}
    assert summary.skipped_outside == 0                       # a hole is nodata, not outside the mosaic
    assert clear_keep <= written and not clear_skip & written
    assert summary.skipped_nodata == plan.total_tiles - len(written) >= len(clear_skip)
    assert summary.total_tiles == summary.done == 64


def test_a_nodata_hole_in_one_date_is_not_change(engine, holed, tmp_path):
    """after = before with the hole cut out: tiles partly in the hole compare only the pixels both dates
    have, so every scored tile is unchanged (pad grey against ground would score as change)."""
    with rasterio.open(holed["before"]) as src:
        data, profile = src.read(), src.profile
    col0, row0, width, height = holed["truth"]["nodata_hole"]["window"]
    profile["nodata"] = 0
    data[:, row0:row0 + height, col0:col0 + width] = 0
    after = tmp_path / "same_with_hole.tif"
    with rasterio.open(after, "w", **profile) as dst:
        dst.write(data)
    job = ReviewJob(holed["before"], str(after), str(tmp_path / "same.gpkg"), tile_size=48)
    plan = plan_review(job)
    partly = [tile for tile, f in _outside_hole(plan, (col0, row0, width, height)).items() if 0.5 <= f < 1]
    assert partly                                             # tiles with some hole but kept

    run_review(engine, job)
    scores = {(r[0], r[1]): r[2] for r in _rows(job.out)}
    assert set(partly) <= set(scores)
    assert max(scores.values()) < 1e-4, scores


def _outside_hole(plan, hole) -> dict[tuple[int, int], float]:
    """(row, col) -> fraction of the tile outside the hole window (col0, row0, width, height), given in
    before pixels (== grid pixels: the grid is the before mosaic's)."""
    col0, row0, width, height = hole
    valid = np.ones((SIZE, SIZE), bool)
    valid[row0:row0 + height, col0:col0 + width] = False
    return {plan.window(i)[:2]: valid[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width].mean()
            for i in range(plan.total_tiles) for w in [plan.window(i)[2]]}


def test_tiles_outside_a_mosaic_footprint_are_skipped_as_outside(engine, holed, tmp_path):
    """after: a copy of before turned 30 degrees about its centre, so before's corners lie outside it."""
    with rasterio.open(holed["before"]) as src:
        data, transform, crs = src.read(), src.transform, src.crs
    turned = transform * Affine.rotation(30, pivot=(SIZE / 2, SIZE / 2))
    after = write_raster(tmp_path / "turned.tif", data, crs=crs.to_string(), transform=turned)
    job = ReviewJob(holed["before"], str(after), str(tmp_path / "turned.gpkg"), tile_size=32)
    plan = plan_review(job)
    # Expected with OGR geometry: how much of each tile the turned footprint covers.
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for col, row in ((0, 0), (SIZE, 0), (SIZE, SIZE), (0, SIZE), (0, 0)):
        ring.AddPoint_2D(*(turned * (col, row)))
    footprint = ogr.Geometry(ogr.wkbPolygon)
    footprint.AddGeometry(ring)
    cover = {}
    for i in range(plan.total_tiles):
        row, col, window = plan.window(i)
        left, bottom, right, top = plan.bounds(window)
        tile = ogr.CreateGeometryFromWkt(f"POLYGON(({left} {bottom},{right} {bottom},{right} {top},"
                                         f"{left} {top},{left} {bottom}))")
        cover[(row, col)] = tile.Intersection(footprint).GetArea() / tile.GetArea()
    outside = {t for t, c in cover.items() if c == 0}
    slivers = {t for t, c in cover.items() if 0 < c < 0.01}    # under a pixel: either way is right
    assert len(outside) >= 4

    summary = run_review(engine, job)
    written = {(r[0], r[1]) for r in _rows(job.out)}
    assert len(outside) <= summary.skipped_outside <= len(outside) + len(slivers)
    assert {t for t, c in cover.items() if c > 0.6} <= written and not (outside & written)
    assert summary.skipped_outside + summary.skipped_nodata + len(written) == plan.total_tiles


# ---- the output -----------------------------------------------------------------------------------

def test_output_in_another_crs_and_resolution_is_a_valid_layer_on_the_grid(engine, tmp_path):
    before, after = write_mosaic_pair(tmp_path / "m", size=SIZE, tile=64, after_crs="EPSG:3857",
                                      after_res_factor=2.0, seed=5)
    job = ReviewJob(str(before), str(after), str(tmp_path / "webm.gpkg"), tile_size=64, threshold=0.0,
                    date_before="2019-06-01", date_after="2023-06-01")
    plan = plan_review(job)
    summary = run_review(engine, job)
    assert (summary.total_tiles, summary.done, summary.skipped_outside) == (16, 16, 0)
    _valid(job.out)
    ds = ogr.Open(job.out)
    layer = ds.GetLayerByName(LAYER)
    with rasterio.open(before) as src:
        assert layer.GetSpatialRef().GetAuthorityCode(None) == str(src.crs.to_epsg())
    assert layer.GetFeatureCount() == 16 - summary.skipped_nodata
    for feat in layer:
        index = feat["tile_row"] * plan.cols + feat["tile_col"]
        left, bottom, right, top = plan.bounds(plan.window(index)[2])
        assert feat.GetGeometryRef().GetEnvelope() == (left, right, bottom, top)
        assert feat["caption"] and feat["score_above_threshold"] == 1   # threshold 0: every tile changed...
        assert feat["caption_says_change"] in (0, 1)                    # ...and captioned
        assert (feat["date_before"], feat["model"]) == ("2019/06/01", "unirs-tiny")
    assert summary.captioned == layer.GetFeatureCount()


def test_below_threshold_tiles_get_no_caption(engine, holed):
    job = _job(holed, "high.gpkg", tile_size=64, threshold=2.0)   # 1 - cosine never reaches 2
    summary = run_review(engine, job)
    rows = _rows(job.out)
    assert rows and summary.captioned == summary.changed == summary.disagreements == 0
    assert all(r[3] == 0 and r[4] is None and r[5] is None for r in rows)


def test_the_score_decides_changed_and_the_caption_is_kept_beside_it(engine, holed):
    """The same tiles, captioned alike, once all above the threshold and once all below it (captioned
    anyway): each tile disagrees in exactly one of the two runs, wherever its caption stands."""
    above = run_review(engine, _job(holed, "above.gpkg", tile_size=64, threshold=0.0))
    below = run_review(engine, _job(holed, "below.gpkg", tile_size=64, threshold=2.0, caption_all=True))
    rows_above, rows_below = _rows(above.out), _rows(below.out)
    assert [r[4:6] for r in rows_above] == [r[4:6] for r in rows_below]     # same captions, same statements
    assert all(r[3] == 1 for r in rows_above) and all(r[3] == 0 for r in rows_below)
    says_change = sum(r[4] for r in rows_above)
    assert (above.changed, below.changed) == (len(rows_above), 0)
    assert (above.disagreements, below.disagreements) == (len(rows_above) - says_change, says_change)
    assert above.disagreements + below.disagreements == len(rows_above) > 0


def test_batched_equals_one_tile_at_a_time(engine, holed, reference):
    one = _job(holed, "one.gpkg", **{**RESUME, "batch_size": 1})
    run_review(engine, one)
    _same(_rows(one.out), reference)


# ---- stop and resume ------------------------------------------------------------------------------

def test_killed_cli_leaves_whole_batches_and_a_rerun_completes(holed, tiny_checkpoint, reference):
    out = holed["root"] / "killed.gpkg"
    command = [sys.executable, "-m", "unirs_engine.cli", "review", holed["before"], holed["after"],
               "--out", str(out), "--tile-size", "32", "--caption-all", "--batch-size", "4",
               "--date-before", "2019-06-01", "--date-after", "2023-06-01", "--model", str(tiny_checkpoint),
               "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}   # same arithmetic as the reference
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_first_batch(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    state = _run_state(out)
    assert 4 <= state["next_tile"] < 64 and state["next_tile"] % 4 == 0 and not state["finished"]
    _valid(out)
    written = _rows(out)
    done = state["next_tile"]
    assert [r[:2] for r in written] == [r[:2] for r in reference if r[0] * 8 + r[1] < done]  # whole batches

    rerun = subprocess.run(command + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["resumed_from"], summary["done"], summary["cancelled"]) == (done, 64 - done, False)
    _valid(out)
    final = _rows(out)
    assert len({r[:2] for r in final}) == len(final)                                   # no duplicates
    _same(final, reference)


def _wait_for_first_batch(proc: subprocess.Popen, out, timeout_s: float = 300) -> None:
    """Return once the CLI review has committed its first batch of 4 tiles; fail (and kill it) if it
    ends or takes longer first, rather than signal a process that is still importing."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if out.exists() and _run_state(out)["next_tile"] >= 4:
            return
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"the review committed no batch within {timeout_s:.0f} s")
        time.sleep(0.005)
    pytest.fail(f"the review ended (exit {proc.returncode}) before it could be stopped: "
                f"{proc.communicate()[1][-2000:]}")


def test_ctrl_c_stops_the_cli_cleanly_with_exit_130(holed, tiny_checkpoint):
    out = holed["root"] / "interrupted.gpkg"
    proc = subprocess.Popen([sys.executable, "-m", "unirs_engine.cli", "review", holed["before"], holed["after"],
                             "--out", str(out), "--tile-size", "32", "--caption-all", "--batch-size", "4",
                             "--model", str(tiny_checkpoint), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_first_batch(proc, out)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    state = _run_state(out)
    assert 4 <= state["next_tile"] < 64 and state["next_tile"] % 4 == 0
    assert stdout.startswith(f"review stopped (rerun to resume): {state['next_tile']}/64 tiles")
    assert "Traceback" not in stderr
    _valid(out)


def test_cancel_keeps_finished_batches_and_resume_completes(engine, holed, reference):
    job = _job(holed, "cancelled.gpkg", **RESUME)
    calls = []

    def after_three_batches() -> bool:
        calls.append(1)
        return len(progressed) > 3   # the start report + 3 committed batches

    progressed = []
    summary = run_review(engine, job, progress=lambda done, total: progressed.append(done),
                         is_cancelled=after_three_batches)
    assert summary.cancelled and summary.done == 12 and summary.resumed_from == 0
    assert progressed == [0, 4, 8, 12] and len(calls) > 3   # polled inside generation too
    _valid(job.out)
    assert [r[:2] for r in _rows(job.out)] == [r[:2] for r in reference if r[0] * 8 + r[1] < 12]

    resumed = run_review(engine, job)
    assert (resumed.cancelled, resumed.resumed_from, resumed.done) == (False, 12, 52)
    _same(_rows(job.out), reference)
    again = run_review(engine, job)                          # finished: returns at once
    assert (again.done, again.resumed_from, again.run_id) == (0, 64, resumed.run_id)


def test_cancel_during_generation_drops_only_that_batch(engine, holed):
    engine.clear_cache()   # earlier tests cached these captions: make this batch really generate
    job = _job(holed, "mid.gpkg", **RESUME)
    polls = []

    def mid_first_caption() -> bool:   # False at the batch check, True at the first generated token
        polls.append(1)
        return len(polls) > 2

    summary = run_review(engine, job, is_cancelled=mid_first_caption)
    assert summary.cancelled and summary.done == 0 and _rows(job.out) == []
    _valid(job.out)


def test_another_job_on_the_same_out_is_refused_and_verdicts_survive_resume(engine, holed, reference):
    job = _job(holed, "verdict.gpkg", **RESUME)
    reported = []
    first = run_review(engine, job, progress=lambda done, total: reported.append(done),
                       is_cancelled=lambda: len(reported) > 2)   # after 2 batches
    assert first.cancelled and first.done == 8
    ds = ogr.Open(job.out)
    fid = ds.GetLayerByName(LAYER).GetNextFeature().GetFID()
    del ds
    ds = ogr.Open(job.out, 1)   # a verdict, written as the QGIS plugin's set_verdict writes it (through OGR)
    feat = ds.GetLayerByName(LAYER).GetFeature(fid)
    feat["verdict"], feat["reviewed_at"] = "rejected", "2024-05-06T07:08:09.000Z"
    ds.GetLayerByName(LAYER).SetFeature(feat)
    del ds
    with pytest.raises(ReviewError, match=r"verdict\.gpkg holds a review with tile_size=32(\.0)?; delete it"):
        run_review(engine, _job(holed, "verdict.gpkg", **{**RESUME, "tile_size": 64}))
    with pytest.raises(ReviewError, match=r"holds a review with caption_all=True"):
        run_review(engine, _job(holed, "verdict.gpkg", **{**RESUME, "caption_all": False}))
    resumed = run_review(engine, ReviewJob(**{**job.to_dict(), "batch_size": 8}))   # speed keys may change
    assert not resumed.cancelled and resumed.run_id == first.run_id
    ds = ogr.Open(job.out)
    feat = ds.GetLayerByName(LAYER).GetFeature(fid)
    assert feat["verdict"] == "rejected" and feat["reviewed_at"]
    _same(_rows(job.out), reference)


# ---- bounded reading ------------------------------------------------------------------------------

def test_reader_stays_at_most_prefetch_batches_ahead(holed):
    job = _job(holed, "unused.gpkg", tile_size=16, batch_size=2, prefetch=3)   # 256 tiles
    plan = plan_review(job)
    with TileReader(job, plan, start=0, max_side=140) as reader:
        assert reader.queue.maxsize == job.prefetch
        deadline = time.monotonic() + 30
        while not reader.queue.full() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)                         # an unbounded reader would run on meanwhile
        # prefetch batches queued + the one waiting to be put; never the 256 tiles
        assert reader.tiles_read <= job.batch_size * (job.prefetch + 1)
        seen = 0
        for batch in reader:
            assert reader.queue.qsize() <= job.prefetch and len(batch.pairs) <= job.batch_size
            seen += len(batch.pairs) + batch.skipped_nodata + batch.skipped_outside
            assert batch.stop == seen
        assert seen == plan.total_tiles


def test_big_tiles_are_read_decimated_on_the_grid(holed):
    job = _job(holed, "unused.gpkg", tile_size=256, batch_size=1)
    plan = plan_review(job)
    with TileReader(job, plan, start=0, max_side=140) as reader:
        (batch,) = list(reader)
    (pair,) = batch.pairs
    for chip in (pair.before, pair.after):
        assert chip.image.shape == (140, 140, 3) and chip.valid.shape == (140, 140)
        assert chip.georef.bounds == pair.bounds and chip.georef.crs == plan.crs
        assert chip.georef.transform[0] == pytest.approx(plan.transform[0] * 256 / 140)
