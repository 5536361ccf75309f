"""unirs review-archive on a local Ray cluster with 2 model actors: the pairs' GeoPackages equal the
single-process review, a killed actor's batches are redone elsewhere and written once, a killed driver
resumes on rerun, and unreadable pairs fail with their reason while the others finish.
(In this process: test_review_archive.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from osgeo import gdal

from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.engine import Engine
from unirs_engine.review import ReviewJob, run_review
from unirs_engine.review.archive import run_archive
from unirs_engine.review.pools import RayPool

from .test_review_archive import _summary, _write_csv
from .test_review_run import _rows, _run_state, _same, _valid, _wait_for_first_batch

ray = pytest.importorskip("ray")
gdal.UseExceptions()

OPTIONS = dict(tile_size=32, caption_all=True, batch_size=4)   # 64 tiles a pair, every valid one captioned
DATES = dict(date_before="2019-06-01", date_after="2023-06-01")
NAMES = ("area0", "area1")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for the module; its GCS address. 4 logical CPUs: the module's pool of 2 actors
    and the 2 of a CLI driver fit side by side. OMP_NUM_THREADS=1 in the raylet's environment, which
    every worker inherits: one thread per actor, as the references compute, and 2 actors on 2 cores do
    not oversubscribe them."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        context = ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster, tiny_checkpoint):
    pool = RayPool(cluster, model=str(tiny_checkpoint), device="cpu", actors=2)   # reuses the module's Ray
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    """Two 256 px mosaic pairs (area0 with a nodata hole) and a CSV manifest of them, relative paths."""
    root = tmp_path_factory.mktemp("ray-archive")
    mosaics = {name: write_mosaic_pair(root / name, size=256, tile=64, nodata_hole=name == "area0", seed=20 + i)
               for i, name in enumerate(NAMES)}
    rows = [dict(name=name, before=str(b.relative_to(root)), after=str(a.relative_to(root)), **DATES)
            for name, (b, a) in mosaics.items()]
    manifest = root / "manifest.csv"
    _write_csv(manifest, rows)
    return {"root": root, "manifest": manifest, "mosaics": mosaics}


@pytest.fixture(scope="module")
def references(tiny_checkpoint, archive) -> dict:
    """Each pair reviewed alone by run_review in this process, with one thread like the actors: its
    rows and summary."""
    engine = Engine.load(tiny_checkpoint, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        refs = {}
        for name, (before, after) in archive["mosaics"].items():
            job = ReviewJob(str(before), str(after), str(archive["root"] / f"single_{name}.gpkg"), **DATES, **OPTIONS)
            summary = run_review(engine, job)
            assert summary.done == 64
            refs[name] = {"rows": _rows(job.out), "summary": summary}
    finally:
        torch.set_num_threads(threads)
    assert refs["area0"]["summary"].skipped_nodata > 0 and refs["area1"]["summary"].skipped_nodata == 0
    return refs


def _same_as_reference(out, references) -> None:
    """Every pair's GeoPackage holds the reference's rows, each tile once."""
    for name, ref in references.items():
        rows, s = _rows(out / f"{name}.gpkg"), ref["summary"]
        assert len({r[:2] for r in rows}) == len(rows) == 64 - s.skipped_nodata - s.skipped_outside
        _same(rows, ref["rows"])


def _wait_for_free_cpus(free: float, timeout_s: float = 60) -> None:
    """Wait until the cluster's free CPUs are `free` again: the actors of a finished or dead driver are gone."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) != free:
        assert time.monotonic() < deadline, f"Ray still holds {ray.available_resources()} (expected CPU {free})"
        time.sleep(0.1)


# ---- the same output as one process ---------------------------------------------------------------

def test_the_archive_on_ray_writes_what_the_single_process_review_writes(pool, archive, references, tmp_path):
    out = tmp_path / "out"
    seen = []
    summary = run_archive(archive["manifest"], out, pool, OPTIONS, progress=lambda done, total, _: seen.append(done))

    assert summary.pool == pool.name and pool.name.endswith("2 actor(s) on CPUs") and not summary.cancelled
    d = summary.to_dict()
    assert (d["total_tiles"], d["done_tiles"], d["failed"], summary.tiles_this_run) == (128, 128, 0, 128)
    assert seen == list(range(4, 129, 4))                     # one commit per batch of 4, none twice
    _same_as_reference(out, references)
    table = _summary(out)
    for name, ref in references.items():
        s, row = ref["summary"], table[name]
        assert (row["status"], row["error"], row["gpkg"]) == ("done", "", str(out / f"{name}.gpkg"))
        assert row["total_tiles"] == row["done_tiles"] == "64"
        assert [int(row[k]) for k in ("changed", "captioned", "skipped_nodata", "skipped_outside")] == \
            [s.changed, s.captioned, s.skipped_nodata, s.skipped_outside]
        assert s.captioned == len(ref["rows"])                # caption_all: captions compared too
        assert float(row["model_s"]) > 0 and float(row["read_s"]) > 0
        _valid(out / f"{name}.gpkg")


