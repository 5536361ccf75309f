"""read_chip / raster_info on real GDAL-written rasters (GeoTIFF, COG, VRT, 16-bit, float, PNG)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.warp import transform_bounds

from unirs_engine.inputs.raster import PAD_RGB, raster_info, read_chip
from unirs_engine.testing.rasters import (ORIGIN, RES, UTM33, grid, pattern, write_big_mosaic,
                                          write_big_sparse_geotiff, write_cog, write_float_with_holes,
                                          write_png, write_raster, write_two_tile_mosaic, write_uint16_bgrn)


def hwc(data: np.ndarray) -> np.ndarray:
    return np.moveaxis(data, 0, -1)


def test_geotiff_uint8_is_read_as_is_with_its_georef(tmp_path):
    data = pattern(48, 64)
    path = write_raster(tmp_path / "rgb.tif", data)
    chip = read_chip(path)
    np.testing.assert_array_equal(chip.image, hwc(data))
    assert chip.valid.shape == (48, 64) and chip.valid.all()
    g = chip.georef
    assert (g.source, g.width, g.height, g.bands) == (str(path), 64, 48, (1, 2, 3))
    assert rasterio.crs.CRS.from_wkt(g.crs).to_epsg() == 32633
    assert g.bounds == (ORIGIN[0], ORIGIN[1] - 48 * RES, ORIGIN[0] + 64 * RES, ORIGIN[1])
    assert g.transform == tuple(grid())[:6]


def test_whole_raster_read_respects_max_size(tmp_path):
    path = write_raster(tmp_path / "rgb.tif", pattern(96, 128))
    chip = read_chip(path, max_size=32)
    assert chip.image.shape == (24, 32, 3)
    g = chip.georef
    assert (g.width, g.height) == (32, 24)
    assert g.transform[0] == pytest.approx(4 * RES) and g.transform[4] == pytest.approx(-4 * RES)
    assert g.bounds == pytest.approx((ORIGIN[0], ORIGIN[1] - 96 * RES, ORIGIN[0] + 128 * RES, ORIGIN[1]))


def test_cog_decimated_read_uses_its_overview(tmp_path):
    path = write_cog(tmp_path / "cog.tif", pattern(600, 600, seed=3))
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1)[0] == 2
    with rasterio.open(path, overview_level=0) as half:                   # the 300 x 300 overview
        overview = hwc(half.read())
    chip = read_chip(path, max_size=300)
    np.testing.assert_array_equal(chip.image, overview)


def test_decimated_read_without_overviews_averages(tmp_path):
    data = pattern(64, 64, seed=3)
    chip = read_chip(write_raster(tmp_path / "plain.tif", data), max_size=32)
    block_mean = hwc(data).reshape(32, 2, 32, 2, 3).astype(float).mean(axis=(1, 3))   # (32, 32, 3)
    assert np.abs(chip.image - block_mean).max() <= 0.5


def test_vrt_mosaic_reads_across_the_tile_seam(tmp_path):
    vrt, tiles = write_two_tile_mosaic(tmp_path, tile=32)
    whole = hwc(pattern(32, 64))
    np.testing.assert_array_equal(read_chip(vrt).image, whole)
    # 10 px either side of the seam at x = ORIGIN + 320 m, rows 5..15
    bounds = (ORIGIN[0] + 220, ORIGIN[1] - 150, ORIGIN[0] + 420, ORIGIN[1] - 50)
    chip = read_chip(vrt, bounds=bounds)
    np.testing.assert_array_equal(chip.image, whole[5:15, 22:42])
    assert chip.georef.bounds == pytest.approx(bounds)


def test_uint16_default_bands_follow_colorinterp_and_are_stretched(tmp_path):
    path = write_uint16_bgrn(tmp_path / "bgrn.tif")
    chip = read_chip(path)
    assert chip.georef.bands == (3, 2, 1)
    with rasterio.open(path) as src:
        for channel, band in enumerate((3, 2, 1)):
            values = src.read(band).astype(float)
            lo, hi = np.percentile(values, (2, 98))
            expected = np.round(np.clip((values - lo) / (hi - lo), 0, 1) * 255)
            np.testing.assert_array_equal(chip.image[..., channel], expected)
    red = chip.image[..., 0]
    assert red.min() == 0 and red.max() == 255 and 0.01 < (red == 0).mean() < 0.04


def test_one_band_is_grey_replicated_and_bad_bands_are_named(tmp_path):
    path = write_uint16_bgrn(tmp_path / "bgrn.tif")
    nir = read_chip(path, bands=[4])
    assert nir.georef.bands == (4,)
    assert (nir.image[..., 0] == nir.image[..., 1]).all() and (nir.image[..., 0] == nir.image[..., 2]).all()
    with pytest.raises(ValueError, match=r"bgrn\.tif: band 5 does not exist; the raster has 4 band\(s\)"):
        read_chip(path, bands=(5, 2, 1))
    with pytest.raises(ValueError, match="give 1 or 3 bands"):
        read_chip(path, bands=(1, 2))


def test_single_band_raster_defaults_to_grey(tmp_path):
    path = write_raster(tmp_path / "grey.tif", pattern(16, 16, 1))
    chip = read_chip(path)
    assert chip.georef.bands == (1,)
    np.testing.assert_array_equal(chip.image, np.repeat(pattern(16, 16, 1)[0][..., None], 3, axis=-1))


def test_constant_band_becomes_mid_grey_without_warnings(tmp_path):
    path = write_raster(tmp_path / "flat.tif", np.full((3, 8, 8), 1234, np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chip = read_chip(path)
    assert (chip.image == 127).all() and chip.valid.all()


def test_float_nan_and_nodata_are_invalid_and_ignored_by_the_stretch(tmp_path):
    path = write_float_with_holes(tmp_path / "float.tif", size=64)
    chip = read_chip(path)
    expected_valid = np.zeros((64, 64), bool)
    expected_valid[:32, 32:] = expected_valid[32:, :32] = True    # NaN top-left, nodata bottom-right
    np.testing.assert_array_equal(chip.valid, expected_valid)
    assert (chip.image[~chip.valid] == PAD_RGB).all()
    good = chip.image[chip.valid]                                  # (N, 3)
    # With -9999 or NaN in the percentiles, the stretch would collapse to one end.
    assert (good.min(axis=0) == 0).all() and (good.max(axis=0) == 255).all()
    assert 90 < good.mean() < 165

    decimated = read_chip(path, max_size=16)
    np.testing.assert_array_equal(decimated.valid, expected_valid[::4, ::4])


def test_window_by_lonlat_bounds_on_a_utm_raster(tmp_path):
    data = pattern(64, 64, seed=5)
    path = write_raster(tmp_path / "utm.tif", data)
    utm_box = (ORIGIN[0] + 105, ORIGIN[1] - 395, ORIGIN[0] + 295, ORIGIN[1] - 205)
    lonlat = transform_bounds(UTM33, "EPSG:4326", *utm_box)
    chip = read_chip(path, bounds=lonlat, bounds_crs="EPSG:4326")
    left, bottom, right, top = chip.georef.bounds
    req_left, req_bottom, req_right, req_top = transform_bounds("EPSG:4326", UTM33, *lonlat)
    # whole pixels covering the request, never more than one pixel beyond it
    assert req_left - RES < left <= req_left and req_right <= right < req_right + RES
    assert req_bottom - RES < bottom <= req_bottom and req_top <= top < req_top + RES
    col0, row0 = int((left - ORIGIN[0]) / RES), int((ORIGIN[1] - top) / RES)
    assert chip.image.shape[:2] == (chip.georef.height, chip.georef.width) == (20, 20)
    np.testing.assert_array_equal(chip.image, hwc(data)[row0:row0 + 20, col0:col0 + 20])


def test_bounds_outside_the_raster_name_both_extents(tmp_path):
    path = write_raster(tmp_path / "utm.tif", pattern(16, 16))
    with pytest.raises(ValueError) as err:
        read_chip(path, bounds=(2.0, 48.0, 2.1, 48.1), bounds_crs="EPSG:4326")
    message = str(err.value)
    assert "utm.tif" in message and "do not intersect" in message
    assert "(2, 48, 2.1, 48.1) in EPSG:4326" in message and "(500000, 4499840, 500160, 4500000) in EPSG:32633" in message


def test_bounds_on_a_plain_png_are_refused_and_png_has_no_georef(tmp_path):
    rgb = hwc(pattern(20, 30))
    path = write_png(tmp_path / "plain.png", rgb)
    chip = read_chip(path)
    np.testing.assert_array_equal(chip.image, rgb)
    assert (chip.georef.crs, chip.georef.bounds, chip.georef.transform) == (None, None, None)
    with pytest.raises(ValueError, match="not georeferenced"):
        read_chip(path, bounds=(0, 0, 10, 10))


@pytest.mark.parametrize("writer", [write_big_mosaic, write_big_sparse_geotiff], ids=["vrt", "sparse_tiff"])
def test_window_of_a_20000_px_raster_reads_only_the_window(tmp_path, writer):
    path = writer(tmp_path / "big.tif") if writer is write_big_sparse_geotiff else writer(tmp_path)
    with rasterio.open(path) as src:
        assert src.shape == (20_000, 20_000)
    bounds = (ORIGIN[0] + 100, ORIGIN[1] - 2000, ORIGIN[0] + 2000, ORIGIN[1] - 100)   # 190 x 190 px
    chip = read_chip(path, bounds=bounds)
    assert chip.image.shape == (190, 190, 3)
    np.testing.assert_array_equal(chip.image, hwc(pattern(256, 256))[10:200, 10:200])
    wide = read_chip(path, bounds=(ORIGIN[0], ORIGIN[1] - 8000, ORIGIN[0] + 8000, ORIGIN[1]), max_size=100)
    assert wide.image.shape == (100, 100, 3)
    assert wide.georef.transform[0] == pytest.approx(80.0)


def test_raster_info_is_json_ready(tmp_path):
    info = raster_info(write_uint16_bgrn(tmp_path / "bgrn.tif", size=32))
    assert json.loads(json.dumps(info)) == info
    assert (info["width"], info["height"], info["count"], info["crs"]) == (32, 32, 4, "EPSG:32633")
    assert info["dtypes"] == ["uint16"] * 4 and info["nodata"] is None
    assert info["colorinterp"] == ["blue", "green", "red", "undefined"]
    assert info["bounds"] == [ORIGIN[0], ORIGIN[1] - 320, ORIGIN[0] + 320, ORIGIN[1]]


def test_rgba_alpha_marks_invalid_pixels(tmp_path):
    data = np.concatenate([pattern(16, 16), np.full((1, 16, 16), 255, np.uint8)])
    data[3, :, :4] = 0
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    chip = read_chip(write_raster(tmp_path / "rgba.tif", data, colorinterp=ci))
    assert chip.georef.bands == (1, 2, 3)
    assert not chip.valid[:, :4].any() and chip.valid[:, 4:].all()
    assert (chip.image[:, :4] == PAD_RGB).all()


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(OSError, match="nothere.tif"):
        read_chip(tmp_path / "nothere.tif")
    path = write_raster(tmp_path / "rgb.tif", pattern(8, 8))
    with pytest.raises(ValueError, match="stretch"):
        read_chip(path, stretch=(98, 2))
    with pytest.raises(ValueError, match="left < right"):
        read_chip(path, bounds=(ORIGIN[0] + 50, ORIGIN[1] - 50, ORIGIN[0], ORIGIN[1]))
