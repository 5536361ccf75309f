"""dates.py on real layers: metadata temporal extent, GeoTIFF date tag, layer and file names."""

from __future__ import annotations

from osgeo import gdal
from qgis.core import QgsDateTimeRange, QgsLayerMetadata, QgsRasterLayer
from qgis.PyQt.QtCore import QDate, QDateTime, QTime

from unirs_engine.testing.rasters import pattern, write_raster
from unirs_qgis.dates import (date_in_text, dated, dated_pair, describe_dates, layer_date, order_by_date,
                              undated_warning)


def _layer(path, name=None) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), name or path.stem)
    assert layer.isValid()
    return layer


def test_date_in_text_formats_and_invalid_dates():
    assert date_in_text("S2_2021-06-30_T33") == QDate(2021, 6, 30)
    assert date_in_text("scene_20210630.tif") == QDate(2021, 6, 30)
    assert date_in_text("x_2021_06_30") == QDate(2021, 6, 30)
    assert date_in_text("2021-02-30 then 2022-01-02") == QDate(2022, 1, 2)  # 30 Feb skipped
    assert date_in_text("tile_120210630") is None      # inside a longer number: not a date
    assert date_in_text("2021-06_30") is None          # mixed separators
    assert date_in_text("no date") is None


def test_layer_date_sources_in_priority_order(tmp_path):
    path = write_raster(tmp_path / "scene_2019-01-01.tif", pattern(8, 8))
    layer = _layer(path, "named 2020-05-05")
    assert layer_date(layer) == QDate(2020, 5, 5)                       # layer name beats file name
    assert layer_date(_layer(path, "no date in name")) == QDate(2019, 1, 1)

    ds = gdal.Open(str(path), gdal.GA_Update)
    ds.SetMetadataItem("TIFFTAG_DATETIME", "2018:03:04 10:00:00")
    ds = None
    assert layer_date(_layer(path, "named 2020-05-05")) == QDate(2018, 3, 4)   # the tag beats names

    md = QgsLayerMetadata()
    extent = md.extent()
    start = QDateTime(QDate(2017, 7, 8), QTime(0, 0))
    extent.setTemporalExtents([QgsDateTimeRange(start, start)])
    md.setExtent(extent)
    layer.setMetadata(md)
    assert layer_date(layer) == QDate(2017, 7, 8)                        # metadata beats all


def test_order_by_date_puts_undated_last_in_given_order(tmp_path):
    names = ["c_20210301", "undated_b", "a_2020-12-01", "undated_a", "b_2021_01_15"]
    layers = [_layer(write_raster(tmp_path / f"{n}.tif", pattern(4, 4)), n) for n in names]
    ordered = [layer.name() for layer in order_by_date(layers)]
    assert ordered == ["a_2020-12-01", "b_2021_01_15", "c_20210301", "undated_b", "undated_a"]


def test_dated_says_where_the_date_was_found(tmp_path):
    path = write_raster(tmp_path / "scene_2019-01-01.tif", pattern(4, 4))
    assert dated(_layer(path, "named 2020-05-05")) == (QDate(2020, 5, 5), "layer name")
    assert dated(_layer(path, "plain")) == (QDate(2019, 1, 1), "file name")
    assert dated(_layer(write_raster(tmp_path / "undated.tif", pattern(4, 4)))) == (None, "")
    assert describe_dates([_layer(path, "plain"), _layer(write_raster(tmp_path / "u.tif", pattern(4, 4)))]) == \
        "'plain': 2019-01-01 (file name); 'u': no date"


def test_dated_pair_orders_swaps_and_prompts(tmp_path):
    old = _layer(write_raster(tmp_path / "site_20190415.tif", pattern(4, 4)))
    new = _layer(write_raster(tmp_path / "site_20230415.tif", pattern(4, 4)))
    undated = _layer(write_raster(tmp_path / "site.tif", pattern(4, 4)))

    pair = dated_pair(new, old)                                  # the wrong way round: swapped
    assert (pair.before, pair.after, pair.swapped) == (old, new, True)
    assert (pair.date_before, pair.date_after) == (QDate(2019, 4, 15), QDate(2023, 4, 15))
    assert pair.warnings("Before date", "After date") == [
        "'site_20190415' (2019-04-15) is older than 'site_20230415' (2023-04-15): swapped them, before is "
        "now 'site_20190415'"]
    assert not dated_pair(old, new).swapped and dated_pair(old, new).warnings("B", "A") == []

    given = dated_pair(old, new, QDate(2024, 1, 1))              # a given date beats the layer's
    assert given.before is new and given.date_after == QDate(2024, 1, 1)

    kept = dated_pair(undated, old)                              # no date: the given order is kept
    assert (kept.before, kept.after, kept.swapped) == (undated, old, False)
    assert kept.warnings("Before date", "After date") == [
        "No date found for 'site': the order you chose is kept; give its date in 'Before date' or put one "
        "in its name (e.g. site_2021-06-30)"]
    assert undated_warning([old, undated]) == ("No date found for 'site': sent last, in the given order; "
                                               "put a date in their names (e.g. name_2021-06-30) to order them")
    assert undated_warning([old, new]) is None
