"""Ablation tooling on tiny data: clue files (written, resumed, consumed), pairs as 2 frames
without the CEM (training items, a CEM-dropped checkpoint, its evaluation), the ablation table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from unirs_engine import prompts
from unirs_engine.data import load_samples
from unirs_engine.data.synthetic.writer import write_benchmark
from unirs_engine.engine import Engine, EngineError
from unirs_engine.evaluate.runner import evaluate, to_request
from unirs_engine.inputs.preprocess import ImagePreprocessor
from unirs_engine.model.checkpoint import load_checkpoint
from unirs_engine.train.clues import read_clue_ids, write_clues
from unirs_engine.train.config import ConfigError, DatasetSpec, load_config
from unirs_engine.train.data import collate, instruction_dataset, load_clues
from unirs_engine.train.instruct import MultimodalLoss, tokens_per_slot
from unirs_engine.types import InputKind

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """`unirs synth` at a handful of samples: rsvqa 2+2 images, levircc 2+2 pairs, era 2+2 videos."""
    root = tmp_path_factory.mktemp("synth") / "data"
    write_benchmark(root, seed=0, n_images=4, n_pairs=4, n_videos=4, size=64, splits=(0.5, 0.0, 0.5),
                    progress=False)
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from unirs_engine.testing.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("base") / "base")


@pytest.fixture(scope="module")
def loaded(base):
    return load_checkpoint(base, device="cpu", dtype="float32")


def spec(bench, task, **kw):
    folder = {"rsvqa-lr": "rsvqa", "levir-cc": "levircc", "era": "era"}[task]
    return DatasetSpec(task=task, root=str(bench / folder), **kw)


def dataset(loaded, data_spec, max_length=4096):
    preprocessor = ImagePreprocessor(loaded.image_processor, "resize")
    return instruction_dataset(data_spec, loaded.tokenizer, preprocessor, max_length=max_length,
                               tokens_per_slot=tokens_per_slot(loaded.model), num_frames=4)


# ---- clues -----------------------------------------------------------------------------------

def test_clue_command_writes_the_engines_clues(bench, base, tmp_path):
    out = tmp_path / "levircc.jsonl"
    done = subprocess.run([sys.executable, "-m", "unirs_engine.cli", "clues", "--model", str(base),
                           "--task", "levir-cc", "--data", str(bench / "levircc"), "--split", "test",
                           "--out", str(out), "--max-new-tokens", "6", "--device", "cpu"],
                          capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    samples = load_samples("levir-cc", bench / "levircc", split="test")
    clues = load_clues(out)
    assert set(clues) == {s.sample_id for s in samples} and len(samples) == 2
    # The clue `unirs eval --clue --clue-model` would write for the same pair, one by one.
    engine = Engine.load(base, device="cpu", clue_model_dir=base, max_new_tokens=6)
    for s in samples:
        assert engine.run_batch([to_request(s, clue=True)])[0].clue == clues[s.sample_id]


def test_clues_are_shared_per_image_and_resume(bench, loaded, tmp_path):
    engine = Engine(loaded, clue_model=loaded, max_new_tokens=5)
    samples = load_samples("rsvqa-lr", bench / "rsvqa", split="train", protocol="full")
    out = tmp_path / "rsvqa.jsonl"
    assert write_clues(engine, samples, out, batch_size=2, progress=False) == len(samples) == 12
    first = load_clues(out)
    by_image = {}
    for s in samples:
        by_image.setdefault(s.images[0], set()).add(first[s.sample_id])
    assert len(by_image) == 2 and all(len(c) == 1 for c in by_image.values())

    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:9])  # killed mid-line
    with pytest.warns(RuntimeWarning, match="unfinished last line"):
        assert len(read_clue_ids(out)) == 5
    assert write_clues(engine, samples, out, batch_size=2, progress=False) == 7
    assert load_clues(out) == first and len(out.read_text().splitlines()) == 12


def test_training_prompts_carry_the_clue(bench, loaded, tmp_path):
    clue_file = tmp_path / "era.jsonl"
    era = spec(bench, "era", clues=str(clue_file))
    samples = load_samples("era", era.root, split="train")
    clue_file.write_text("".join(json.dumps({"id": s.sample_id, "clue": f"clue {i}: a flooded road"}) + "\n"
                                 for i, s in enumerate(samples)))
    data = dataset(loaded, era)
    for i, s in enumerate(samples):
        item = data[i]
        message = prompts.user_message(InputKind.SEQUENCE, s.instruction, item["pixel_values"].shape[0],
                                       clue=f"clue {i}: a flooded road")
        assert item["input_ids"] == prompts.encode(loaded.tokenizer, message, s.references[0])[0]
        text = loaded.tokenizer.decode([t for t in item["input_ids"] if t >= 0])
        assert "Clue" in text


# ---- without the CEM -------------------------------------------------------------------------

def test_pair_as_frames_items_have_two_slots_and_need_no_cem(bench, loaded):
    frames = dataset(loaded, spec(bench, "levir-cc", pair_as_frames=True))
    item = frames[0]
    s = frames.samples[0]
    assert item["kind"] is InputKind.SEQUENCE and item["pixel_values"].shape[0] == 2
    assert item["input_ids"].count(prompts.IMAGE_TOKEN_INDEX) == 2
    message = prompts.user_message(InputKind.PAIR, s.instruction, 2)
    assert message.startswith("<image>\n<image>\nRemote sensing change captioning:")
    assert item["input_ids"] == prompts.encode(loaded.tokenizer, message, s.references[0])[0]
    assert dataset(loaded, spec(bench, "levir-cc"))[0]["kind"] is InputKind.PAIR

    model = load_checkpoint(loaded.path, device="cpu", dtype="float32").model
    del model.mm_projector.layers["change"]
    batch = collate([frames[0], frames[1]])
    loss = MultimodalLoss(model, train_vision=False)(batch)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="no Change Extraction module"):
        MultimodalLoss(model, train_vision=False)(collate([dataset(loaded, spec(bench, "levir-cc"))[0]]))


def test_drop_change_module_needs_pairs_as_frames(tmp_path):
    data = [{"task": "rsvqa-lr", "root": "d/rsvqa"}, {"task": "levir-cc", "root": "d/levircc"}]
    args = [f"out={tmp_path}", "model=m", "data=" + json.dumps(data), "drop_change_module=true"]
    with pytest.raises(ConfigError, match=r"data\.1\.pair_as_frames: must be true"):
        load_config("instruct", None, args)
    assert load_config("instruct", None, args + ["data.1.pair_as_frames=true"]).drop_change_module


@pytest.fixture(scope="module")
def nocem_run(bench, base, tmp_path_factory):
    """A 2-step instruct run without the CEM on RSVQA + LEVIR-CC pairs as frames."""
    from unirs_engine.train.instruct import train_instruct

    out = tmp_path_factory.mktemp("nocem") / "run"
    data = [spec(bench, "rsvqa-lr").__dict__, spec(bench, "levir-cc", pair_as_frames=True).__dict__]
    config = load_config("instruct", None, [f"out={out}", f"model={base}", "data=" + json.dumps(data),
                                            "drop_change_module=true", "max_steps=2", "batch_size=2",
                                            "max_length=256"])
    return train_instruct(config)


def test_cem_dropped_checkpoint_has_no_change_module(nocem_run, base):
    config = json.loads((nocem_run / "config.json").read_text())
    assert "chg" not in config and json.loads((base / "config.json").read_text())["chg"]
    with safe_open(str(nocem_run / "mm_projector" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("layers.change.") for k in keys)
    assert not load_checkpoint(nocem_run, device="cpu").model.mm_projector.has_change


def test_eval_without_cem_runs_pairs_as_frames(nocem_run, bench, tmp_path):
    engine = Engine.load(nocem_run, device="cpu", max_new_tokens=4)
    evaluate(engine, "levir-cc", bench / "levircc", tmp_path / "plain", progress=False)
    results = evaluate(engine, "levir-cc", bench / "levircc", tmp_path / "frames", pairs_as_frames=True,
                       progress=False)
    assert results["pairs_as_frames"] and results["scored"] == 2 and not results["skipped"]
    assert results["levir-cc"]["change_decision"]["n"] == 2
    records = [json.loads(line) for line in (tmp_path / "frames" / "predictions.jsonl").open()]
    assert all(r["kind"] == "pair" and r["pairs_as_frames"] for r in records)
    # Without a CEM the model takes pairs as two images anyway: the flag changes nothing.
    plain_records = [json.loads(line) for line in (tmp_path / "plain" / "predictions.jsonl").open()]
    assert [r["prediction"] for r in plain_records] == [r["prediction"] for r in records]

    sample = load_samples("levir-cc", bench / "levircc", split="test")[0]
    result = engine.run_batch([to_request(sample, clue=False, pairs_as_frames=True)])[0]
    assert result.task == "change" and prompts.conversation(
        prompts.user_message(InputKind.PAIR, sample.instruction, 2)) == result.prompt
    assert engine.describe_change(*sample.images, sample.instruction).answer == result.answer
    with pytest.raises(EngineError, match="no Change Extraction module"):
        engine.describe_change(*sample.images, pair_mode="cem")


# ---- the table -------------------------------------------------------------------------------

def test_ablation_table_from_real_reports(nocem_run, base, bench, tmp_path):
    runs = {("levircc-nocem", 0, "levir-cc"): nocem_run, ("levircc-nocem", 1, "levir-cc"): nocem_run,
            ("joint", 0, "era"): base}
    for (variant, seed, task), model in runs.items():
        engine = Engine.load(model, device="cpu", max_new_tokens=3 + seed)
        out = tmp_path / variant / f"seed{seed}" / "eval" / task
        evaluate(engine, task, bench / task.replace("-", ""), out, pairs_as_frames=variant.endswith("nocem"),
                 progress=False)
    table_file = tmp_path / "table.md"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "ablation_table.py"), str(tmp_path),
                           "--out", str(table_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert table_file.read_text() == done.stdout
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in done.stdout.splitlines()
            if line.startswith("| ") and "---" not in line}
    header = rows["variant"]
    joint, nocem = dict(zip(header, rows["joint"])), dict(zip(header, rows["levircc-nocem"]))
    assert rows["joint"][-1].startswith("1 (0)") and rows["levircc-nocem"][-1].startswith("2 (0, 1)")
    assert joint["VQA acc."] == "–" and nocem["classification acc."] == "–"

    def report(variant, seed, task):
        return json.loads((tmp_path / variant / f"seed{seed}" / "eval" / task / "report.json").read_text())

    era = report("joint", 0, "era")["era"]["overall_accuracy"]
    assert joint["classification acc."] == f"{100 * era:.2f}"
    decisions = [report("levircc-nocem", s, "levir-cc")["levir-cc"]["change_decision"]["accuracy"]
                 for s in (0, 1)]
    mean = 100 * sum(decisions) / 2
    std = 100 * abs(decisions[0] - decisions[1]) / 2 ** 0.5
    assert nocem["change decision acc."] == f"{mean:.2f} ± {std:.2f}"
