"""unirs:review_changes end to end in real QGIS 3.22: synthetic dated mosaics (GDAL-written, after in
another CRS at half the resolution with a nodata hole) reviewed by the tiny checkpoint in the real
subprocess worker; the GeoPackage read back with OGR and QGIS; cancel (the finished tiles load in the
Review tab), resume (the tab refreshes), styling, default output beside the project, verdicts across
a saved and reopened project, flicker, recalibration from verdicts used by the next review."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from osgeo import gdal, ogr
from pytest_qgis.utils import wait
from qgis.core import (QgsGraduatedSymbolRenderer, QgsProcessingException, QgsProcessingUtils, QgsProject,
                       QgsRasterLayer, QgsVectorLayer)
from qgis.PyQt.QtCore import QDate

from tests.qgis.recording import RecordingFeedback
from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.review.job import DEFAULT_THRESHOLD
from unirs_engine.review.schema import SCORES
from unirs_qgis.dock.review_panel import ReviewPanel, open_review, review_tiles, set_verdict

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


def test_threshold_default_output_and_modeler_outputs(unirs_provider, tmp_path, unirs_home):
    QgsProject.instance().clear()   # an unsaved project (earlier tests may have named it)
    alg = unirs_provider.algorithm("review_changes").create()   # as each dialog does
    threshold = alg.parameterDefinition("THRESHOLD")   # unset: the engine uses the model's threshold
    assert threshold.defaultValue() is None and threshold.flags() & threshold.FlagOptional
    assert {o.name(): o.type() for o in alg.outputDefinitions()} == {
        "OUTPUT": "outputVector", "TOTAL_TILES": "outputNumber", "CHANGED": "outputNumber",
        "SKIPPED": "outputNumber", "DISAGREEMENTS": "outputNumber"}
    # never a temporary file by default: the user's data folder while unsaved, then beside the project
    assert alg.parameterDefinition("OUTPUT").defaultValue() == str(unirs_home / "reviews" / "review.gpkg")
    project = QgsProject.instance()
    project.setFileName(str(tmp_path / "work.qgz"))
    try:
        alg = unirs_provider.algorithm("review_changes").create()
        assert alg.parameterDefinition("OUTPUT").defaultValue() == str(tmp_path / "review.gpkg")
    finally:
        project.setFileName("")
    assert "changed</b> when its score is at or above" in alg.shortHelpString()


def test_the_change_score_is_chosen_per_review(run, mosaics, tmp_path):
    before, after = mosaics["same_grid"]
    out = tmp_path / "feature.gpkg"
    feedback = RecordingFeedback()
    run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": TILE, "THRESHOLD": 0.0,
                                 "SCORE": SCORES.index("feature-cosine") + 1, "OUTPUT": str(out)}, feedback=feedback)
    record = engine_record(str(out))
    assert record["change_score"] == json.loads(record["job_json"])["score"] == "feature-cosine"
    assert any("changed (feature-cosine score ≥ 0," in info for info in feedback.infos)


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
    assert result["CHANGED"] == record["changed"] == sum(1 for f in layer.getFeatures()
                                                         if f["score_above_threshold"])
    assert result["DISAGREEMENTS"] == record["disagreements"] == sum(
        1 for f in layer.getFeatures() if f["caption_says_change"] not in (None, f["score_above_threshold"]))
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
    (warning,) = [w for w in feedback.warnings if w.startswith("Review cancelled after")]
    done = engine_record(str(out))
    assert warning.startswith(f"Review cancelled after {done['next_tile']} of 144 tiles: the finished tiles "
                              "are kept; run it again with the same output to resume")
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
    top = review_tiles(layer)[0]
    set_verdict(layer, top.fid, "rejected", "me")
    run("unirs:review_changes", params)   # finished job: returns at once, writes nothing
    assert review_tiles(open_review(str(out)))[0].verdict == "rejected"
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
    with pytest.raises(QgsProcessingException, match=r"Reviewed tiles must be a GeoPackage file \(\.gpkg\)"):
        run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after),
                                     "OUTPUT": str(tmp_path / "tiles.shp")})
    with pytest.raises(QgsProcessingException, match="would make .* tiles"):
        run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": 16,
                                     "MAX_TILES": 10, "OUTPUT": str(tmp_path / "many.gpkg")})
    assert not (tmp_path / "mem.gpkg").exists() and not (tmp_path / "tiles.shp").exists()


# ---- the Review tab around real runs ---------------------------------------------------------------

@pytest.fixture()
def panel(qgis_iface, qgis_new_project):
    widget = ReviewPanel(qgis_iface)
    widget.show()
    yield widget
    widget.close()
    widget.deleteLater()


def pump(condition, timeout_ms: int = 5000) -> None:
    """Let queued signals (review_events from the algorithm) reach the panel."""
    for _ in range(timeout_ms // 50):
        if condition():
            return
        wait(50)
    assert condition()


def test_a_cancelled_review_loads_its_finished_tiles_and_a_resume_refreshes_the_tab(run, mosaics, tmp_path,
                                                                                   panel, qgis_iface):
    before, after = mosaics["bigger"]
    out = tmp_path / "partial.gpkg"
    params = {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": 32, "THRESHOLD": 0.0, "OUTPUT": str(out)}
    feedback = RecordingFeedback()
    feedback.progressChanged.connect(lambda p: p > 0 and feedback.cancel())
    run("unirs:review_changes", params, feedback=feedback)
    pump(lambda: panel.layer is not None)             # loaded although Processing reports the cancel
    partial = engine_record(str(out))["next_tile"]
    assert panel.layer.source() == f"{out}|layername=changes" and len(panel.tiles) == partial < 144
    assert isinstance(panel.layer.renderer(), QgsGraduatedSymbolRenderer)   # styled
    assert "run it again with the same output to resume" in panel.message_label.text()

    run("unirs:review_changes", params)               # the resume
    pump(lambda: len(panel.tiles) == 144)
    reviews = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.source() == panel.layer.source()]
    assert len(reviews) == 1                          # refreshed in place, not loaded twice


def test_flicker_toggles_the_dated_layers_under_the_tile(run, mosaics, tmp_path, panel):
    before, after = mosaics["same_grid"]
    out = tmp_path / "flicker.gpkg"
    run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": TILE,
                                 "THRESHOLD": 0.0, "OUTPUT": str(out)})
    panel.open_path(str(out))
    panel.flicker_button.click()                      # the rasters are not in the project yet: added
    root = QgsProject.instance().layerTreeRoot()
    nodes = {QgsProject.instance().mapLayer(n.layerId()).source(): n for n in root.findLayers()}
    assert nodes[str(before)].isVisible() is False and nodes[str(after)].isVisible() is True
    assert panel.info_label.text().startswith("Showing after: after")
    assert root.findLayers()[0].layer() is panel.layer   # the review's outlines stay on top
    panel.flicker_button.click()
    assert nodes[str(before)].isVisible() and not nodes[str(after)].isVisible()
    panel.flicker_button.click()
    assert not nodes[str(before)].isVisible() and nodes[str(after)].isVisible()


def test_verdicts_survive_saving_and_reopening_the_project(run, mosaics, tmp_path, panel, unirs_provider):
    project = QgsProject.instance()
    project.setFileName(str(tmp_path / "work.qgz"))
    before, after = mosaics["same_grid"]
    dialog_alg = unirs_provider.algorithm("review_changes").create()   # kept: it owns its parameters
    default = dialog_alg.parameterDefinition("OUTPUT").defaultValue()
    result = run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": TILE,
                                          "THRESHOLD": 0.0, "OUTPUT": default})   # as the dialog offers it
    gpkg = tmp_path / "review_before_2019-06-01_after_2023-06-01.gpkg"
    assert result["OUTPUT"] == f"{gpkg}|layername=changes" and not QgsProcessingUtils.tempFolder() in str(gpkg)
    panel.open_path(str(gpkg))
    panel.confirm_button.click()
    judged = panel.tiles[0].fid
    assert project.write()
    project.clear()
    assert project.read(str(tmp_path / "work.qgz"))
    pump(lambda: panel.layer is not None)
    assert next(t for t in panel.tiles if t.fid == judged).verdict == "confirmed"


def test_recalibrating_from_verdicts_changes_the_next_reviews_threshold(run, mosaics, tmp_path, panel,
                                                                      monkeypatch):
    monkeypatch.setenv("UNIRS_HOME", str(tmp_path / "home"))   # read by this process and the worker
    from unirs_qgis import engine_link

    engine_link.shutdown_client()                      # a worker that sees this UNIRS_HOME
    before, after = mosaics["same_grid"]
    first = tmp_path / "first.gpkg"
    run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": 32,
                                 "THRESHOLD": 0.0, "OUTPUT": str(first)})
    panel.open_path(str(first))
    panel.recalibrate_button.click()
    assert "needs at least 5 confirmed and 5 rejected tiles" in panel.message_label.text()
    ranked = panel.tiles                               # highest score first
    for tile in ranked[:5]:
        set_verdict(panel.layer, tile.fid, "confirmed", "me")
    for tile in ranked[-5:]:
        set_verdict(panel.layer, tile.fid, "rejected", "me")
    panel.recalibrate_button.click()
    learnt = (ranked[-6 + 1].score + ranked[4].score) / 2   # between the lowest confirmed, highest rejected
    assert panel.message_label.text().startswith(f"Threshold for unirs-tiny: 0 → {learnt:.3g}; balanced accuracy on "
                                              "your 5 confirmed and 5 rejected tiles 50 % → 100 %")

    second = tmp_path / "second.gpkg"
    result = run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": 32,
                                          "OUTPUT": str(second)})   # no threshold given
    record = engine_record(str(second))
    assert record["threshold"] == pytest.approx(learnt) and record["threshold_source"].startswith(
        "your verdicts in first.gpkg")
    assert result["CHANGED"] == sum(t.score >= learnt for t in ranked)
    engine_link.shutdown_client()


def test_a_temporary_output_is_warned_about_here_and_in_the_review_tab(run, mosaics, panel):
    before, after = mosaics["same_grid"]
    feedback = RecordingFeedback()
    result = run("unirs:review_changes", {"BEFORE": str(before), "AFTER": str(after), "TILE_SIZE": 128,
                                          "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=feedback)
    assert any("written to a temporary file" in w and "lost when QGIS closes" in w for w in feedback.warnings)
    panel.open_path(result["OUTPUT"].split("|")[0])
    assert "This review is in a temporary file" in panel.message_label.text()
