"""read_pair: the after raster lands on the before chip's grid, whatever its CRS and resolution."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds

from unirs_engine.inputs.pair import read_pair
from unirs_engine.inputs.raster import PAD_RGB
from unirs_engine.testing.rasters import (ORIGIN, RES, SQUARE, UTM33, grid, pattern, write_pair, write_png,
                                          write_raster, write_uint16_bgrn)


# SQUARE as (row, col) of its first and last pixel on the before grid: rows 30..39, cols 20..29.
SQUARE_PX = np.array([[(ORIGIN[1] - SQUARE[3]) / RES, (SQUARE[0] - ORIGIN[0]) / RES],
                      [(ORIGIN[1] - SQUARE[1]) / RES - 1, (SQUARE[2] - ORIGIN[0]) / RES - 1]]).astype(int)


def square_pixels(chip) -> np.ndarray:
    """(row, col) min and max of the bright square in a chip."""
    where = np.argwhere((chip.image > 200).all(axis=-1))
    return np.stack([where.min(axis=0), where.max(axis=0)])


def test_after_in_another_crs_and_resolution_is_aligned_on_the_before_grid(tmp_path):
    before, after = write_pair(tmp_path, size=64, after_crs="EPSG:3857", after_res=9.0)
    with rasterio.open(after) as src:
        assert src.crs.to_epsg() == 3857 and src.res == (9.0, 9.0)
    first, second = read_pair(before, after)
    assert first.image.shape == second.image.shape == (64, 64, 3)
    assert second.georef.source == str(after) and first.georef.source == str(before)
    for key in ("crs", "bounds", "transform", "width", "height"):
        assert getattr(first.georef, key) == getattr(second.georef, key)
    # The square must land on the same pixels in both (+-1 px in the warped after).
    np.testing.assert_array_equal(SQUARE_PX, [[30, 20], [39, 29]])
    np.testing.assert_array_equal(square_pixels(first), SQUARE_PX)
    assert np.abs(square_pixels(second) - SQUARE_PX).max() <= 1
    # The left 10 % of the before footprint has no after data: invalid and pad grey there, in both
    # chips (ground against pad grey would read as change).
    np.testing.assert_array_equal(first.valid, second.valid)
    assert not second.valid[:, :6].any() and second.valid[:, 7:].all()
    assert (second.image[:, :6] == PAD_RGB).all() and (first.image[:, :6] == PAD_RGB).all()
    # The texture agrees too, not just the square.
    diff = np.abs(first.image.astype(int) - second.image)[second.valid]
    assert diff.mean() < 2.0


def test_pair_window_in_lonlat_keeps_alignment(tmp_path):
    before, after = write_pair(tmp_path)
    window_utm = (ORIGIN[0] + 150, ORIGIN[1] - 450, ORIGIN[0] + 350, ORIGIN[1] - 250)
    lonlat = transform_bounds(UTM33, "EPSG:4326", *window_utm)
    first, second = read_pair(before, after, bounds=lonlat, bounds_crs="EPSG:4326")
    assert first.image.shape == second.image.shape
    assert first.georef.bounds == second.georef.bounds
    # The square relative to the window's corner.
    row0 = round((ORIGIN[1] - first.georef.bounds[3]) / RES)
    col0 = round((first.georef.bounds[0] - ORIGIN[0]) / RES)
    expected = SQUARE_PX - [row0, col0]
    np.testing.assert_array_equal(square_pixels(first), expected)
    assert np.abs(square_pixels(second) - expected).max() <= 1


def test_after_is_stretched_on_its_own_valid_pixels(tmp_path):
    before, after = write_pair(tmp_path)
    with rasterio.open(after) as src:
        profile, data = src.profile, src.read().astype("float32") / 255.0   # 0..1 reflectance-like
    profile.update(dtype="float32", nodata=-9999.0)
    float_after = tmp_path / "after_float.tif"
    with rasterio.open(float_after, "w", **profile) as dst:
        dst.write(data)
    _, second = read_pair(before, float_after)
    good = second.image[second.valid]
    # Were the -9999 fill outside the footprint counted, every valid pixel would be ~255.
    assert good.min() <= 5 and good.max() == 255 and good.mean() < 160
    assert not second.valid[:, :6].any()


def test_pairs_that_do_not_overlap_name_both_files_and_extents(tmp_path):
    before = write_raster(tmp_path / "here.tif", pattern(16, 16))
    far = write_raster(tmp_path / "far.tif", pattern(16, 16), transform=grid((ORIGIN[0] + 10_000, ORIGIN[1])))
    with pytest.raises(ValueError) as err:
        read_pair(before, far)
    message = str(err.value)
    assert "here.tif and" in message and "far.tif do not overlap" in message
    assert "(500000, 4499840, 500160, 4500000) in EPSG:32633" in message
    assert "(510000, 4499840, 510160, 4500000) in EPSG:32633" in message


def test_plain_image_pair_is_aligned_pixel_for_pixel(tmp_path):
    before = write_png(tmp_path / "a.png", np.zeros((40, 50, 3), np.uint8))
    after_rgb = np.moveaxis(pattern(80, 100), 0, -1)
    after = write_png(tmp_path / "b.png", after_rgb)
    first, second = read_pair(before, after)
    assert second.image.shape == (40, 50, 3) and second.georef.crs is None
    assert np.abs(second.image.astype(int) - after_rgb[::2, ::2]).mean() < 20     # a resampled copy
    same = write_png(tmp_path / "c.png", after_rgb[:40, :50])
    np.testing.assert_array_equal(read_pair(before, same)[1].image, after_rgb[:40, :50])


def test_georeferenced_and_plain_cannot_be_paired(tmp_path):
    geo = write_raster(tmp_path / "geo.tif", pattern(16, 16))
    plain = write_png(tmp_path / "plain.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="geo.tif is georeferenced, .*plain.png is not"):
        read_pair(plain, geo)


def test_bands_after_defaults_to_bands_and_can_differ(tmp_path):
    before = write_uint16_bgrn(tmp_path / "b.tif", size=32)
    after = write_uint16_bgrn(tmp_path / "a.tif", size=32, seed=1)
    first, second = read_pair(before, after, bands=(4, 3, 2))
    assert first.georef.bands == second.georef.bands == (4, 3, 2)
    first, second = read_pair(before, after, bands=(4, 3, 2), bands_after=(3, 2, 1))
    assert second.georef.bands == (3, 2, 1)
    with pytest.raises(ValueError, match=r"a\.tif: band 9 does not exist"):
        read_pair(before, after, bands_after=(9,))
