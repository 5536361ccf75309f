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
