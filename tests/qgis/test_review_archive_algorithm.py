"""unirs:review_archive in real QGIS 3.22: a manifest of synthetic dated mosaic pairs (one of them
unreadable) reviewed by the tiny checkpoint in the real subprocess worker; each pair's GeoPackage read
back with OGR and QGIS, loaded into the project styled and named after its pair; cancel and resume;
bad inputs answered in one line; the same review on a local Ray cluster (skipped without Ray)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from osgeo import ogr
from qgis.core import (QgsGraduatedSymbolRenderer, QgsProcessingContext, QgsProcessingException, QgsProject,
                       QgsVectorLayer)

from tests.qgis.recording import RecordingFeedback
from tests.qgis.test_review_algorithm import engine_record
from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.review.job import TILE_UNITS, ReviewJob

TILE = 64


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> list[tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("archive")
    return [write_mosaic_pair(folder / "one", size=128, tile=TILE, seed=11),
            write_mosaic_pair(folder / "two", size=192, tile=TILE, seed=12)]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps({"pairs": rows}))
        return path
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({key for row in rows for key in row}))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_parameters_follow_the_review_job_and_help_names_them(unirs_provider, unirs_home, tmp_path):
    QgsProject.instance().clear()   # an unsaved project (earlier tests may have named it)
    alg = unirs_provider.algorithm("review_archive").create()   # as each dialog does
    defaults = {name: field.default for name, field in ReviewJob.__dataclass_fields__.items()}
    assert alg.parameterDefinition("TILE_SIZE").defaultValue() == defaults["tile_size"]
    assert TILE_UNITS[alg.parameterDefinition("TILE_UNITS").defaultValue()] == defaults["tile_units"]
    assert alg.parameterDefinition("CAPTION_ALL").defaultValue() == defaults["caption_all"]
    assert alg.parameterDefinition("MAX_TILES").defaultValue() == defaults["max_tiles"]
    for name in ("THRESHOLD", "RAY", "ACTORS"):   # unset: the model's threshold, the worker's own process
        assert alg.parameterDefinition(name).flags() & alg.parameterDefinition(name).FlagOptional
    assert alg.parameterDefinition("THRESHOLD").defaultValue() is None
    advanced = {p.name() for p in alg.parameterDefinitions() if p.flags() & p.FlagAdvanced}
    assert advanced == {"RAY", "ACTORS"}
    assert {o.name(): o.type() for o in alg.outputDefinitions()} == {
        "OUTPUT_FOLDER": "outputFolder", "SUMMARY": "outputFile", "PAIRS": "outputNumber",
        "FAILED": "outputNumber", "TOTAL_TILES": "outputNumber", "CHANGED": "outputNumber"}
    # never a temporary folder by default: the verdicts live in the GeoPackages
    assert alg.parameterDefinition("OUTPUT_FOLDER").defaultValue() == str(unirs_home / "reviews" / "review_archive")
    # the engine's params: the default folder named after the manifest, the shared options as ReviewJob's
    manifest = write_manifest(tmp_path / "coast 2024.csv", [{"before": "a.tif", "after": "b.tif"}])
    feedback = RecordingFeedback()
    params = alg.params({"MANIFEST": str(manifest)}, QgsProcessingContext(), feedback)
    assert params == {"manifest": str(manifest), "out_dir": str(unirs_home / "reviews" / "review_coast_2024"),
                      "ray": None, "actors": None,
                      "options": {"tile_size": defaults["tile_size"], "tile_units": defaults["tile_units"],
                                  "threshold": None, "caption_all": False, "max_tiles": defaults["max_tiles"]}}
    assert not feedback.warnings
    params = alg.params({"MANIFEST": str(manifest), "OUTPUT_FOLDER": "TEMPORARY_OUTPUT", "RAY": " auto ",
                         "ACTORS": 2, "THRESHOLD": 0.2, "TILE_UNITS": 1}, QgsProcessingContext(), feedback)
    assert (params["ray"], params["actors"], params["options"]["threshold"], params["options"]["tile_units"]) \
        == ("auto", 2, 0.2, "map")
    (warning,) = feedback.warnings
    assert warning.startswith(f"The reviews are written to a temporary folder ({params['out_dir']})")
    help_text = alg.shortHelpString()
    assert "<b>Ray cluster address (empty: the UniRS engine)</b>: empty: the pairs run" in help_text
    assert "<b>Archive manifest (CSV or JSON)</b>: a CSV file" in help_text


def test_an_archive_is_reviewed_pair_by_pair_and_loaded_styled(processing_ready, unirs_provider, mosaics, tmp_path,
                                                               qgis_new_project):
    import processing

    (before1, after1), (before2, after2) = mosaics
    manifest = write_manifest(tmp_path / "archive.csv", [
        {"name": "harbour", "before": str(before1), "after": str(after1)},
        {"name": "airport", "before": str(before2), "after": str(after2), "date_before": "2018-05-01",
         "date_after": "2024-05-01"},
        {"name": "lost", "before": str(tmp_path / "missing.tif"), "after": str(after1)}])
    out = tmp_path / "reviews"
    feedback = RecordingFeedback()
    result = processing.runAndLoadResults("unirs:review_archive", {
        "MANIFEST": str(manifest), "OUTPUT_FOLDER": str(out), "TILE_SIZE": TILE, "THRESHOLD": 0.05},
        feedback=feedback)

    assert result["OUTPUT_FOLDER"] == str(out) and result["SUMMARY"] == str(out / "archive_summary.csv")
    assert result["PAIRS"] == 3 and result["FAILED"] == 1
    records = {name: engine_record(str(out / f"{name}.gpkg")) for name in ("harbour", "airport")}
    assert result["TOTAL_TILES"] == sum(r["total_tiles"] for r in records.values()) == 4 + 9
    assert result["CHANGED"] == sum(r["changed"] for r in records.values())
    assert not (out / "lost.gpkg").exists()
    with open(result["SUMMARY"], newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert {name: row["status"] for name, row in rows.items()} == {"harbour": "done", "airport": "done",
                                                                   "lost": "failed"}
    # one line per pair in the log; the failed one also as a warning naming its file
    for name, record in records.items():
        assert f"{name}: {record['next_tile']}/{record['total_tiles']} tiles, {record['changed']} changed, done" \
               in feedback.infos
    (warning,) = feedback.warnings
    assert warning.startswith("Pair 'lost' failed: ") and "missing.tif" in warning
    assert any(info.startswith("lost: 0/0 tiles, 0 changed, failed: ") for info in feedback.infos)

    # every written review is loaded as "<pair> changes", styled with the threshold the engine applied
    loaded = {layer.name(): layer for layer in QgsProject.instance().mapLayers().values()}
    assert set(loaded) == {"harbour changes", "airport changes"}
    for name, record in records.items():
        layer = loaded[f"{name} changes"]
        assert layer.source() == f"{out / name}.gpkg|layername=changes"
        assert layer.featureCount() == record["features"] == record["total_tiles"] - record["skipped_nodata"] \
            - record["skipped_outside"]
        assert isinstance(layer.renderer(), QgsGraduatedSymbolRenderer) and layer.labelsEnabled()
        assert layer.renderer().ranges()[0].upperValue() == pytest.approx(0.05) == record["threshold"]
        # the style is saved into the GeoPackage: it opens styled anywhere
        again = QgsVectorLayer(layer.source(), "again", "ogr")
        assert isinstance(again.renderer(), QgsGraduatedSymbolRenderer)
    airport = next(loaded["airport changes"].getFeatures())
    assert airport["date_before"].toString("yyyy-MM-dd") == "2018-05-01"


def test_cancel_keeps_the_finished_tiles_and_a_rerun_resumes(processing_ready, unirs_provider, mosaics, tmp_path,
                                                             qgis_new_project):
    import processing

    (before1, after1), (before2, after2) = mosaics
    manifest = write_manifest(tmp_path / "archive.json", [
        {"name": "first", "before": str(before1), "after": str(after1)},
        {"name": "second", "before": str(before2), "after": str(after2)}])
    params = {"MANIFEST": str(manifest), "OUTPUT_FOLDER": str(tmp_path / "out"), "TILE_SIZE": 32}
    feedback = RecordingFeedback()
    # Cancel once the first batch is committed; the worker may finish the unit it is on meanwhile.
    feedback.progressChanged.connect(lambda p: p > 0 and feedback.cancel())
    partial = processing_ready("unirs:review_archive", params, feedback=feedback)
    assert feedback.warnings[-1].startswith("Archive review cancelled: every finished tile is kept")
    done = sum(engine_record(str(tmp_path / "out" / f"{name}.gpkg"))["next_tile"]
               for name in ("first", "second") if (tmp_path / "out" / f"{name}.gpkg").exists())
    assert 0 < done < partial["TOTAL_TILES"] and partial["FAILED"] == 0

    # the resumed run reloads a review already open in the project instead of loading it twice
    first = f"{tmp_path / 'out' / 'first.gpkg'}|layername=changes"
    opened = QgsProject.instance().addMapLayer(QgsVectorLayer(first, "mine", "ogr"))
    feedback = RecordingFeedback()
    result = processing.runAndLoadResults("unirs:review_archive", params, feedback=feedback)
    assert not feedback.warnings and result["TOTAL_TILES"] == 16 + 36
    records = [engine_record(str(tmp_path / "out" / f"{name}.gpkg")) for name in ("first", "second")]
    assert all(r["finished"] for r in records) and sum(r["next_tile"] for r in records) == 16 + 36
    assert sorted(layer.name() for layer in QgsProject.instance().mapLayers().values()) == ["mine",
                                                                                            "second changes"]
    assert opened.featureCount() == 16 and isinstance(opened.renderer(), QgsGraduatedSymbolRenderer)


def test_bad_inputs_are_named_in_one_line(processing_ready, unirs_provider, mosaics, tmp_path):
    run = processing_ready
    before, after = mosaics[0]
    text = tmp_path / "pairs.txt"
    text.write_text("before,after\n")
    with pytest.raises(QgsProcessingException, match=r"Archive manifest must be a CSV or JSON file, got '.*pairs.txt'"):
        run("unirs:review_archive", {"MANIFEST": str(text), "OUTPUT_FOLDER": str(tmp_path / "a")})
    with pytest.raises(QgsProcessingException, match=r"Archive manifest: '.*nowhere.csv' is not a file"):
        run("unirs:review_archive", {"MANIFEST": str(tmp_path / "nowhere.csv"), "OUTPUT_FOLDER": str(tmp_path / "b")})
    manifest = write_manifest(tmp_path / "ok.csv", [{"before": str(before), "after": str(after)}])
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(QgsProcessingException, match=r"Output folder: '.*taken' is a file, not a folder"):
        run("unirs:review_archive", {"MANIFEST": str(manifest), "OUTPUT_FOLDER": str(tmp_path / "taken")})
    with pytest.raises(QgsProcessingException, match=r"Model actors: give a Ray cluster address too"):
        run("unirs:review_archive", {"MANIFEST": str(manifest), "OUTPUT_FOLDER": str(tmp_path / "e"), "ACTORS": 2})
    odd = write_manifest(tmp_path / "odd.csv", [{"before": str(before), "after": str(after), "season": "dry"}])
    with pytest.raises(QgsProcessingException, match=r"UniRS engine: .*odd.csv: line 2: unknown key\(s\) season"):
        run("unirs:review_archive", {"MANIFEST": str(odd), "OUTPUT_FOLDER": str(tmp_path / "c")})
    # a pair over MAX_TILES fails alone, named in a warning
    feedback = RecordingFeedback()
    result = run("unirs:review_archive", {"MANIFEST": str(manifest), "OUTPUT_FOLDER": str(tmp_path / "d"),
                                          "TILE_SIZE": 16, "MAX_TILES": 10}, feedback=feedback)
    assert result["PAIRS"] == result["FAILED"] == 1 and result["TOTAL_TILES"] == 0
    (warning,) = feedback.warnings
    assert warning.startswith("Pair '") and "would make 64 tiles" in warning


def scores(gpkg: Path) -> dict[tuple[int, int], float]:
    ds = ogr.Open(str(gpkg))
    return {(f["tile_row"], f["tile_col"]): f["score"] for f in ds.GetLayerByName("changes")}


def test_a_local_ray_cluster_reviews_as_the_engine_does(processing_ready, unirs_provider, mosaics, tmp_path):
    """RAY and ACTORS reach the engine: one model actor on a Ray cluster started for the run scores
    every tile as the worker's own model does (a Ray start: about 10 s)."""
    pytest.importorskip("ray")   # optional (unirs[distributed]); the worker runs this venv's Python
    before, after = mosaics[0]
    manifest = write_manifest(tmp_path / "one.csv", [{"name": "pair", "before": str(before), "after": str(after)}])
    params = {"MANIFEST": str(manifest), "TILE_SIZE": TILE}
    feedback = RecordingFeedback()
    on_ray = processing_ready("unirs:review_archive", {**params, "OUTPUT_FOLDER": str(tmp_path / "ray"),
                                                       "RAY": "local", "ACTORS": 1}, feedback=feedback)
    assert feedback.infos[0].endswith(f"into {tmp_path / 'ray'} on the Ray cluster 'local'")
    here = processing_ready("unirs:review_archive", {**params, "OUTPUT_FOLDER": str(tmp_path / "here")})
    assert on_ray["TOTAL_TILES"] == here["TOTAL_TILES"] == 4 and on_ray["FAILED"] == 0
    ray_scores, own_scores = scores(tmp_path / "ray" / "pair.gpkg"), scores(tmp_path / "here" / "pair.gpkg")
    assert ray_scores.keys() == own_scores.keys() and len(ray_scores) == 4
    assert list(ray_scores.values()) == pytest.approx(list(own_scores.values()), abs=1e-5)
