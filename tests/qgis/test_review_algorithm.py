"""unirs:review_changes end to end in real QGIS 3.22: synthetic dated mosaics (GDAL-written, after in
another CRS at half the resolution with a nodata hole) reviewed by the tiny checkpoint in the real
subprocess worker; the GeoPackage read back with OGR and QGIS; cancel, resume, styling, verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from osgeo import gdal, ogr
from qgis.core import (QgsGraduatedSymbolRenderer, QgsProcessingException, QgsProject,
                       QgsRasterLayer, QgsVectorLayer)
from qgis.PyQt.QtCore import QDate

from tests.qgis.recording import RecordingFeedback
from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_qgis.algorithms.review_changes import DEFAULT_THRESHOLD
from unirs_qgis.dock.review_panel import changed_tiles, open_review, set_verdict

TILE = 64


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("mosaics")
    return {
        "same_grid": write_mosaic_pair(folder / "same", size=256, tile=TILE, seed=1),
        "warped": write_mosaic_pair(folder / "warped", size=320, tile=TILE, seed=2, after_crs="EPSG:3857",
                                    after_res_factor=2, nodata_hole=True),
        "bigger": write_mosaic_pair(folder / "bigger", size=384, tile=TILE, seed=3),   # no nodata
    }


@pytest.fixture()
def run(processing_ready, unirs_provider):
    return processing_ready


def engine_record(gpkg: str) -> dict:
    """The run record the engine keeps in the GeoPackage, read with OGR (proves the file is valid)."""
    ds = ogr.Open(gpkg)
    assert ds is not None, gpkg
    (record,) = [f.items() for f in ds.GetLayerByName("unirs_review_runs")]
    record["features"] = ds.GetLayerByName("changes").GetFeatureCount()
    return record


def review_layer(result: dict) -> QgsVectorLayer:
    layer = QgsVectorLayer(result["OUTPUT"], "review", "ogr")
    assert layer.isValid(), result["OUTPUT"]
    return layer


def test_threshold_default_and_modeler_outputs(unirs_provider):
    from unirs_engine.review import DEFAULT_THRESHOLD as ENGINE_THRESHOLD

    alg = unirs_provider.algorithm("review_changes")
    assert DEFAULT_THRESHOLD == ENGINE_THRESHOLD
    threshold = alg.parameterDefinition("THRESHOLD")   # unset: the engine uses the model's calibrated one
    assert threshold.defaultValue() is None and threshold.flags() & threshold.FlagOptional
    assert {o.name(): o.type() for o in alg.outputDefinitions()} == {
        "OUTPUT": "outputVector", "TOTAL_TILES": "outputNumber", "CHANGED": "outputNumber",
        "SKIPPED": "outputNumber"}


def test_review_in_another_crs_and_resolution_with_a_nodata_hole(run, mosaics, tmp_path):
    before, after = mosaics["warped"]
    out = tmp_path / "review.gpkg"
    result = run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": TILE,
                                          "OUTPUT": str(out)})
    assert result["OUTPUT"] == f"{out}|layername=changes"
    record = engine_record(str(out))
    layer = review_layer(result)
    assert layer.featureCount() == record["features"] == result["TOTAL_TILES"] - result["SKIPPED"]
    assert result["TOTAL_TILES"] == record["total_tiles"] == (320 // TILE) ** 2   # before's grid
    assert result["SKIPPED"] == record["skipped_nodata"] + record["skipped_outside"] > 0   # the hole
    assert result["CHANGED"] == record["changed"] == sum(1 for f in layer.getFeatures() if f["changed"])
    assert layer.crs() == QgsRasterLayer(str(before)).crs()
    feature = next(layer.getFeatures())
    assert feature["date_before"] == QDate(2019, 6, 1) and feature["date_after"] == QDate(2023, 6, 1)
    # the default style saved into the GeoPackage: any QGIS opens it graduated by score, labelled
    renderer = layer.renderer()
    assert isinstance(renderer, QgsGraduatedSymbolRenderer) and renderer.classAttribute() == "score"
    assert renderer.ranges()[0].upperValue() == pytest.approx(DEFAULT_THRESHOLD)
    assert layer.labelsEnabled() and "caption" in layer.labeling().settings().fieldName


def test_loaded_output_is_styled_by_the_post_processor(processing_ready, unirs_provider, mosaics, tmp_path,
                                                      qgis_new_project):
    import processing

    before, after = mosaics["same_grid"]
    result = processing.runAndLoadResults("unirs:review_changes", {
        "BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": TILE, "THRESHOLD": 0.3,
        "OUTPUT": str(tmp_path / "loaded.gpkg")})
    (layer,) = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.source() == result["OUTPUT"]]
    assert isinstance(layer.renderer(), QgsGraduatedSymbolRenderer)
    assert layer.renderer().ranges()[0].upperValue() == pytest.approx(0.3) and layer.labelsEnabled()
    assert layer.featureCount() == result["TOTAL_TILES"] == 16


def test_cancel_keeps_a_valid_partial_review_and_rerun_resumes(run, mosaics, tmp_path):
    before, after = mosaics["bigger"]   # 144 tiles of 32 px: 18 batches
    out = tmp_path / "resumable.gpkg"
    params = {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": 32, "OUTPUT": str(out)}
    feedback = RecordingFeedback()
    # Cancel once the first batch is committed; the worker may finish the batch it is on meanwhile.
    feedback.progressChanged.connect(lambda p: p > 0 and feedback.cancel())
    partial = run("unirs:review_changes", params, feedback=feedback)
    (warning,) = [w for w in feedback.warnings if w.startswith("Cancelled after")]
    done = engine_record(str(out))
    assert warning.startswith(f"Cancelled after {done['next_tile']} of 144 tiles")
    assert 0 < done["next_tile"] < 144 and not done["finished"]
    assert done["features"] == review_layer(partial).featureCount() == done["next_tile"]

    feedback = RecordingFeedback()
    result = run("unirs:review_changes", params, feedback=feedback)
    assert not feedback.warnings and engine_record(str(out))["finished"]
    assert review_layer(result).featureCount() == 144 == result["TOTAL_TILES"]
    assert f"Resumed at tile {done['next_tile']}" in feedback.infos


def test_verdicts_survive_a_rerun_and_a_different_job_is_refused(run, mosaics, tmp_path):
    before, after = mosaics["same_grid"]
    out = tmp_path / "judged.gpkg"
    params = {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": TILE, "THRESHOLD": 0.0,
              "OUTPUT": str(out)}
    run("unirs:review_changes", params)
    layer = open_review(str(out))
    top = changed_tiles(layer)[0]
    set_verdict(layer, top.fid, "rejected")
    run("unirs:review_changes", params)   # finished job: returns at once, writes nothing
    assert changed_tiles(open_review(str(out)))[0].verdict == "rejected"
    # The traceback pytest.raises keeps holds this frame: a layer left in it would outlive QGIS.
    del layer
    with pytest.raises(QgsProcessingException, match="UniRS engine: .*tile_size"):
        run("unirs:review_changes", {**params, "TILE_SIZE": 128})


def test_swapped_dates_and_bad_inputs(run, mosaics, tmp_path):
    before, after = mosaics["same_grid"]
    feedback = RecordingFeedback()
    result = run("unirs:review_changes", {"BEFORE": str(after), "AFTER": str(before), "TILE_SIZE": 128,
                                          "OUTPUT": str(tmp_path / "swapped.gpkg")}, feedback=feedback)
    assert any("swapped them" in w for w in feedback.warnings)
    assert next(review_layer(result).getFeatures())["date_before"] == QDate(2019, 6, 1)

    gdal.Translate("/vsimem/r2_review.tif", str(before))
    # Owned by the project, which deletes it before the file is unlinked (QGIS crashes at exit otherwise).
    in_memory = QgsProject.instance().addMapLayer(QgsRasterLayer("/vsimem/r2_review.tif", "mem"))
    try:
        with pytest.raises(QgsProcessingException, match="BEFORE: layer .* is not a raster file"):
            run("unirs:review_changes", {"BEFORE": in_memory.id(), "AFTER": str(after),
                                         "OUTPUT": str(tmp_path / "mem.gpkg")})
    finally:
        QgsProject.instance().removeMapLayer(in_memory.id())
        gdal.Unlink("/vsimem/r2_review.tif")
    with pytest.raises(QgsProcessingException, match=r"OUTPUT must be a GeoPackage file \(\.gpkg\)"):
        run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after),
                                     "OUTPUT": str(tmp_path / "tiles.shp")})
    with pytest.raises(QgsProcessingException, match="would make .* tiles"):
        run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": 16,
                                     "MAX_TILES": 10, "OUTPUT": str(tmp_path / "many.gpkg")})
    assert not (tmp_path / "mem.gpkg").exists() and not (tmp_path / "tiles.shp").exists()
