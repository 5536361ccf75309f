"""scripts/demo_report.py (the README's main job ends with it) on a real review of synthetic mosaics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from unirs_engine.data.synthetic.mosaic import GROUND_TRUTH, write_mosaic_pair
from unirs_engine.engine import Engine
from unirs_engine.review import ReviewJob, run_review

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_report.py"


def test_report_lists_changed_tiles_and_scores_them_against_the_truth(tiny_checkpoint, tmp_path):
    before, after = write_mosaic_pair(tmp_path / "mosaics", size=128, tile=64, seed=5)
    out = tmp_path / "review.gpkg"
    run_review(Engine.load(tiny_checkpoint), ReviewJob(str(before), str(after), str(out), tile_size=64,
                                                       threshold=0.0))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(tmp_path / "mosaics" / GROUND_TRUTH)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "4 tiles reviewed, 4 changed" in proc.stdout and "ground truth:" in proc.stdout
    assert "against the ground truth: " in proc.stdout and "/4 tiles decided right" in proc.stdout
    assert "what the captions say, on the 4 captioned tiles: " in proc.stdout