# ---- failures ---------------------------------------------------------------------------------------

def test_a_killed_actor_s_batches_are_redone_by_the_others_and_written_once(pool, archive, references, tmp_path):
    killed = []

    def kill_an_actor_after_the_first_commit(done, total, message) -> None:
        if not killed:
            killed.append(pool.pool[0])        # it has a batch in flight: each actor gets 2, one came back
            ray.kill(pool.pool[0])

    out = tmp_path / "out"
    summary = run_archive(archive["manifest"], out, pool, OPTIONS, progress=kill_an_actor_after_the_first_commit)

    assert killed and killed[0] not in pool.pool and len(pool.pool) == 2   # replaced
    d = summary.to_dict()
    assert (d["done_tiles"], d["failed"], summary.tiles_this_run) == (128, 0, 128)
    assert {row["status"] for row in _summary(out).values()} == {"done"}
    _same_as_reference(out, references)


def test_a_killed_driver_resumes_every_pair_where_it_stopped(cluster, tiny_checkpoint, archive, references,
                                                              tmp_path):
    """The CLI on the module's cluster (--ray ADDRESS), SIGKILLed after its first commit: Ray ends the dead
    driver's actors (its CPUs come back, nothing leaks), a rerun finishes each pair from its next tile."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unirs_engine.cli", "review-archive", str(archive["manifest"]), "--out",
               str(out), "--model", str(tiny_checkpoint), "--device", "cpu", "--tile-size", "32", "--caption-all",
               "--batch-size", "4", "--ray", cluster, "--actors", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    free = ray.available_resources()["CPU"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_first_batch(proc, out / "area0.gpkg")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    done = {name: _run_state(out / f"{name}.gpkg")["next_tile"] if (out / f"{name}.gpkg").exists() else 0
            for name in NAMES}
    assert 4 <= done["area0"] < 64 and done["area1"] < 64 and all(n % 4 == 0 for n in done.values())
    for name in NAMES:                                        # whole batches, in tile order
        if (out / f"{name}.gpkg").exists():
            _valid(out / f"{name}.gpkg")
            _same(_rows(out / f"{name}.gpkg"),
                  [r for r in references[name]["rows"] if r[0] * 8 + r[1] < done[name]])
    _wait_for_free_cpus(free)

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"128/128 tiles ({128 - sum(done.values())} this run" in rerun.stdout
    assert {row["status"] for row in _summary(out).values()} == {"done"}
    _same_as_reference(out, references)
    _wait_for_free_cpus(free)                                 # the rerun's pool.close() ended its actors


def test_unreadable_pairs_fail_with_their_reason_and_the_others_finish(pool, archive, references, tmp_path):
    """A missing file and a text file fail at planning, in this process; a GeoTIFF whose header reads but
    whose pixels are cut off fails on an actor. The good pair is written as ever."""
    before, after = archive["mosaics"]["area1"]
    cut = _cut_after_header(after, tmp_path / "cut.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    manifest = tmp_path / "manifest.csv"
    _write_csv(manifest, [dict(name="cut", before=str(before), after=str(cut), **DATES),
                          dict(name="missing", before=str(tmp_path / "gone.tif"), after=str(after), **DATES),
                          dict(name="text", before=str(text), after=str(after), **DATES),
                          dict(name="area1", before=str(before), after=str(after), **DATES)])
    out = tmp_path / "out"
    summary = run_archive(manifest, out, pool, OPTIONS)

    table = _summary(out)
    assert {name: row["status"] for name, row in table.items()} == \
        dict(cut="failed", missing="failed", text="failed", area1="done")
    assert table["missing"]["error"] == f"{tmp_path / 'gone.tif'}: no such file"
    assert "is not a raster GDAL can read" in table["text"]["error"] and str(text) in table["text"]["error"]
    assert str(cut) in table["cut"]["error"] and "IReadBlock failed" in table["cut"]["error"]
    assert table["cut"]["total_tiles"] == "64" and table["cut"]["done_tiles"] == "0"
    assert _rows(out / "cut.gpkg") == []
    assert not (out / "missing.gpkg").exists() and not (out / "text.gpkg").exists()
    _same(_rows(out / "area1.gpkg"), references["area1"]["rows"])
    d = summary.to_dict()
    assert (d["failed"], d["total_tiles"], d["done_tiles"]) == (3, 128, 64)


def _cut_after_header(source, path):
    """A COG copy of `source` that ends where its pixels begin (a COG keeps its header first): it opens,
    any read fails."""
    gdal.Translate(str(path), str(source), format="COG")   # 256 px: one 512 px block
    ds = gdal.Open(str(path))
    first = int(ds.GetRasterBand(1).GetMetadataItem("BLOCK_OFFSET_0_0", "TIFF"))
    ds = None
    os.truncate(path, first)
    return path
