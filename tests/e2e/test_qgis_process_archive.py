"""The zipped plugin's unirs:review_archive run by qgis_process.bin on a manifest of two dated mosaic
pairs: the engine worker reviews both, each GeoPackage opens styled, the outputs name the summary."""

from __future__ import annotations

import csv
import json

from qgis.core import QgsGraduatedSymbolRenderer, QgsVectorLayer

from tests.e2e.test_qgis_process import run_ok


def test_review_archive_from_the_command_line(qgis_profile, tmp_path):
    from unirs_engine.data.synthetic.mosaic import write_mosaic_pair

    pairs = [write_mosaic_pair(tmp_path / "north", size=128, tile=64, seed=5),
             write_mosaic_pair(tmp_path / "south", size=192, tile=64, seed=6, after_crs="EPSG:3857")]
    # paths relative to the manifest's folder, one pair named, the other named by the engine
    manifest = tmp_path / "archive.json"
    manifest.write_text(json.dumps([
        {"name": "north", "before": "north/before_2019-06-01.tif", "after": "north/after_2023-06-01.tif"},
        {"before": str(pairs[1][0]), "after": str(pairs[1][1]), "date_before": "2019-06-01"}]))
    out = tmp_path / "reviews"
    result = run_ok(["unirs:review_archive", f"MANIFEST={manifest}", f"OUTPUT_FOLDER={out}", "TILE_SIZE=64"],
                    qgis_profile)["results"]
    assert result["OUTPUT_FOLDER"] == str(out) and result["SUMMARY"] == str(out / "archive_summary.csv")
    assert result["PAIRS"] == 2 and result["FAILED"] == 0 and result["TOTAL_TILES"] == 4 + 9
    with open(result["SUMMARY"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["status"] for row in rows] == ["done", "done"]
    assert sum(int(row["changed"]) for row in rows) == result["CHANGED"]
    for row in rows:
        layer = QgsVectorLayer(f"{row['gpkg']}|layername=changes", row["name"], "ogr")
        skipped = int(row["skipped_nodata"]) + int(row["skipped_outside"])
        assert layer.isValid() and layer.featureCount() == int(row["total_tiles"]) - skipped
        assert isinstance(layer.renderer(), QgsGraduatedSymbolRenderer) and layer.labelsEnabled()  # saved style
        assert sum(1 for f in layer.getFeatures() if f["score_above_threshold"]) == int(row["changed"])
    assert rows[0]["gpkg"] == str(out / "north.gpkg")
