"""unirs review-archive in this process: the manifest, outputs identical to `unirs review` per pair, an
unreadable pair reported while the rest go on, cancel and resume, an extent, COGs read over HTTP through
/vsicurl/, and the worker op. (On Ray: test_review_archive_ray.py.)"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading

import pytest

from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.engine import Engine
from unirs_engine.review import ReviewError, ReviewJob, plan_review, run_review
from unirs_engine.review.archive import run_archive
from unirs_engine.review.command import open_pool
from unirs_engine.review.manifest import read_manifest
from unirs_engine.review.pools import LocalPool
from unirs_engine.worker.client import SubprocessClient

from .test_review_run import _rows, _same, _valid

OPTIONS = dict(tile_size=32, caption_all=True, batch_size=4)   # 64 tiles a pair, every valid one captioned
DATES = {"p3": ("2019-06-01", "2023-06-01"), "p4": (None, None)}


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    """Two pairs of 256 px mosaics (seeds 3 and 4, each with a nodata hole) and a CSV manifest of them."""
    root = tmp_path_factory.mktemp("archive")
    mosaics = {name: write_mosaic_pair(root / name, size=256, tile=64, nodata_hole=True, seed=seed)
               for name, seed in (("p3", 3), ("p4", 4))}
    manifest = root / "manifest.csv"
    _write_csv(manifest, [dict(name=name, before=str(b.relative_to(root)), after=str(a.relative_to(root)),
                               date_before=DATES[name][0] or "", date_after=DATES[name][1] or "")
                          for name, (b, a) in mosaics.items()])
    return {"root": root, "manifest": manifest, "mosaics": mosaics}


@pytest.fixture(scope="module")
def references(engine, archive) -> dict:
    """Each pair reviewed alone by run_review: what the archive must write."""
    rows = {}
    for name, (before, after) in archive["mosaics"].items():
        job = ReviewJob(str(before), str(after), str(archive["root"] / f"single_{name}.gpkg"),
                        date_before=DATES[name][0], date_after=DATES[name][1], **OPTIONS)
        assert run_review(engine, job).done == 64
        rows[name] = _rows(job.out)
    return rows


def _write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _summary(out) -> dict[str, dict]:
    with open(out / "archive_summary.csv", newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


# ---- the manifest ---------------------------------------------------------------------------------

def test_csv_and_json_manifests_read_alike_with_paths_from_the_manifest_folder(archive, tmp_path):
    pairs = read_manifest(archive["manifest"])
    assert [p.name for p in pairs] == ["p3", "p4"]
    assert pairs[0].before == str(archive["mosaics"]["p3"][0]) and pairs[0].date_after == "2023-06-01"
    assert pairs[1].date_before is None and pairs[1].extent is None
    as_json = archive["root"] / "manifest.json"
    as_json.write_text(json.dumps({"pairs": [
        {"before": str(p.before), "after": str(p.after), "name": p.name, "date_before": p.date_before,
         "date_after": p.date_after} for p in pairs]}))
    assert read_manifest(as_json) == pairs
    urls = tmp_path / "urls.json"   # GDAL URLs as given; the default name from the file stems
    urls.write_text(json.dumps([{"before": "/vsicurl/http://host/a/2019.tif", "after": "/vsis3/bucket/2023.tif",
                                 "extent": "0,0,10,20"}]))
    [pair] = read_manifest(urls)
    assert (pair.name, pair.before, pair.extent) == ("2019_2023", "/vsicurl/http://host/a/2019.tif", (0, 0, 10, 20))


@pytest.mark.parametrize("name, text, message", [
    ("m.csv", "before,after\n", "lists no pairs"),
    ("m.csv", "before,later\na.tif,b.tif\n", "must name the columns before and after (missing after)"),
    ("m.csv", "before,after,colour\na.tif,b.tif,red\n", "line 2: unknown key(s) colour"),
    ("m.csv", "before,after,date_before\na.tif,b.tif,2019-13-01\n", "line 2: date_before must be an ISO date"),
    ("m.csv", "before,after,extent\na.tif,b.tif,\"1,2,3\"\n", "extent must be left,bottom,right,top"),
    ("m.csv", "before,after,extent\na.tif,b.tif,\"5,0,1,1\"\n",
     "extent must be (left, bottom, right, top) with left < right"),
    ("m.csv", "name,before,after\nx,a.tif,b.tif\nx,c.tif,d.tif\n", "line 2 and line 3 both write x.gpkg"),
    ("m.csv", "before,after\n,b.tif\n", "line 2: before must be a raster path"),
    ("m.json", "{", "not valid JSON"),
    ("m.json", '{"pair": []}', "a list of pair objects"),
    ("m.json", '[{"before": "a.tif", "after": 3}]', "pair 1: after must be a raster path"),
])
def test_a_bad_manifest_is_refused_naming_the_line_and_key(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ReviewError) as err:
        read_manifest(path)
    assert message in str(err.value) and str(path) in str(err.value)


# ---- the archive ----------------------------------------------------------------------------------

def test_every_pair_is_the_review_unirs_review_writes_and_a_bad_pair_is_reported(engine, archive, references,
                                                                                  tmp_path):
    manifest = tmp_path / "manifest.csv"
    rows = list(csv.DictReader(archive["manifest"].open()))
    for row in rows:
        row["before"], row["after"] = (str(archive["root"] / row[k]) for k in ("before", "after"))
    not_a_raster = tmp_path / "notes.tif"
    not_a_raster.write_text("not a raster")
    rows[1:1] = [dict(name="missing", before=str(tmp_path / "gone.tif"), after=rows[0]["after"], date_before="",
                      date_after=""),
                 dict(name="text", before=str(not_a_raster), after=rows[0]["after"], date_before="", date_after="")]
    _write_csv(manifest, rows)
    out = tmp_path / "out"
    seen = []
    summary = run_archive(manifest, out, LocalPool(engine), OPTIONS, progress=lambda *a: seen.append(a))

    for name, want in references.items():
        _same(_rows(out / f"{name}.gpkg"), want)
        _valid(out / f"{name}.gpkg")
    table = _summary(out)
    assert [r["status"] for r in table.values()] == ["done", "failed", "failed", "done"]
    assert table["missing"]["error"] == f"{tmp_path / 'gone.tif'}: no such file"
    assert "is not a raster GDAL can read" in table["text"]["error"]
    assert not (out / "missing.gpkg").exists() and not (out / "text.gpkg").exists()
    for name in references:
        assert table[name]["total_tiles"] == table[name]["done_tiles"] == "64"
        assert int(table[name]["captioned"]) == len(references[name])
    d = summary.to_dict()
    assert (d["total_tiles"], d["done_tiles"], d["failed"], summary.tiles_this_run) == (128, 128, 2, 128)
    assert seen[-1][:2] == (128, 128) and [s[0] for s in seen] == sorted(s[0] for s in seen)


def test_a_cancelled_archive_resumes_every_pair_where_it_stopped(engine, archive, references, tmp_path):
    out = tmp_path / "out"
    commits = []
    first = run_archive(archive["manifest"], out, LocalPool(engine), OPTIONS,
                        progress=lambda *a: commits.append(a), is_cancelled=lambda: len(commits) >= 3)
    assert first.cancelled and first.tiles_this_run == 12
    assert _summary(out)["p3"]["status"] == "stopped" and _summary(out)["p4"]["status"] == "waiting"

    second = run_archive(archive["manifest"], out, LocalPool(engine), OPTIONS)
    assert not second.cancelled and second.tiles_this_run == 128 - 12
    for name, want in references.items():
        _same(_rows(out / f"{name}.gpkg"), want)
    third = run_archive(archive["manifest"], out, LocalPool(engine), OPTIONS)   # all done: nothing to do
    assert third.tiles_this_run == 0 and {r["status"] for r in _summary(out).values()} == {"done"}


def test_an_archive_rerun_with_other_options_is_refused_per_pair(engine, archive, tmp_path):
    out, commits = tmp_path / "out", []
    run_archive(archive["manifest"], out, LocalPool(engine), OPTIONS, progress=lambda *a: commits.append(a),
                is_cancelled=lambda: bool(commits))
    run_archive(archive["manifest"], out, LocalPool(engine), {**OPTIONS, "tile_size": 64})
    table = _summary(out)
    assert table["p3"]["status"] == "failed" and "tile_size=32" in table["p3"]["error"]
    assert table["p4"]["status"] == "done" and table["p4"]["total_tiles"] == "16"   # untouched: reviewed anew


def test_an_extent_reviews_only_that_part(engine, archive, tmp_path):
    before, after = archive["mosaics"]["p3"]
    whole = plan_review(ReviewJob(str(before), str(after), "x.gpkg", tile_size=32))
    left, top = whole.transform[2], whole.transform[5]
    res = whole.transform[0]
    extent = (left, top - 64 * res, left + 96 * res, top)      # 3 x 2 tiles of the top left
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"name": "part", "before": str(before), "after": str(after),
                                     "extent": list(extent)},
                                    {"name": "off", "before": str(before), "after": str(after),
                                     "extent": [left - 10 * res, top + 5 * res, left - res, top + 9 * res]}]))
    run_archive(manifest, tmp_path / "out", LocalPool(engine), OPTIONS)
    table = _summary(tmp_path / "out")
    assert table["part"]["total_tiles"] == "6"
    assert table["off"]["status"] == "failed" and "misses the overlap" in table["off"]["error"]


def test_bad_options_are_refused_before_anything_runs(engine, archive, tmp_path):
    with pytest.raises(ReviewError, match="set per pair in the manifest"):
        run_archive(archive["manifest"], tmp_path / "o", LocalPool(engine), {"date_before": "2020-01-01"})
    with pytest.raises(ReviewError, match="tile_size must be > 0"):
        run_archive(archive["manifest"], tmp_path / "o", LocalPool(engine), {"tile_size": 0})
    with pytest.raises(ReviewError, match="model actors need a Ray cluster address"):
        open_pool(None, model=None, device=None, actors=2)
    assert not (tmp_path / "o").exists()


# ---- COGs over HTTP -------------------------------------------------------------------------------

class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte ranges (GDAL's /vsicurl/ reads a COG by ranges)."""

    def send_head(self):
        header = self.headers.get("Range")
        if not header or not header.startswith("bytes="):
            return super().send_head()
        path = self.translate_path(self.path)
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404)
            return None
        size = f.seek(0, 2)
        first, _, last = header[len("bytes="):].partition("-")
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Slice(f, end - start + 1)

    def log_message(self, *args) -> None:
        pass


