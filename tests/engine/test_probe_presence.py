"""scripts/probe_presence.py (the demo model's per-noun diagnostic) on a real small benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from unirs_engine.data.synthetic.writer import write_benchmark
from unirs_engine.train.config import DatasetSpec
from unirs_engine.train.data import read_spec

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_presence.py"


def test_probe_table_has_every_noun_and_scores_the_eval_answers_per_noun(tiny_checkpoint, tmp_path):
    root = tmp_path / "synth"
    write_benchmark(root, seed=0, n_images=40, n_pairs=2, n_videos=2, size=64, splits=(0.5, 0.5, 0.0),
                    progress=False)
    # An eval that is right exactly on the questions about trees (singular and plural wording).
    questions = [s for s in read_spec(DatasetSpec("rsvqa-lr", str(root / "rsvqa"), "val", options={"protocol": "full"}))
                 if s.meta["question_type"] == "presence"]
    about_trees = ["trees" in s.instruction for s in questions]
    assert any(about_trees) and not all(about_trees)
    predictions = tmp_path / "predictions.jsonl"
    with predictions.open("w") as f:
        for s, trees in zip(questions, about_trees):
            wrong = "no" if s.answer == "yes" else "yes"
            f.write(json.dumps({"instruction": s.instruction, "meta": s.meta, "references": s.references,
                                "prediction": s.answer if trees else wrong}) + "\n")

    proc = subprocess.run([sys.executable, str(SCRIPT), str(tiny_checkpoint), str(root),
                           "--predictions", str(predictions)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "noun" not in line}
    assert set(rows) == {"building", "road", "water", "field", "trees", "bare"}
    assert rows["trees"][-1] == "100.0 %"
    assert all(cells[-1] in ("0.0 %", "–") for noun, cells in rows.items() if noun != "trees")
    probed = [cells[3] for cells in rows.values() if cells[3] != "–"]
    assert probed and all(0 <= float(p.rstrip(" %")) <= 100 for p in probed)


def test_probe_reads_a_vision_stage_checkpoint_and_labels_from_the_land_cover(tmp_path):
    from unirs_engine.train.config import load_config
    from unirs_engine.train.vision_pretrain import train_vision

    root = tmp_path / "synth"
    write_benchmark(root, seed=1, n_images=30, n_pairs=2, n_videos=0, size=64, splits=(0.6, 0.2, 0.2),
                    progress=False)
    spec = {"image_size": 56, "patch_size": 14, "vision_hidden": 32, "vision_layers": 2, "vision_heads": 2,
            "vision_intermediate": 64, "llm_hidden": 64, "llm_layers": 2, "llm_heads": 4, "llm_intermediate": 128}
    vision = train_vision(load_config("vision", None, [
        f"out={tmp_path / 'vision'}", "model_spec=" + json.dumps(spec), "max_steps=2", "batch_size=8",
        "data=" + json.dumps([{"task": "rsvqa-lr", "root": str(root / "rsvqa"), "options": {"protocol": "full"}}]),
        "dense_weight=1"]))

    proc = subprocess.run([sys.executable, str(SCRIPT), str(vision), str(root), "--landcover"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    questions, landcover = proc.stdout.split("\n\n")
    for table, images in ((questions, None), (landcover, "12")):   # val + test: 6 + 6 images
        rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                for line in table.splitlines() if line.startswith("| ") and "noun" not in line}
        assert set(rows) == {"building", "road", "water", "field", "trees", "bare"}
        if images:
            assert all(cells[0] == images and 0 <= float(cells[-1].rstrip(" %")) <= 100 for cells in rows.values())
