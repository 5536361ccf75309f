"""scripts/bench_fullsize.py --quick end to end: a 2-layer checkpoint at the real widths is built
(bf16, sharded with an index), every task is timed and the real shapes are asserted on the way."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_fullsize.py"


def _header(file: Path) -> dict:
    """A safetensors file's JSON header: 8 bytes of little-endian length, then the JSON."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


@pytest.mark.timeout(300)
def test_quick_run_times_every_task_at_the_real_widths(tmp_path):
    env = {**os.environ, "UNIRS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    checkpoint = tmp_path / "home" / "bench" / "fullsize-quick"
    figures = json.loads((checkpoint / "bench.json").read_text())
    assert figures["quick"] is True and figures["build_s"] > 0
    (run,) = figures["runs"]
    assert (run["device"], run["dtype"]) == ("cpu", "float32")
    assert run["shapes"]["checked"] == {
        "image_size": 384, "patch_tokens": 729, "vision_hidden": 1152, "visual_tokens": 196, "llm_hidden": 2560,
        "cem_parameters": 7_006_464, "projector_parameters": 18_364_416, "context_tokens": 4096, "num_frames": 8}
    assert run["load_s"] > 0 and run["peak_rss_gib"] >= run["peak_rss_load_gib"] > 0 and run["weights_gib"] > 1

    budget = figures["budget"]
    for name, tokens, slots in (("ask", budget["ask"], 1), ("describe_change", budget["describe"], 1),
                                ("classify", budget["classify"], 8)):
        task = run["tasks"][name]
        assert task["s"] > 0 and task["encode_s"] > 0 and task["generate_s"] > 0, name
        assert task["visual_tokens"] == slots * 196 and task["prefill_tokens"] > task["visual_tokens"], name
        assert task["new_tokens"] == tokens, name   # random weights: every answer runs to its budget
    review = run["review"]
    assert review["tiles"] == budget["tiles"] == 4 and review["tile_px"] == 384
    assert review["score_s"] > 0 and review["caption_s"] > 0 and review["tiles_per_s"] > 0
    assert review["s"] >= review["score_s"] + review["caption_s"]
    assert review["new_tokens"] == budget["caption"]

    # The release layout: llm/ sharded with an index naming every shard, bf16 tensors on disk.
    llm = checkpoint / "llm"
    index = json.loads((llm / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    assert sorted(p.name for p in llm.glob("*.safetensors")) == shards
    for file in [*(llm / s for s in shards), checkpoint / "vision_tower" / "model.safetensors"]:
        dtypes = {t["dtype"] for name, t in _header(file).items() if name != "__metadata__"}
        assert dtypes == {"BF16"}, file
    assert figures["layout"]["llm_shards"] == shards

    assert "reusing" not in proc.stderr and "QUICK" in proc.stdout and "review tiles/s" in proc.stdout
