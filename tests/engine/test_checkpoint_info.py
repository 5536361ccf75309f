"""Knowing a checkpoint without loading it (checkpoint_info.py, `unirs info`): the same refusals as the
loader, parameter counts equal to the loaded model's, sharded weights, expected memory, the CLI."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from unirs_engine import checkpoint_info
from unirs_engine.checkpoint_info import (CPU_DTYPE, DEMO_MODEL_DIR, CheckpointError, describe, expected_memory,
                                          inspect_checkpoint)
from unirs_engine.cli import main
from unirs_engine.model.checkpoint import load_checkpoint, pick_device, save_checkpoint
from unirs_engine.testing.rasters import pattern, write_raster
from unirs_engine.testing.tiny import build_tiny_vila_checkpoint
from unirs_engine.types import InputKind


@pytest.fixture(scope="module")
def vila(tmp_path_factory):
    return build_tiny_vila_checkpoint(tmp_path_factory.mktemp("vila") / "vila-tiny")


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint that a test may damage."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "copy")


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def loaded_counts(loaded) -> dict[str, int]:
    m = loaded.model
    layers = m.mm_projector.layers
    return {"vision_tower": numel(m.vision_tower), "mm_projector": numel(layers["single"]),
            "cem": numel(layers["change"]) if "change" in layers else 0, "llm": numel(m.llm),
            "change_score_head": numel(loaded.change_head) if loaded.change_head is not None else 0}


@pytest.mark.parametrize("which", ["unirs", "vila", "demo"])
def test_counts_and_routing_match_the_loaded_model(which, tiny_checkpoint, vila):
    path = {"unirs": tiny_checkpoint, "vila": vila, "demo": DEMO_MODEL_DIR}[which]
    info = inspect_checkpoint(path)
    loaded = load_checkpoint(path, device="cpu")
    assert info.parameters == loaded_counts(loaded)
    assert info.total_parameters == sum(loaded_counts(loaded).values())
    assert info.model_id == loaded.model_id
    assert info.pair_mode == loaded.model.pair_mode
    tower = loaded.model.vision_tower
    probe = torch.zeros(1, tower.grid ** 2, tower.hidden_size)                       # (1, P, D)
    with torch.no_grad():
        assert info.tokens_per_image == loaded.model.visual_slots(probe, InputKind.IMAGE).shape[1]
    assert info.context_tokens == loaded.model.llm.config.max_position_embeddings
    assert info.dtypes == {part: "float32" for part, n in info.parameters.items() if n}


def test_unirs_and_vila_kinds(tiny_checkpoint, vila):
    unirs, plain = inspect_checkpoint(tiny_checkpoint), inspect_checkpoint(vila)
    assert (unirs.kind, unirs.pair_mode, unirs.change_scores) == ("UniRS", "cem", ["cem-cosine", "feature-cosine"])
    assert (plain.kind, plain.pair_mode, plain.change_scores) == ("VILA-1.5", "two-images", ["feature-cosine"])
    assert plain.parameters["cem"] == 0 and plain.thresholds == {"feature-cosine": None}
    assert (unirs.grid, unirs.tokens_per_image) == (5, 9)     # 70 px / 14: 5x5, zero-padded to 6x6, 2x2 merged
    demo = inspect_checkpoint(DEMO_MODEL_DIR)
    assert demo.change_scores[0] == "head" and demo.thresholds["head"]["file"] == "change_score/config.json"
    assert demo.thresholds["head"]["threshold"] == pytest.approx(
        json.loads((DEMO_MODEL_DIR / "change_score/config.json").read_text())["review_change_threshold"])


def test_dtype_on_disk_and_expected_memory(tiny_checkpoint, tmp_path):
    bf16 = save_checkpoint(load_checkpoint(tiny_checkpoint, device="cpu", dtype="bfloat16"), tmp_path / "bf16")
    info = inspect_checkpoint(bf16)
    assert set(info.dtypes.values()) == {"bfloat16"} and "On disk: bfloat16" in describe(info)
    llm = info.llm
    cpu = expected_memory(info, device="cpu")
    assert (cpu["dtype"], cpu["device"]) == (CPU_DTYPE, "cpu") and pick_device("cpu")[1] == getattr(torch, CPU_DTYPE)
    assert cpu["weights"]["llm"] == 4 * info.parameters["llm"]
    assert cpu["kv_cache"] == 2 * llm["layers"] * llm["kv_heads"] * llm["head_dim"] * info.context_tokens * 4
    gpu = expected_memory(info, device="cuda:1", batch_size=3)
    assert (gpu["dtype"], gpu["device"]) == ("bfloat16", "cuda")
    assert gpu["kv_cache"] == 3 * cpu["kv_cache"] // 2 and gpu["weights"]["llm"] == 2 * info.parameters["llm"]
    assert gpu["total"] == sum(gpu["weights"].values()) + gpu["kv_cache"] + gpu["activations"] + gpu["runtime"]
    demo = inspect_checkpoint(DEMO_MODEL_DIR)   # the change-score head stays float32
    assert expected_memory(demo, "fp16")["weights"]["change_score_head"] == 4 * demo.parameters["change_score_head"]
    with pytest.raises(CheckpointError, match="unknown device 'gpu'"):
        expected_memory(info, device="gpu")
    with pytest.raises(CheckpointError, match="unknown dtype 'int8'; expected one of bf16, bfloat16"):
        expected_memory(info, "int8")


def _shard_llm(ckpt):
    llm_dir = ckpt / "llm"
    llm = LlamaForCausalLM.from_pretrained(llm_dir)
    (llm_dir / "model.safetensors").unlink()
    llm.save_pretrained(llm_dir, max_shard_size="200KB")
    return llm_dir, sorted(llm_dir.glob("model-*.safetensors"))


def test_sharded_llm_is_inspected_and_loaded(tiny_checkpoint, ckpt):
    llm_dir, shards = _shard_llm(ckpt)
    assert (llm_dir / "model.safetensors.index.json").is_file() and len(shards) >= 2
    assert inspect_checkpoint(ckpt).parameters == inspect_checkpoint(tiny_checkpoint).parameters
    a, b = load_checkpoint(tiny_checkpoint).model.llm.state_dict(), load_checkpoint(ckpt).model.llm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])
    return path


DAMAGES = {   # what is damaged -> (damage returning the file named, words of the message)
    "missing folder": (lambda c: c / "nowhere", "no such checkpoint folder"),
    "config not JSON": (lambda c: (c / "config.json").write_text("{") or c / "config.json", "not valid JSON"),
    "config a list": (lambda c: (c / "config.json").write_text("[]") or c / "config.json", "not a JSON object"),
    "top-level model_type": (lambda c: _edit(c / "config.json", model_type="llava_qwen"), "expected 'llava_llama'"),
    "missing llm/": (lambda c: shutil.rmtree(c / "llm") or c / "llm", "missing folder"),
    "projector type": (lambda c: _edit(c / "mm_projector/config.json", mm_projector_type="linear"),
                       "expected 'mlp_downsample'"),
    "not safetensors": (lambda c: (c / "vision_tower/model.safetensors").write_text("hello") or
                        c / "vision_tower/model.safetensors", "unreadable or truncated"),
    "truncated projector": (lambda c: _truncate(c / "mm_projector/model.safetensors"), "truncated"),
    "chg without CEM": (lambda c: shutil.copyfile(c.parent / "vila-weights", c / "mm_projector/model.safetensors"),
                        "chg true"),
    "hidden size missing": (lambda c: _edit(c / "config.json", mm_hidden_size=None, drop=True), "missing key"),
    "missing tokenizer": (lambda c: [(c / "llm" / f).unlink() for f in ("tokenizer.model", "tokenizer.json")]
                          and c / "llm/tokenizer.model", "expected the LLaMA sentencepiece tokenizer"),
    "missing image processor": (lambda c: (c / "vision_tower/preprocessor_config.json").unlink() or
                                c / "vision_tower/preprocessor_config.json", "missing"),
    "head of another tower": (lambda c: _add_head(c, dim=48), "dim is 48, expected the vision tower's width 32"),
    "truncated shard": (lambda c: _truncate(_shard_llm(c)[1][0]), "truncated"),
    "missing shard": (lambda c: _drop_last_shard(c), "missing \\(listed in model.safetensors.index.json\\)"),
}


def _edit(path, drop=False, **changes):
    config = json.loads(path.read_text())
    for key, value in changes.items():
        config.pop(key) if drop else config.update({key: value})
    path.write_text(json.dumps(config))
    return path


def _add_head(ckpt, dim):
    config = ckpt / "change_score/config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"type": "unirs-change-score", "dim": dim, "hidden": 8, "dropout": 0.1}))
    return config


def _drop_last_shard(ckpt):
    shard = _shard_llm(ckpt)[1][-1]
    shard.unlink()
    return shard


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_inspection_refuses_with_the_loaders_line(damage, ckpt, vila):
    shutil.copyfile(vila / "mm_projector/model.safetensors", ckpt.parent / "vila-weights")
    apply, words = DAMAGES[damage]
    culprit = apply(ckpt)
    target = ckpt / "nowhere" if damage == "missing folder" else ckpt
    with pytest.raises(CheckpointError, match=words) as inspected:
        inspect_checkpoint(target)
    with pytest.raises(CheckpointError) as loaded:
        load_checkpoint(target)
    assert str(inspected.value) == str(loaded.value)
    assert "\n" not in str(inspected.value) and str(culprit) in str(inspected.value)


def test_inspection_needs_neither_torch_nor_numpy():
    code = (f"import sys; from unirs_engine.checkpoint_info import inspect_checkpoint, describe; "
            f"describe(inspect_checkpoint({str(DEMO_MODEL_DIR)!r})); "
            f"print(sorted(m for m in ('torch', 'numpy', 'transformers', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_names_shared_with_modules_that_import_torch():
    from unirs_engine import engine, types
    from unirs_engine.model import change_score, tokenizer

    assert checkpoint_info.DEMO_MODEL_DIR == engine.DEFAULT_MODEL_DIR
    assert checkpoint_info.TOKENIZER_FILE == tokenizer.TOKENIZER_FILE
    assert (checkpoint_info.CHANGE_SCORE_FOLDER, checkpoint_info.CHANGE_SCORE_KIND) == \
        (change_score.FOLDER, change_score.KIND)
    assert (checkpoint_info.CEM_PAIR, checkpoint_info.TWO_IMAGE_PAIR) == types.PAIR_MODES


# ---- unirs info ---------------------------------------------------------------------------------

def run_cli(capsys, *argv):
    code = main(["info", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_says_how_each_checkpoint_takes_a_pair(capsys, tiny_checkpoint, vila):
    code, out, _ = run_cli(capsys, "--model", vila, "--clue-model", tiny_checkpoint)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Model: vila-tiny (VILA-1.5, ") and lines[0].endswith(f" in {vila}")
    assert "Change: two images in one prompt (no CEM) → 2 slots of 9 tokens" in lines
    assert "Questions (VQA): one image → 9 visual tokens (70 px, 5×5 patches of 14 px)" in lines
    assert "Sequences: 8 frames (config num_video_frames) → 8 slots, 72 tokens" in lines
    assert "On disk: float32" in lines and "Thresholds: feature-cosine not calibrated" in lines
    memory = [line for line in lines if line.startswith("Memory")]
    assert len(memory) == 2 and re.match(r"Memory on CPU: about [\d.]+ MiB in float32 for 1 request \(weights ", memory[0])
    assert re.match(r"Memory on GPU: about [\d.]+ MiB in bfloat16 for 1 request \(weights ", memory[1])
    assert lines[-1].startswith("Clue model: unirs-tiny (UniRS, ")

    code, out, _ = run_cli(capsys, "--model", tiny_checkpoint, "--device", "cpu")
    lines = out.splitlines()
    assert "Change: before and after fused by the Change Extraction module (CEM) → one slot of 9 tokens" in lines
    assert [line for line in lines if line.startswith("Memory")][0].startswith("Memory on CPU: about ")
    assert not any(line.startswith(("Memory on GPU", "Clue model")) for line in lines)


def test_info_json_and_load(capsys, tiny_checkpoint):
    code, out, _ = run_cli(capsys, "--model", tiny_checkpoint, "--json", "--dtype", "bf16", "--batch-size", "2",
                           "--load", "--device", "cpu")
    assert code == 0
    report = json.loads(out)
    model = report["model"]
    assert model["model_id"] == "unirs-tiny" and model["kind"] == "UniRS" and model["pair_mode"] == "cem"
    assert model["memory"]["cpu"]["dtype"] == "bfloat16" and model["memory"]["cpu"]["batch_size"] == 2
    assert report["clue_model"] is None
    engine = report["engine"]
    assert (engine["device"], engine["dtype"]) == ("cpu", "bfloat16")
    assert engine["parameters"] == {"vision_tower": model["parameters"]["vision_tower"],
                                    "mm_projector": model["parameters"]["mm_projector"] + model["parameters"]["cem"],
                                    "llm": model["parameters"]["llm"]}


def test_info_on_a_folder_that_is_no_checkpoint(capsys, tmp_path):
    code, out, err = run_cli(capsys, "--model", tmp_path)
    assert (code, out) == (2, "")
    assert err == f"unirs info: error: {tmp_path}/config.json: missing (expected the VILA-1.5 top-level config)\n"


def test_info_on_rasters_only(capsys, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", pattern(32, 32))
    code, out, _ = run_cli(capsys, raster, "--no-model")
    assert code == 0 and out.splitlines()[:3] == [f"Raster: {raster}", "  driver: GTiff", "  width: 32"]
    assert "Model:" not in out
    code, out, _ = run_cli(capsys, raster, "--no-model", "--json")
    assert list(json.loads(out)) == ["rasters"]
