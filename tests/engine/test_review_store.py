"""The review GeoPackage: valid for GDAL/OGR, spatially indexed, atomic batches, resume checks, verdicts,
one writer."""

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

from unirs_engine.review import LAYER, ReviewError, ReviewJob, ReviewPlan
from unirs_engine.review.store import CUSTOM_SRS_ID, ReviewStore, TileResult, check_writable, now_iso

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


def _set_verdict(path, fid, verdict, by=None) -> None:
    """What the QGIS plugin's set_verdict writes (through QGIS's OGR provider), written with OGR."""
    ds = ogr.Open(str(path), 1)
    layer = ds.GetLayerByName(LAYER)
    feature = layer.GetFeature(fid)
    feature["verdict"], feature["reviewed_by"], feature["reviewed_at"] = verdict, by, verdict and now_iso()
    layer.SetFeature(feature)


def _counts(path) -> dict:
    """What the GeoPackage's tables say besides the features: R-tree entries, gpkg_ogr_contents' count,
    gpkg_contents' extent."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return dict(rtree=conn.execute(f"SELECT count(*) FROM rtree_{LAYER}_geom").fetchone()[0],
                    feature_count=conn.execute("SELECT feature_count FROM gpkg_ogr_contents WHERE table_name = ?",
                                               (LAYER,)).fetchone()[0],
                    extent=conn.execute("SELECT min_x, min_y, max_x, max_y FROM gpkg_contents WHERE table_name = ?",
                                        (LAYER,)).fetchone())


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

    # spatially indexed: the R-tree has every tile, and OGR's spatial filter goes through it
    sql = ds.ExecuteSQL(f"SELECT HasSpatialIndex('{LAYER}', 'geom')")
    assert sql.GetNextFeature().GetField(0) == 1
    ds.ReleaseResultSet(sql)
    layer.SetSpatialFilterRect(500_000.0 + 10, 4_500_000.0 - 630, 500_000.0 + 630, 4_500_000.0 - 10)  # in tile 0
    assert [f["tile_row"] * 3 + f["tile_col"] for f in layer] == [0]
    layer.SetSpatialFilter(None)
    assert _counts(job.out) == dict(rtree=6, feature_count=6, extent=(500_000.0, 4_500_000.0 - 128 * 10,
                                                                       500_000.0 + 192 * 10, 4_500_000.0))
    with sqlite3.connect(f"file:{job.out}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT extension_name FROM gpkg_extensions WHERE table_name = ?",
                            (LAYER,)).fetchall() == [("gpkg_rtree_index",)]


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
    utm = _job(tmp_path / "utm")   # an EPSG CRS spelt without its code gets the code, as rasterio finds it
    _write(utm, _plan(CRS.from_proj4("+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs")), [[0]])
    with sqlite3.connect(utm.out) as conn:
        assert conn.execute("SELECT srs_id FROM gpkg_geometry_columns").fetchone()[0] == 32633


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
    _set_verdict(job.out, fid, "confirmed", by="Ada Analyst")
    _write(job, plan, [[3, 4, 5]])                              # resumed, later batch
    feats = {f["fid"]: f for f in _features(job.out)}
    assert len(feats) == 6 and feats[fid]["verdict"] == "confirmed" and feats[fid]["reviewed_at"] is not None
    assert feats[fid]["reviewed_by"] == "Ada Analyst"
    assert all(f["verdict"] is None for k, f in feats.items() if k != fid)
    _set_verdict(job.out, fid, None)
    assert _features(job.out)[1]["verdict"] is None and _features(job.out)[1]["reviewed_by"] is None
    with pytest.raises(RuntimeError, match=r"verdict must be one of confirmed, rejected or NULL"):
        _set_verdict(job.out, fid, "maybe")                     # the file refuses it, whoever writes
    assert _features(job.out)[1]["verdict"] is None
    assert validate_gpkg(job.out, extra_checks=True, warning_as_error=True) == []


def test_a_failed_batch_writes_nothing(tmp_path):
    plan = _plan()
    job = _job(tmp_path)
    store = ReviewStore.open(job, plan, "tiny")
    store.append(_results(plan, [0, 1]), next_tile=2, skipped_nodata=0, skipped_outside=0)
    with pytest.raises(RuntimeError, match="UNIQUE constraint failed"):  # tile (0, 1) again: all rolled back
        store.append(_results(plan, [5, 1]), next_tile=3, skipped_nodata=0, skipped_outside=0)
    assert [(f["tile_row"], f["tile_col"]) for f in _features(job.out)] == [(0, 0), (0, 1)]
    assert store.state.next_tile == 2
    store.append(_results(plan, [2]), next_tile=3, skipped_nodata=0, skipped_outside=0)   # and it goes on
    store.close()
    # tile 5 (row 1), written then rolled back, is in neither the index nor the count nor the extent (which
    # OGR, keeping it in memory until close, had grown by it)
    assert _counts(job.out) == dict(rtree=3, feature_count=3, extent=(500_000.0, 4_499_360.0, 501_920.0, 4_500_000.0))
    ds = ogr.Open(job.out)
    assert ds.GetLayerByName(LAYER).GetExtent() == (500_000.0, 501_920.0, 4_499_360.0, 4_500_000.0)
    reopened = ReviewStore.open(job, plan, "tiny")
    assert reopened.state.next_tile == 3 and reopened.state.changed == 1   # tile 1's only
    reopened.close()


def test_gdal_exceptions_off_as_in_qgis_still_raise(tmp_path):
    """With GDAL's Python exceptions off (QGIS's default) OGR returns error codes: the store checks them.
    In a fresh interpreter: GDAL lets exceptions be switched off only in the reverse order other tests of
    this process switched them on."""
    code = ("from osgeo import ogr; from tests.engine.test_review_store import _exceptions_off_check as check; "
            f"ogr.DontUseExceptions(); check({str(tmp_path)!r}); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def _exceptions_off_check(folder: str) -> None:
    tmp_path = Path(folder)
    plan, job = _plan(), _job(tmp_path)
    store = ReviewStore.open(job, plan, "tiny")
    store.append(_results(plan, [0, 1]), next_tile=2, skipped_nodata=0, skipped_outside=0)
    with pytest.raises(RuntimeError, match="UNIQUE constraint failed"):
        store.append(_results(plan, [2, 1]), next_tile=3, skipped_nodata=0, skipped_outside=0)
    store.close()
    reopened = ReviewStore.open(job, plan, "tiny")
    assert reopened.state.next_tile == 2
    reopened.close()
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a database")
    with pytest.raises(ReviewError, match=r"junk\.gpkg exists and is not a UniRS review GeoPackage"):
        ReviewStore.open(ReviewJob("b.tif", "a.tif", str(junk)), plan, "tiny")
    ogr.UseExceptions()
    assert [(f["tile_row"], f["tile_col"]) for f in _features(job.out)] == [(0, 0), (0, 1)]


def test_the_store_needs_gdal_only(tmp_path):
    """No rasterio and no torch: the QGIS plugin may use it."""
    code = ("import sys, unirs_engine.review.store; "
            "print(sorted(m for m in ('rasterio', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_one_review_at_a_time_writes_a_file(tmp_path):
    plan, job = _plan(), _job(tmp_path)
    store = ReviewStore.open(job, plan, "tiny")
    store.append(_results(plan, [0, 1]), next_tile=2, skipped_nodata=0, skipped_outside=0)
    for second_writer in (lambda: ReviewStore.open(job, plan, "tiny"), lambda: check_writable(job.out)):
        with pytest.raises(ReviewError, match=r"^another review is writing .*review\.gpkg; wait for it to finish"):
            second_writer()
    _set_verdict(job.out, _features(job.out)[0]["fid"], "confirmed")   # a verdict is no second writer
    store.append(_results(plan, [2, 3]), next_tile=4, skipped_nodata=0, skipped_outside=0)   # nor blocks one
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
    OGR would fail ("attempt to write a readonly database"); the store's WAL mode keeps it readable, and
    the extent, R-tree and feature count are those of the committed batch."""
    job = _job(tmp_path)
    child = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_review_store import _job, _plan, _results
