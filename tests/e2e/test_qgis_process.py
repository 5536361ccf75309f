"""The zipped plugin in a fresh profile, run by qgis_process.bin: three algorithms and a Graphical
Modeler model chaining unirs:ask with native:buffer. Kept few: each run starts QGIS and a worker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from qgis.core import (QgsApplication, QgsGraduatedSymbolRenderer, QgsProcessingModelAlgorithm,
                       QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource,
                       QgsProcessingModelOutput,
                       QgsProcessingModelParameter, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString, QgsVectorLayer)
from qgis.PyQt.QtCore import QDate

from tests.e2e.conftest import qgis_process
from unirs_engine.testing.rasters import ORIGIN, pattern, write_pair, write_raster

SCENE_BOUNDS = (ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1])


def run_ok(args: list[str], env: dict[str, str]) -> dict:
    done = qgis_process(["run", *args[:1], "--json", "--", *args[1:]], env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def only_feature(path: str):
    layer = QgsVectorLayer(path, "out", "ogr")
    assert layer.isValid(), path
    (feature,) = list(layer.getFeatures())
    return layer, feature


def test_describe_change_from_the_command_line(qgis_profile, tmp_path):
    before, after = write_pair(tmp_path)
    before = before.rename(tmp_path / "a_2019-07-01.tif")
    after = after.rename(tmp_path / "b_2023-07-01.tif")
    out = tmp_path / "change.gpkg"
    result = run_ok(["unirs:describe_change", f"BEFORE={before}", f"AFTER={after}", f"OUTPUT={out}"],
                    qgis_profile)
    assert result["results"]["OUTPUT"] == str(out)
    layer, feature = only_feature(str(out))
    assert layer.crs().authid() == "EPSG:32633"
    assert feature.geometry().boundingBox().toRectF().getCoords() == pytest.approx(SCENE_BOUNDS)
    assert feature["date_before"] == QDate(2019, 7, 1) and feature["date_after"] == QDate(2023, 7, 1)
    assert isinstance(feature["caption"], str) and feature["changed"] in (True, False)


def test_ask_from_the_command_line(qgis_profile, tmp_path):
    scene = write_raster(tmp_path / "scene.tif", pattern(64, 64))
    out = tmp_path / "ask.gpkg"
    extent = f"{ORIGIN[0]},{ORIGIN[0] + 320},{ORIGIN[1] - 320},{ORIGIN[1]} [EPSG:32633]"
    run_ok(["unirs:ask", f"INPUT={scene}", "QUESTION=How many buildings are there?", f"EXTENT={extent}",
            "BANDS=3,2,1", f"OUTPUT={out}"], qgis_profile)
    _, feature = only_feature(str(out))
    assert feature["question"] == "How many buildings are there?" and feature["layer"] == "scene"
    assert feature.geometry().boundingBox().toRectF().getCoords() == pytest.approx(
        (ORIGIN[0], ORIGIN[1] - 320, ORIGIN[0] + 320, ORIGIN[1]))


@pytest.fixture()
def ask_and_buffer_model(qgis_app, tmp_path) -> Path:
    """A .model3 built with the QgsProcessingModelAlgorithm API: unirs:ask -> native:buffer (50 m)."""
    sys.path.append(str(Path(QgsApplication.pkgDataPath()) / "python" / "plugins"))
    from processing.core.Processing import Processing

    from unirs_qgis.provider import UniRSProvider

    Processing.initialize()
    registry = QgsApplication.processingRegistry()
    provider = UniRSProvider()
    registry.addProvider(provider)  # so the model's child algorithm resolves while we build it
    try:
        model = QgsProcessingModelAlgorithm("Ask and buffer", "UniRS")
        model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                                QgsProcessingModelParameter("raster"))
        model.addModelParameter(QgsProcessingParameterString("question", "Question"),
                                QgsProcessingModelParameter("question"))
        source = QgsProcessingModelChildParameterSource
        ask = QgsProcessingModelChildAlgorithm("unirs:ask")
        ask.setChildId("ask")
        ask.addParameterSources("INPUT", [source.fromModelParameter("raster")])
        ask.addParameterSources("QUESTION", [source.fromModelParameter("question")])
        ask.addParameterSources("CLUE", [source.fromStaticValue(False)])
        assert ask.algorithm() is not None
        model.addChildAlgorithm(ask)

        buffer = QgsProcessingModelChildAlgorithm("native:buffer")
        buffer.setChildId("buffer")
        buffer.addParameterSources("INPUT", [source.fromChildOutput("ask", "OUTPUT")])
        for name, value in {"DISTANCE": 50.0, "SEGMENTS": 5, "END_CAP_STYLE": 0, "JOIN_STYLE": 0,
                            "MITER_LIMIT": 2.0, "DISSOLVE": False}.items():
            buffer.addParameterSources(name, [source.fromStaticValue(value)])
        output = QgsProcessingModelOutput("buffered", "Answers, buffered")
        output.setChildId("buffer")
        output.setChildOutputName("OUTPUT")
        buffer.setModelOutputs({"buffered": output})
        model.addChildAlgorithm(buffer)
        model.updateDestinationParameters()
        path = tmp_path / "ask_and_buffer.model3"
        assert model.toFile(str(path))
    finally:
        registry.removeProvider(provider)
    return path


def test_graphical_modeler_model_chains_ask_and_buffer(qgis_profile, ask_and_buffer_model, tmp_path):
    scene = write_raster(tmp_path / "scene.tif", pattern(64, 64))
    out = tmp_path / "buffered.gpkg"
    run_ok([str(ask_and_buffer_model), f"raster={scene}", "question=What is in the image?",
            f"buffer:buffered={out}"], qgis_profile)
    _, feature = only_feature(str(out))
    assert feature["question"] == "What is in the image?" and isinstance(feature["answer"], str)
    left, bottom, right, top = feature.geometry().boundingBox().toRectF().getCoords()
    # the 640 m footprint grown by 50 m on every side
    assert (left, bottom, right, top) == pytest.approx(
        (SCENE_BOUNDS[0] - 50, SCENE_BOUNDS[1] - 50, SCENE_BOUNDS[2] + 50, SCENE_BOUNDS[3] + 50), abs=0.5)


def test_review_changes_from_the_command_line(qgis_profile, tmp_path):
    from unirs_engine.data.synthetic.mosaic import write_mosaic_pair

    before, after = write_mosaic_pair(tmp_path / "mosaics", size=256, tile=64, seed=4, after_crs="EPSG:3857",
                                      after_res_factor=2, nodata_hole=True)
    out = tmp_path / "review.gpkg"
    result = run_ok(["unirs:review_changes", f"BEFORE={before}", f"AFTER={after}", "TILE_SIZE=64",
                     f"OUTPUT={out}"], qgis_profile)["results"]
    assert result["OUTPUT"] == f"{out}|layername=changes" and result["TOTAL_TILES"] == 16
    layer = QgsVectorLayer(result["OUTPUT"], "review", "ogr")
    assert layer.isValid() and layer.featureCount() == 16 - result["SKIPPED"]
    assert isinstance(layer.renderer(), QgsGraduatedSymbolRenderer) and layer.labelsEnabled()  # saved style
    assert result["CHANGED"] == sum(1 for f in layer.getFeatures() if f["score_above_threshold"])
