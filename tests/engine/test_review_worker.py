"""The "review" op through a real worker process: progress, result, cancel, resume."""

from __future__ import annotations

import sys

import pytest
from osgeo import ogr
from osgeo_utils.samples.validate_gpkg import check as validate_gpkg

from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.review import LAYER, ReviewJob
from unirs_engine.worker.client import EngineClientError, RequestCancelled, SubprocessClient

ogr.UseExceptions()


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    client = SubprocessClient(model_dir=tiny_checkpoint, python=sys.executable, device="cpu",
                              log_path=tmp_path_factory.mktemp("review-worker") / "worker.log", cancel_grace=60.0)
    client.info()  # the worker is up before the tests count progress messages
    yield client
    client.close()


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-worker-mosaics")
    before, after = write_mosaic_pair(root, size=256, tile=64, after_crs="EPSG:3857", seed=1)
    return str(before), str(after), root


def _features(path) -> int:
    ds = ogr.Open(str(path))
    return ds.GetLayerByName(LAYER).GetFeatureCount()


def test_review_op_reports_progress_and_returns_the_summary(client, mosaics):
    before, after, root = mosaics
    job = ReviewJob(before, after, str(root / "whole.gpkg"), tile_size=64, batch_size=4, threshold=0.0)
    messages = []
    summary = client.review({**job.to_dict(), "model": "ignored"},
                            on_progress=lambda fraction, message: messages.append((fraction, message)))
    assert (summary["total_tiles"], summary["done"], summary["cancelled"]) == (16, 16, False)
    assert summary["out"] == job.out and summary["captioned"] == _features(job.out)
    assert messages[0] == (0.0, "review: started")
    reported = [m for i, (_, m) in enumerate(messages) if i and m != messages[i - 1][1]]   # each batch's pause
    assert reported == ["tile 0/16", "tile 4/16", "tile 8/16", "tile 12/16", "tile 16/16"]  # repeats the last
    assert messages[-1][0] == 1.0
    with pytest.raises(EngineClientError, match=r"whole\.gpkg holds a review with tile_size=64"):
        client.review({**job.to_dict(), "tile_size": 32})
    with pytest.raises(EngineClientError, match=r"bad review job: unknown key\(s\) tiles"):
        client.review({**job.to_dict(), "tiles": 3})


def test_cancel_mid_review_raises_keeps_a_valid_file_and_a_rerun_resumes(client, mosaics):
    before, after, root = mosaics
    job = ReviewJob(before, after, str(root / "cancelled.gpkg"), tile_size=32, batch_size=4, caption_all=True)
    seen = []
    pid = client.pid
    with pytest.raises(RequestCancelled):
        client.review(job.to_dict(), on_progress=lambda f, m: seen.append(m),
                      is_cancelled=lambda: "tile 8/64" in seen)
    assert client.pid == pid                                      # the worker confirmed, not killed
    assert validate_gpkg(job.out, extra_checks=True, warning_as_error=True) == []
    kept = _features(job.out)
    assert 8 <= kept < 64 and kept % 4 == 0                        # whole batches (no nodata here)
    summary = client.review(job.to_dict())
    assert (summary["resumed_from"], summary["cancelled"]) == (kept, False)
    assert summary["resumed_from"] + summary["done"] == 64 == _features(job.out)
