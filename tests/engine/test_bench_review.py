"""Smoke run of scripts/bench_review.py: it runs end to end and reports every ratio it was asked for.

The ratios' values depend on the machine, so only their presence and shape are checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_review.py"


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.timeout(900)
def test_quick_batch_and_cache_report_their_ratios(tiny_checkpoint, tmp_path):
    out = tmp_path / "figures.json"
    proc = _bench("--quick", "--only", "batch,cache", "--model", str(tiny_checkpoint),
                  "--work", str(tmp_path / "work"), "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

    figures = json.loads(out.read_text())
    assert figures["model"] == str(tiny_checkpoint) and figures["quick"] is True
    assert set(figures["benchmarks"]) == {"batch", "cache"}
    for name, fig in figures["benchmarks"].items():
        assert math.isfinite(fig["ratio"]) and fig["ratio"] > 0, name
        assert fig["target"] and isinstance(fig["passed"], bool), name
    batch = figures["benchmarks"]["batch"]["details"]
    assert batch["identical_outputs"] is True and batch["tiles"] == 16   # 1024 px mosaic, 256 px tiles
    assert len(figures["benchmarks"]["cache"]["details"]["cold_s"]) >= 2

    lines = proc.stdout.splitlines()
    assert any(line.startswith("batch ") and line.rstrip().endswith(("PASS", "FAIL")) for line in lines)
    assert any(line.startswith("cache ") and line.rstrip().endswith(("PASS", "FAIL")) for line in lines)
    assert "writing a 1024 x 1024 px mosaic pair" in proc.stderr

    # Mosaics are cached under --work: a second run reuses them.
    again = _bench("--quick", "--only", "cache", "--model", str(tiny_checkpoint),
                   "--work", str(tmp_path / "work"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "writing a" not in again.stderr and "cache " in again.stdout


@pytest.mark.timeout(900)
def test_quick_concurrent_reports_ask_latency_idle_and_during_reviews(tiny_checkpoint, tmp_path):
    out = tmp_path / "figures.json"
    proc = _bench("--quick", "--only", "concurrent", "--model", str(tiny_checkpoint),
                  "--work", str(tmp_path / "work"), "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]  # it fails if a review ends before its asks

    fig = json.loads(out.read_text())["benchmarks"]["concurrent"]
    assert math.isfinite(fig["ratio"]) and fig["ratio"] > 0 and fig["target"] == "<= 2x"
    details = fig["details"]
    assert len(details["idle_s"]) == 3                    # one per round
    assert set(details["during_review"]) == {"model_threshold", "every_tile_captioned"}
    for name, during in details["during_review"].items():
        assert len(during["ask_s"]) == len(during["batch_s"]) == 3 and min(during["batch_s"]) > 0, name
    assert any(line.startswith("concurrent ") and line.rstrip().endswith(("PASS", "FAIL"))
               for line in proc.stdout.splitlines())


def test_unknown_benchmark_name_is_refused(tmp_path):
    proc = _bench("--only", "batch,speed", "--work", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "expected some of batch,cache,rss,worker,concurrent, got 'batch,speed'" in proc.stderr