from pathlib import Path
from unirs_engine.review.store import ReviewStore
plan = _plan(rows=60, cols=60)
store = ReviewStore.open(_job(Path({str(tmp_path)!r})), plan, "tiny")
store.append(_results(plan, range(4)), next_tile=4, skipped_nodata=0, skipped_outside=0)
store.ds.ExecuteSQL("PRAGMA cache_size = 1")   # spill the next batch's pages to disk before its commit

class KilledBeforeCommit:   # the run record is the batch's last write: its tiles are all in by then
    def SetFeature(self, feature):
        os.kill(os.getpid(), signal.SIGKILL)

store.runs = KilledBeforeCommit()
store.append(_results(plan, range(4, 3004)), next_tile=3004, skipped_nodata=0, skipped_outside=0)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "review.gpkg-wal").stat().st_size > 1_000_000   # the uncommitted batch reached the disk
    info = subprocess.run(["ogrinfo", "-ro", "-so", job.out, LAYER], capture_output=True, text=True)
    assert info.returncode == 0 and info.stderr == "" and "Feature Count: 4" in info.stdout
    assert "Extent: (500000.000000, 4499360.000000) - (502560.000000, 4500000.000000)" in info.stdout
    assert validate_gpkg(job.out, extra_checks=True, warning_as_error=True) == []
    assert _counts(job.out) == dict(rtree=4, feature_count=4, extent=(500_000.0, 4_499_360.0, 502_560.0, 4_500_000.0))
    store = ReviewStore.open(job, _plan(rows=60, cols=60), "tiny")
    assert store.state.next_tile == 4
    store.append(_results(_plan(rows=60, cols=60), range(4, 8)), next_tile=8, skipped_nodata=0, skipped_outside=0)
    store.close()
    assert _counts(job.out)["feature_count"] == 8 and _counts(job.out)["rtree"] == 8
    assert validate_gpkg(job.out, extra_checks=True, warning_as_error=True) == []
