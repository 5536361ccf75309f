"""Smoke run of scripts/bench_archive.py --quick with the tiny checkpoint: it runs the archive in this
process and on 1 and 2 Ray actors, times the writer and the reader, and projects to 8 and 64 GPUs.

The figures depend on the machine and its load, so only their presence and sanity are checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_archive.py"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.timeout(600)
def test_quick_run_reports_pools_writer_reader_and_projection(tiny_checkpoint, tmp_path):
    out = tmp_path / "bench_archive.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--model", str(tiny_checkpoint),
                           "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["quick"] is True and figures["model"] == str(tiny_checkpoint)

    pools = figures["pools"]
    assert set(pools["best"]) == {"in_process", "ray_1", "ray_2"} and pools["identical_outputs"] is True
    for name, run in pools["best"].items():
        assert run["tiles"] == 32, name                           # 2 pairs x 16 tiles of 128 px
        assert all(_positive(run[k]) for k in ("seconds", "tiles_per_s", "model_s_per_tile", "read_s_per_tile"))
        assert 0 < run["busy"] <= 1.05 and run["actors"] == (2 if name == "ray_2" else 1), name
    assert pools["best"]["ray_2"]["pool"].endswith("2 actor(s) on CPUs")
    assert _positive(pools["ratio_2_vs_1"])

    writer, reader = figures["writer"], figures["reader"]
    assert (writer["rows"], writer["batch"], writer["commits"]) == (256, 8, 32) and _positive(writer["rows_per_s"])
    assert reader["windows"] == 32 and _positive(reader["windows_per_s"])

    projection = figures["projection"]
    sources = projection["model_times"]
    assert sources and all(_positive(s["s_per_tile"]) for s in sources)
    assert any(s["device"].startswith("cuda") for s in sources)  # measured, else the stated assumption
    if (REPO / "docs" / "bench_fullsize.json").is_file():
        assert any(s["measured"] for s in sources)
    assert [(r["source"], r["gpus"]) for r in projection["rows"]] == [(s["source"], n) for s in sources
                                                                      for n in (8, 64)]
    for row in projection["rows"]:
        assert row["bottleneck"] in ("model pool", "one writer", "readers")
        assert math.isclose(row["model_tiles_per_s"], row["gpus"] / row["s_per_tile"])
        assert row["writer_rows_per_s"] == writer["rows_per_s"]
        assert math.isclose(row["readers_windows_per_s"], row["gpus"] * reader["windows_per_s"])
    assert projection["verdict"]

    lines = proc.stdout.splitlines()
    assert any(line.startswith("Ray, 2 CPU actors") for line in lines)
    assert any(line.startswith("2 vs 1 Ray actors: ") for line in lines)
    assert any(line.startswith("per-tile model time") and line.endswith("bottleneck") for line in lines)
    assert lines[-1] == projection["verdict"]
