"""scripts/record_provenance.py (train_demo.sh's last step before eval) on a tiny checkpoint and a
real synthetic benchmark: the model id the loader reports, and training.json's record."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from unirs_engine.checkpoint_info import inspect_checkpoint
from unirs_engine.data.synthetic.writer import write_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "record_provenance.py"


def test_the_checkpoint_gets_its_model_id_and_where_it_came_from(tiny_checkpoint, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    run = tmp_path / "run"
    manifest = write_benchmark(run / "data", seed=3, n_images=4, n_pairs=4, n_videos=2, size=64,
                               progress=False)
    (run / "data" / "seconds").write_text("2\n")
    for stage, seconds in (("vision", 30), ("align", 40), ("cem", 5), ("instruct", 50), ("refine", 12)):
        (run / stage).mkdir()
        (run / stage / "seconds").write_text(f"{seconds}\n")   # change-score not recorded: null

    proc = subprocess.run([sys.executable, str(SCRIPT), str(checkpoint), "--run", str(run),
                           "--model-id", "unirs-demo", "--commit", "abc123", "--dirty", "0", "--seed", "3",
                           "--synth", "--images 4 --pairs 4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert inspect_checkpoint(checkpoint).model_id == "unirs-demo"          # not the folder's name
    record = json.loads((checkpoint / "training.json").read_text())
    assert record["git_commit"] == "abc123" and record["seed"] == 3
    assert record["synth"] == "unirs synth --seed 3 --images 4 --pairs 4"
    assert record["data_counts"] == manifest["counts"] and sum(record["data_counts"]["levircc"]["pairs"].values()) == 4
    assert record["stage_seconds"] == {"synth": 2, "vision": 30, "align": 40, "cem": 5, "instruct": 50,
                                       "refine": 12, "change-score": None}
    assert record["total_seconds"] == 139 and record["device"].startswith("cpu")
    assert "more_videos" not in record


def test_the_instruct_stages_more_videos_are_recorded_with_their_seconds(tiny_checkpoint, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    run = tmp_path / "run"
    write_benchmark(run / "data", seed=3, n_images=2, n_pairs=2, n_videos=2, size=64, progress=False)
    more = write_benchmark(run / "data" / "more-videos", seed=4, n_images=0, n_pairs=0, n_videos=6, size=64,
                           splits=(1, 0, 0), progress=False)
    (run / "data" / "more-videos" / "seconds").write_text("7\n")

    proc = subprocess.run([sys.executable, str(SCRIPT), str(checkpoint), "--run", str(run),
                           "--model-id", "unirs-demo", "--commit", "abc123", "--dirty", "0", "--seed", "3",
                           "--synth", "--images 2", "--more-videos", "--seed 4 --videos 6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((checkpoint / "training.json").read_text())
    assert record["more_videos"] == {"synth": "unirs synth --seed 4 --videos 6",
                                     "videos": {"train": 6, "val": 0, "test": 0},
                                     "classes": more["counts"]["era"]["classes"]}
    assert sum(record["more_videos"]["classes"].values()) == 6
    assert record["stage_seconds"]["more-videos"] == 7 and record["total_seconds"] == 7
