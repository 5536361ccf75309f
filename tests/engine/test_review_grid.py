"""The review grid: overlap of two mosaics in any CRS/resolution, tiles, units, overlap, limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.review import ReviewError, ReviewJob, plan_review
from unirs_engine.testing.rasters import pattern, write_raster

SIZE, TILE = 256, 64


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("grid")
    before, after = write_mosaic_pair(root / "same", size=SIZE, tile=TILE)
    with rasterio.open(before) as src:
        crs, transform = src.crs, src.transform
    other_zone = f"EPSG:{crs.to_epsg() - 1}"   # the neighbouring UTM zone
    _, after_utm = write_mosaic_pair(root / "utm", size=SIZE, tile=TILE, after_crs=other_zone)
    _, after_3857 = write_mosaic_pair(root / "webm", size=SIZE, tile=TILE, after_crs="EPSG:3857",
                                      after_res_factor=2.0)
    # The right 60 % and top 70 % of the web-mercator after: the overlap is a part of before.
    with rasterio.open(after_3857) as src:
        win = Window(int(src.width * 0.4), 0, src.width - int(src.width * 0.4), int(src.height * 0.7))
        crop = write_raster(root / "crop_3857.tif", src.read(window=win), crs=src.crs,
                            transform=src.window_transform(win), nodata=0)
    return {"before": str(before), "after": str(after), "after_utm": str(after_utm),
            "after_3857": str(after_3857), "crop_3857": str(crop), "crs": crs, "transform": transform,
            "res": transform.a, "root": root}


def _job(m, after="after", **kw) -> ReviewJob:
    return ReviewJob(m["before"], m[after], str(m["root"] / "out.gpkg"), **kw)


def _grid_bounds(plan):
    t = Affine(*plan.transform)
    return t.c, t.f + t.e * plan.height, t.c + t.a * plan.width, t.f


def test_same_grid_is_before_pixels(mosaics):
    plan = plan_review(_job(mosaics, tile_size=TILE))
    assert CRS.from_wkt(plan.crs) == mosaics["crs"]
    assert plan.transform == tuple(mosaics["transform"])[:6]
    assert (plan.width, plan.height, plan.rows, plan.cols, plan.total_tiles) == (SIZE, SIZE, 4, 4, 16)
    assert (plan.tile_px, plan.step_px) == (TILE, TILE)


@pytest.mark.parametrize("after", ["after_utm", "after_3857"])
def test_after_in_another_crs_and_resolution_still_grids_before_pixels(mosaics, after):
    """The warped after covers before's area (with nodata corners): the grid is before's own pixels."""
    plan = plan_review(_job(mosaics, after, tile_size=TILE))
    assert CRS.from_wkt(plan.crs) == mosaics["crs"] and plan.transform == tuple(mosaics["transform"])[:6]
    assert (plan.width, plan.height, plan.total_tiles) == (SIZE, SIZE, 16)


def test_tiles_cover_only_the_overlap(mosaics):
    plan = plan_review(_job(mosaics, "crop_3857", tile_size=TILE))
    res = mosaics["res"]
    left, bottom, right, top = _grid_bounds(plan)
    with rasterio.open(mosaics["before"]) as b, rasterio.open(mosaics["crop_3857"]) as a:
        a_left, a_bottom, a_right, a_top = transform_bounds(a.crs, b.crs, *a.bounds)
        want = (max(b.bounds.left, a_left), max(b.bounds.bottom, a_bottom),
                min(b.bounds.right, a_right), min(b.bounds.top, a_top))
    assert plan.width < SIZE and plan.height < SIZE  # a part of before only
    # The overlap, widened to whole before pixels (never more than one pixel on a side).
    for got, exact, outward in zip((left, bottom, right, top), want, (-1, -1, 1, 1)):
        assert 0 <= (got - exact) * outward < res + 1e-6
    assert math.isclose((left - mosaics["transform"].c) / res % 1, 0, abs_tol=1e-6)  # on before's pixels
    # The tiles tile the grid: no pixel twice (no overlap asked), none missing.
    covered = np.zeros((plan.height, plan.width), np.int32)
    for index in range(plan.total_tiles):
        _, _, w = plan.window(index)
        covered[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert (covered == 1).all()


def test_user_crs_and_resolution(mosaics):
    plan = plan_review(_job(mosaics, "after_3857", tile_size=TILE, crs="EPSG:3857", resolution=2.0))
    assert CRS.from_wkt(plan.crs).to_epsg() == 3857
    t = Affine(*plan.transform)
    assert (t.a, t.e) == (2.0, -2.0) and t.c % 2.0 == 0 and t.f % 2.0 == 0  # aligned on 0, 0
    with rasterio.open(mosaics["before"]) as b:
        b_left, b_bottom, b_right, b_top = transform_bounds(b.crs, "EPSG:3857", *b.bounds)
    left, bottom, right, top = _grid_bounds(plan)
    assert b_left - 2 < left <= b_left and b_right <= right < b_right + 2
    assert plan.width == round((right - left) / 2.0)


def test_tile_units_map_equal_the_same_size_in_pixels(mosaics):
    res = mosaics["res"]
    in_pixels = plan_review(_job(mosaics, tile_size=48, overlap=16))
    in_map = plan_review(_job(mosaics, tile_size=48 * res, overlap=16 * res, tile_units="map"))
    assert in_map == in_pixels and (in_pixels.tile_px, in_pixels.step_px) == (48, 32)


def test_overlap_steps_and_edge_tiles_are_clipped(mosaics):
    plan = plan_review(_job(mosaics, tile_size=TILE, overlap=16))
    assert plan.step_px == 48 and plan.cols == plan.rows == 5   # offsets 0, 48, 96, 144, 192
    assert [plan.window(i)[2].col_off for i in range(plan.cols)] == [0, 48, 96, 144, 192]
    row, col, last = plan.window(plan.total_tiles - 1)
    assert (row, col, last) == (4, 4, Window(192, 192, 64, 64))

    edge = plan_review(_job(mosaics, tile_size=100))          # 256 = 100 + 100 + 56
    assert (edge.rows, edge.cols) == (3, 3)
    row, col, w = edge.window(edge.total_tiles - 1)
    assert (row, col, w.width, w.height) == (2, 2, 56, 56)
    left, bottom, right, top = edge.bounds(w)   # the edge tile ends where the grid ends
    assert (right, bottom) == (_grid_bounds(edge)[2], _grid_bounds(edge)[1])
    assert math.isclose(right - left, 56 * mosaics["res"]) and math.isclose(top - bottom, 56 * mosaics["res"])


def test_too_many_tiles_is_refused_with_the_count(mosaics):
    with pytest.raises(ReviewError, match=r"would make 65,536 tiles \(limit 1,000\); use a larger tile size "
                                          r"or raise max_tiles"):
        plan_review(_job(mosaics, tile_size=1, max_tiles=1000))


def test_bad_inputs_are_one_line_errors(mosaics, tmp_path):
    far = write_raster(tmp_path / "far.tif", pattern(32, 32), crs="EPSG:32633")
    with pytest.raises(ReviewError, match=r"before_2019-06-01\.tif and .*far\.tif do not overlap"):
        plan_review(ReviewJob(mosaics["before"], str(far), str(tmp_path / "o.gpkg")))
    plain = write_raster(tmp_path / "plain.tif", pattern(32, 32), crs=None)
    with pytest.raises(ReviewError, match=r"plain\.tif: not georeferenced"):
        plan_review(ReviewJob(mosaics["before"], str(plain), str(tmp_path / "o.gpkg")))
    with pytest.raises(ReviewError, match=r"missing\.tif"):
        plan_review(ReviewJob(mosaics["before"], str(tmp_path / "missing.tif"), str(tmp_path / "o.gpkg")))
    with pytest.raises(ReviewError, match=r"before_2019-06-01\.tif: band 4 does not exist; the raster has 3"):
        plan_review(_job(mosaics, bands=(4, 2, 1)))
    with pytest.raises(ReviewError, match=r"unknown CRS 'EPSG:0' for the review grid"):
        plan_review(_job(mosaics, crs="EPSG:0"))
    for bad, message in (({"overlap": 64, "tile_size": 64}, "overlap must be >= 0 and < tile_size"),
                         ({"tile_units": "feet"}, "tile_units must be one of"),
                         ({"date_after": "June 2023"}, "date_after must be an ISO date"),
                         ({"batch_size": 0}, "batch_size must be >= 1")):
        with pytest.raises(ReviewError, match=message):
            _job(mosaics, **bad)
    with pytest.raises(ReviewError, match="unknown key"):
        ReviewJob.from_dict({"before": "a.tif", "after": "b.tif", "out": "o.gpkg", "tiles": 3})


def test_job_round_trips_through_json(mosaics):
    import json

    job = _job(mosaics, bands=[3, 2, 1], tile_size=32, date_before="2019-06-01")
    assert job.bands == (3, 2, 1)
    assert ReviewJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