class _Slice:
    """The part of an open file that a range asks for (copyfile reads until empty)."""

    def __init__(self, f, length: int):
        self.f, self.left = f, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.f.read(n) if n else b""

    def close(self) -> None:
        self.f.close()


@pytest.fixture()
def served(tmp_path):
    """COG copies of the p3 mosaics served from 127.0.0.1 with byte ranges."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler,
                                                                                 directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_cogs_over_http_read_through_vsicurl_give_the_same_review(engine, archive, references, served):
    folder, url = served
    sources = []
    for path in archive["mosaics"]["p3"]:
        cog = folder / path.name
        subprocess.run(["gdal_translate", "-q", "-of", "COG", str(path), str(cog)], check=True)
        sources.append(f"/vsicurl/{url}/{cog.name}")
    manifest = folder / "remote.json"
    manifest.write_text(json.dumps([{"name": "p3", "before": sources[0], "after": sources[1],
                                     "date_before": DATES["p3"][0], "date_after": DATES["p3"][1]}]))
    import rasterio
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif"):
        run_archive(manifest, folder / "out", LocalPool(engine), OPTIONS)
    table = _summary(folder / "out")
    assert table["p3"]["status"] == "done", table["p3"]["error"]
    assert table["p3"]["before"] == sources[0]              # the URL kept as given, not folded as a path
    _same(_rows(folder / "out" / "p3.gpkg"), references["p3"])


# ---- the worker op and the command line ------------------------------------------------------------

def test_the_worker_reviews_an_archive_and_refuses_a_bad_option(tiny_checkpoint, archive, references, tmp_path):
    progress = []
    with SubprocessClient(model_dir=tiny_checkpoint, python=sys.executable) as client:
        d = client.review_archive(archive["manifest"], tmp_path / "out", options=OPTIONS,
                                  on_progress=lambda f, m: progress.append((f, m)))
        with pytest.raises(Exception, match="unknown key.*tile_sizes"):
            client.review_archive(archive["manifest"], tmp_path / "out2", options={"tile_sizes": 32})
    assert (d["done_tiles"], d["failed"], d["pool"]) == (128, 0, "in-process")
    assert progress[-1] == (1.0, "p4: tile 64/64")
    for name, want in references.items():
        _same(_rows(tmp_path / "out" / f"{name}.gpkg"), want)


def test_the_command_line_reports_each_pair_and_exits_1_when_one_failed(tiny_checkpoint, archive, tmp_path):
    manifest = tmp_path / "m.csv"
    shutil.copy(archive["manifest"], manifest)
    with manifest.open("a") as f:
        f.write("gone,gone.tif,gone2.tif,,\n")
    rows = list(csv.DictReader(manifest.open()))
    for row in rows[:2]:
        row["before"], row["after"] = (str(archive["root"] / row[k]) for k in ("before", "after"))
    _write_csv(manifest, rows)
    proc = subprocess.run([sys.executable, "-m", "unirs_engine.cli", "review-archive", str(manifest), "--out",
                           str(tmp_path / "out"), "--model", str(tiny_checkpoint), "--tile-size", "32",
                           "--batch-size", "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("p3: done: 64/64 tiles") and lines[1].startswith("p4: done: 64/64 tiles")
    assert lines[2] == f"gone: failed: {tmp_path / 'gone.tif'}: no such file"
    assert "archive done on in-process: 3 pairs (1 failed), 128/128 tiles" in lines[3]
