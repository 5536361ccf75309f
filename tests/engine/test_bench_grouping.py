"""Smoke run of scripts/bench_grouping.py on the tiny checkpoint: it trains both batch orders and
reports both ratios. Their values depend on the machine, so only their presence is checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from .test_train import mixture, write_era, write_levircc, write_rsvqa_lr

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_grouping.py"


def test_bench_grouping_reports_tokens_and_step_ratios(tiny_checkpoint, tmp_path):
    datasets = {"rsvqa": write_rsvqa_lr(tmp_path / "rsvqa"), "levircc": write_levircc(tmp_path / "levircc"),
                "era": write_era(tmp_path / "era")}
    config = tmp_path / "instruct.json"
    config.write_text(json.dumps({"out": "unused", "data": mixture(datasets, repeats=(2, 1, 1)),
                                  "batch_size": 2, "num_frames": 4, "max_length": 1024}))
    figures = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--model", str(tiny_checkpoint),
                           "--batches", "2", "--json", str(figures)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tokens  mixed/grouped" in proc.stdout and "step    mixed/grouped" in proc.stdout
    result = json.loads(figures.read_text())
    assert result["items"] == 8 and result["steps_per_epoch"] == 4 and result["timed_steps"] == 2
    assert set(result["orders"]) == {"mixed", "grouped"}
    assert all(math.isfinite(r) and r > 0 for r in result["ratios"].values())
