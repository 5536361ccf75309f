"""layer_source.py: file layers pass through; in-memory GDAL, VRT-in-memory and XYZ tile layers are
exported by QGIS to temporary GeoTIFFs that hold the same pixels on the same grid."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import rasterio
from osgeo import gdal
from PIL import Image
from qgis.core import QgsCoordinateReferenceSystem, QgsFeedback, QgsRasterLayer, QgsRectangle

from unirs_engine.testing.rasters import ORIGIN, pattern, write_raster
from unirs_qgis.layer_source import LayerReadError, raster_path_for_engine
from unirs_qgis.temp_files import private_temp_dir

UTM33 = QgsCoordinateReferenceSystem("EPSG:32633")


@pytest.fixture()
def scene(tmp_path) -> Path:
    """48 x 64 px, 3 bands, 10 m UTM 33N from ORIGIN."""
    return write_raster(tmp_path / "scene.tif", pattern(48, 64, seed=3))


@pytest.fixture()
def exported():
    """Collects exported paths and removes them after the test."""
    paths: list[str] = []
    yield paths
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def test_file_backed_layer_is_passed_by_path(scene):
    layer = QgsRasterLayer(str(scene), "scene")
    assert raster_path_for_engine(layer, None, None) == (str(scene), False)


def test_file_layer_is_clipped_when_asked(scene, exported):
    """A sequence request has no bounds: with clip the file itself is cut to the extent."""
    layer = QgsRasterLayer(str(scene), "scene")
    top_left = QgsRectangle(ORIGIN[0], ORIGIN[1] - 200, ORIGIN[0] + 300, ORIGIN[1])
    assert raster_path_for_engine(layer, None, None, clip=True) == (str(scene), False)   # nothing to cut
    path, temporary = raster_path_for_engine(layer, top_left, UTM33, clip=True)
    exported.append(path)
    assert temporary
    with rasterio.open(path) as out, rasterio.open(scene) as src:
        assert out.bounds == pytest.approx((ORIGIN[0], ORIGIN[1] - 200, ORIGIN[0] + 300, ORIGIN[1]))
        np.testing.assert_array_equal(out.read(), src.read(window=src.window(*out.bounds)))


def test_vsimem_layer_is_exported_pixel_for_pixel(scene, exported):
    gdal.Translate("/vsimem/h5a_scene.tif", str(scene))
    try:
        layer = QgsRasterLayer("/vsimem/h5a_scene.tif", "in memory")
        assert layer.isValid() and layer.providerType() == "gdal"
        path, temporary = raster_path_for_engine(layer, None, None)
        exported.append(path)
    finally:
        gdal.Unlink("/vsimem/h5a_scene.tif")
    assert temporary and path.endswith(".tif") and os.path.isfile(path)
    with rasterio.open(scene) as src, rasterio.open(path) as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        np.testing.assert_array_equal(out.read(), src.read())


def test_vrt_in_memory_layer_clipped_to_an_extent_in_another_crs(scene, exported):
    vrt_xml = gdal.Translate("", str(scene), format="VRT").GetMetadata("xml:VRT")[0]
    layer = QgsRasterLayer(vrt_xml, "vrt in memory", "gdal")
    assert layer.isValid()
    # the right half of the scene (x 320..640 m, y -200..-480 m), given in geographic coordinates
    utm = QgsRectangle(ORIGIN[0] + 320, ORIGIN[1] - 480, ORIGIN[0] + 640, ORIGIN[1] - 200)
    from qgis.core import QgsCoordinateTransform, QgsProject

    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    geo = QgsCoordinateTransform(UTM33, wgs84, QgsProject.instance()).transformBoundingBox(utm)
    path, temporary = raster_path_for_engine(layer, geo, wgs84)
    exported.append(path)
    assert temporary
    with rasterio.open(path) as out, rasterio.open(scene) as src:
        left, bottom, right, top = out.bounds
        # covers the requested box (the transformed box is a little larger), clipped to the layer
        assert left <= utm.xMinimum() + 10 and right == pytest.approx(ORIGIN[0] + 640)
        assert bottom <= utm.yMinimum() + 10 and top >= utm.yMaximum() - 10
        assert out.res == pytest.approx((10.0, 10.0))
        window = src.window(*out.bounds)
        np.testing.assert_array_equal(out.read(), src.read(window=window))


def test_xyz_tile_layer_is_rendered_to_rgba(tmp_path, exported):
    # zoom 1: 2 x 2 tiles; tile (x, y) has red = 50 + 100 x and green = 50 + 100 y
    for x in range(2):
        for y in range(2):
            rgb = np.zeros((256, 256, 3), np.uint8)
            rgb[..., 0], rgb[..., 1] = 50 + 100 * x, 50 + 100 * y
            (tmp_path / "1" / str(x)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(tmp_path / "1" / str(x) / f"{y}.png")
    url = quote(f"file://{tmp_path}/{{z}}/{{x}}/{{y}}.png", safe=":/")
    layer = QgsRasterLayer(f"type=xyz&url={url}&zmin=1&zmax=1", "tiles", "wms")
    assert layer.isValid()
    extent = QgsRectangle(-2e7, -1e7, 2e7, 1e7)
    path, temporary = raster_path_for_engine(layer, extent, layer.crs())
    exported.append(path)
    with rasterio.open(path) as out:
        data = out.read()
        assert temporary and out.count == 4 and out.crs.to_epsg() == 3857
        assert out.bounds == pytest.approx((-2e7, -1e7, 2e7, 1e7))
        assert max(out.shape) == 1024  # no native grid: rendered at RENDER_SIDE on the long side
    h, w = data.shape[1:]
    assert tuple(data[:2, h // 4, w // 4]) == (50, 50)            # top-left tile
    assert tuple(data[:2, h // 4, 3 * w // 4]) == (150, 50)       # top-right tile
    assert tuple(data[:2, 3 * h // 4, 3 * w // 4]) == (150, 150)  # bottom-right tile
    assert data[3].min() == 255                                   # opaque


def test_extent_outside_the_layer_is_a_clear_error(scene):
    gdal.Translate("/vsimem/h5a_far.tif", str(scene))
    try:
        layer = QgsRasterLayer("/vsimem/h5a_far.tif", "far")
        far = QgsRectangle(0, 0, 100, 100)
        with pytest.raises(LayerReadError, match="layer 'far': the extent does not overlap the layer"):
            raster_path_for_engine(layer, far, UTM33)
    finally:
        gdal.Unlink("/vsimem/h5a_far.tif")


def test_invalid_layer_is_a_clear_error(tmp_path):
    layer = QgsRasterLayer(str(tmp_path / "missing.tif"), "missing")
    with pytest.raises(LayerReadError, match="layer 'missing' is not a valid raster layer"):
        raster_path_for_engine(layer, None, None)


def test_cancelled_export_leaves_no_file(scene):
    gdal.Translate("/vsimem/h5a_cancel.tif", str(scene))
    folder = Path(private_temp_dir())
    before = set(folder.glob("layer_*"))
    feedback = QgsFeedback()
    feedback.cancel()
    try:
        with pytest.raises(LayerReadError, match="export cancelled"):
            raster_path_for_engine(QgsRasterLayer("/vsimem/h5a_cancel.tif", "c"), None, None, feedback)
    finally:
        gdal.Unlink("/vsimem/h5a_cancel.tif")
    assert set(folder.glob("layer_*")) <= before
