"""The review GeoPackage: valid for GDAL/OGR, atomic batches, resume checks, verdicts, one writer."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from osgeo import ogr, osr
from osgeo_utils.samples.validate_gpkg import check as validate_gpkg
from rasterio.crs import CRS
from rasterio.transform import Affine

from unirs_engine.review import LAYER, ReviewError, ReviewJob, ReviewPlan, set_verdict
from unirs_engine.review.store import CUSTOM_SRS_ID, ReviewStore, TileResult, check_writable

ogr.UseExceptions()
LAEA = "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs"


def _plan(crs=CRS.from_epsg(32633), rows=2, cols=3, tile=64, res=10.0) -> ReviewPlan:
    transform = Affine(res, 0, 500_000.0, 0, -res, 4_500_000.0)
    return ReviewPlan(crs.to_wkt(), tuple(transform)[:6], cols * tile, rows * tile, rows, cols, rows * cols,
                      tile, tile)


def _results(plan: ReviewPlan, indexes) -> list[TileResult]:
    out = []
    for i in indexes:
        row, col, window = plan.window(i)
        # odd tiles are above the threshold and captioned; tile 3's caption says "no change"
        out.append(TileResult(row, col, plan.bounds(window), score=0.01 * i, score_above_threshold=i % 2 == 1,
                              caption_says_change=(i % 4 == 1) if i % 2 else None,
                              caption=f"caption {i}" if i % 2 else None))
    return out


def _job(tmp_path, **kw) -> ReviewJob:
    return ReviewJob("before.tif", "after.tif", str(tmp_path / "review.gpkg"), date_before="2019-06-01",
                     date_after="2023-06-01", **{"threshold": 0.01, **kw})


def _write(job, plan, batches, model="tiny") -> None:
    store = ReviewStore.open(job, plan, model)
    for indexes in batches:
        store.append(_results(plan, indexes), next_tile=max(indexes) + 1, skipped_nodata=1, skipped_outside=0)
    store.close()


def _features(path) -> list[dict]:
    ds = ogr.Open(str(path))
    layer = ds.GetLayerByName(LAYER)
    return [{**{k: f.GetField(k) for k in f.keys()}, "fid": f.GetFID(),
             "envelope": f.GetGeometryRef().GetEnvelope()} for f in layer]


def test_the_file_is_a_valid_geopackage_for_ogr(tmp_path):
    plan = _plan()
    job = _job(tmp_path)
    _write(job, plan, [[0, 1, 2], [3, 4, 5]])
    errors = validate_gpkg(job.out, extra_checks=True, warning_as_error=True)   # GDAL's own validator
    assert errors == []
    info = subprocess.run(["ogrinfo", "-ro", "-al", "-so", job.out], capture_output=True, text=True)
    assert info.returncode == 0 and info.stderr == ""
    assert "Feature Count: 6" in info.stdout and "Geometry: Polygon" in info.stdout

    ds = ogr.Open(job.out)
    assert ds.GetDriver().GetName() == "GPKG"
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == [LAYER, "unirs_review_runs"]
    layer = ds.GetLayerByName(LAYER)
    assert layer.GetFeatureCount() == 6 and layer.GetGeomType() == ogr.wkbPolygon
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32633"
    assert layer.GetExtent() == (500_000.0, 500_000.0 + 192 * 10, 4_500_000.0 - 128 * 10, 4_500_000.0)
    defn = layer.GetLayerDefn()
    types = {defn.GetFieldDefn(i).GetName(): (ogr.GetFieldTypeName(defn.GetFieldDefn(i).GetType()),
                                              ogr.GetFieldSubTypeName(defn.GetFieldDefn(i).GetSubType()))
             for i in range(defn.GetFieldCount())}
    assert types == {"tile_row": ("Integer64", "None"), "tile_col": ("Integer64", "None"),  # GPKG INTEGER
                     "score": ("Real", "None"), "score_above_threshold": ("Integer", "Boolean"),
                     "caption_says_change": ("Integer", "Boolean"),
                     "caption": ("String", "None"), "date_before": ("Date", "None"),
                     "date_after": ("Date", "None"), "model": ("String", "None"), "run_id": ("String", "None"),
                     "verdict": ("String", "None"), "reviewed_at": ("DateTime", "None"),
                     "reviewed_by": ("String", "None")}
    feats = _features(job.out)
    for i, feat in enumerate(feats):
        row, col, window = plan.window(i)
        left, bottom, right, top = plan.bounds(window)
        assert (feat["tile_row"], feat["tile_col"]) == (row, col)
        assert feat["envelope"] == (left, right, bottom, top)
        assert feat["score"] == pytest.approx(0.01 * i) and feat["score_above_threshold"] == i % 2
        assert feat["caption_says_change"] == ((i % 4 == 1) if i % 2 else None)
        assert feat["caption"] == (f"caption {i}" if i % 2 else None)
        assert (feat["date_before"], feat["date_after"]) == ("2019/06/01", "2023/06/01")
        assert feat["model"] == "tiny" and feat["verdict"] is None
    layer.ResetReading()
    first = layer.GetNextFeature()  # ds, layer and feature stay referenced: OGR objects die with their owner
    assert first.GetGeometryRef().IsValid() and first.GetGeometryRef().GetArea() == pytest.approx(640 * 640)
    runs = ds.GetLayerByName("unirs_review_runs").GetNextFeature()
    assert (runs["next_tile"], runs["total_tiles"], runs["finished"], runs["skipped_nodata"], runs["changed"],
            runs["captioned"], runs["disagreements"]) == (6, 6, 1, 2, 3, 3, 1)
    assert (runs["threshold"], runs["threshold_source"]) == (0.01, "given for this review")


def test_a_crs_without_epsg_code_is_stored_as_wkt(tmp_path):
    plan = _plan(CRS.from_proj4(LAEA))
    job = _job(tmp_path)
    _write(job, plan, [[0, 1]])
    assert validate_gpkg(job.out, extra_checks=True, warning_as_error=True) == []
    ds = ogr.Open(job.out)
    srs = ds.GetLayerByName(LAYER).GetSpatialRef()
    want = osr.SpatialReference()
    want.ImportFromProj4(LAEA)
    assert srs.IsSame(want)
    with sqlite3.connect(job.out) as conn:
        assert conn.execute("SELECT srs_id FROM gpkg_geometry_columns").fetchone()[0] == CUSTOM_SRS_ID


def test_resume_state_and_refusal_of_another_job_or_model(tmp_path):
    plan = _plan()
    job = _job(tmp_path, tile_size=64)
    _write(job, plan, [[0, 1]])
    store = ReviewStore.open(ReviewJob(**{**job.to_dict(), "batch_size": 2}), plan, "tiny")  # runtime key: same job
    assert (store.state.next_tile, store.state.finished, store.state.skipped_nodata) == (2, False, 1)
    store.close()
    with pytest.raises(ReviewError, match=r"review\.gpkg holds a review with tile_size=64(\.0)?; delete it or "
                                          r"choose another --out"):
        ReviewStore.open(ReviewJob(**{**job.to_dict(), "tile_size": 32}), plan, "tiny")
    with pytest.raises(ReviewError, match=r"holds a review with model='tiny'"):
        ReviewStore.open(job, plan, "another-model")
    with pytest.raises(ReviewError, match=r"holds a review of 6 tiles but the mosaics now make 4"):
        ReviewStore.open(job, _plan(rows=2, cols=2), "tiny")
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a database")
    with pytest.raises(ReviewError, match=r"junk\.gpkg exists and is not a UniRS review GeoPackage"):
        ReviewStore.open(ReviewJob("b.tif", "a.tif", str(junk)), plan, "tiny")


def test_verdicts_are_kept_when_the_review_goes_on(tmp_path):
    plan = _plan()
    job = _job(tmp_path)
    _write(job, plan, [[0, 1, 2]])
    fid = _features(job.out)[1]["fid"]
    set_verdict(job.out, fid, "confirmed", by="Ada Analyst")
    _write(job, plan, [[3, 4, 5]])                              # resumed, later batch
    feats = {f["fid"]: f for f in _features(job.out)}
    assert len(feats) == 6 and feats[fid]["verdict"] == "confirmed" and feats[fid]["reviewed_at"] is not None
    assert feats[fid]["reviewed_by"] == "Ada Analyst"
    assert all(f["verdict"] is None for k, f in feats.items() if k != fid)
    set_verdict(job.out, fid, None)
    assert _features(job.out)[1]["verdict"] is None and _features(job.out)[1]["reviewed_by"] is None
    with pytest.raises(ReviewError, match=r"verdict must be one of \('confirmed', 'rejected'\)"):
        set_verdict(job.out, fid, "maybe")
    with pytest.raises(ReviewError, match=r"layer changes has no feature with fid 999"):
        set_verdict(job.out, 999, "rejected")
    assert validate_gpkg(job.out, extra_checks=True, warning_as_error=True) == []


def test_a_failed_batch_writes_nothing(tmp_path):
    plan = _plan()
    job = _job(tmp_path)
    store = ReviewStore.open(job, plan, "tiny")
    store.append(_results(plan, [0, 1]), next_tile=2, skipped_nodata=0, skipped_outside=0)
    with pytest.raises(sqlite3.IntegrityError):   # tile (0, 1) again: the whole batch is rolled back
        store.append(_results(plan, [2, 1]), next_tile=3, skipped_nodata=0, skipped_outside=0)
    store.close()
    assert [(f["tile_row"], f["tile_col"]) for f in _features(job.out)] == [(0, 0), (0, 1)]
    reopened = ReviewStore.open(job, plan, "tiny")
    assert reopened.state.next_tile == 2
    reopened.close()


def test_one_review_at_a_time_writes_a_file(tmp_path):
    plan, job = _plan(), _job(tmp_path)
    store = ReviewStore.open(job, plan, "tiny")
    store.append(_results(plan, [0, 1]), next_tile=2, skipped_nodata=0, skipped_outside=0)
    for second_writer in (lambda: ReviewStore.open(job, plan, "tiny"), lambda: check_writable(job.out)):
        with pytest.raises(ReviewError, match=r"^another review is writing .*review\.gpkg; wait for it to finish"):
            second_writer()
    set_verdict(job.out, _features(job.out)[0]["fid"], "confirmed")   # a verdict is no second writer
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.gpkg"]   # the lock file went with the lock
    check_writable(job.out)
    ReviewStore.open(job, plan, "tiny").close()


def test_an_out_that_cannot_be_written_is_refused_and_nothing_is_left(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    job = ReviewJob("b.tif", "a.tif", str(tmp_path / "a_file" / "sub" / "review.gpkg"))
    for attempt in (lambda: check_writable(job.out), lambda: ReviewStore.open(job, _plan(), "tiny")):
        with pytest.raises(ReviewError, match=r"^cannot write .*review\.gpkg \(.*a_file is a file, not a folder\)$"):
            attempt()
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_a_kill_inside_a_batch_transaction_leaves_a_file_read_only_openers_can_read(tmp_path):
    """A writer killed while its transaction has spilled pages to disk: with a rollback journal, read-only
    OGR would fail ("attempt to write a readonly database"); the store's WAL mode keeps it readable."""
    job = _job(tmp_path)
    child = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_review_store import _job, _plan, _results
from pathlib import Path
from unirs_engine.review.store import ReviewStore
plan = _plan(rows=40, cols=40)
store = ReviewStore.open(_job(Path({str(tmp_path)!r})), plan, "tiny")
store.append(_results(plan, range(4)), next_tile=4, skipped_nodata=0, skipped_outside=0)
store.conn.execute("PRAGMA cache_size = 1")   # spill the next batch's pages to disk before its commit
store.conn.executemany("INSERT INTO changes (geom, tile_row, tile_col, score, score_above_threshold, model, run_id) "
                       "VALUES (NULL, ?, ?, 0, 0, 'tiny', 'x')", [(100 + i, 0) for i in range(3000)])
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    info = subprocess.run(["ogrinfo", "-ro", "-so", job.out, LAYER], capture_output=True, text=True)
    assert info.returncode == 0 and info.stderr == "" and "Feature Count: 4" in info.stdout
    assert validate_gpkg(job.out, extra_checks=True, warning_as_error=True) == []
    store = ReviewStore.open(job, _plan(rows=40, cols=40), "tiny")
    assert store.state.next_tile == 4
    store.close()
