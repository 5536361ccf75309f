"""Training stages on tiny data: configs, labels, loss falling, freezing, resume, saved checkpoints."""

import json
import math

import numpy as np
import pytest
import torch

from unirs_engine import prompts
from unirs_engine.inputs.preprocess import ImagePreprocessor
from unirs_engine.model.checkpoint import default_image_processor, load_checkpoint
from unirs_engine.testing.rasters import write_raster, write_video
from unirs_engine.train.config import ConfigError, DatasetSpec, load_config
from unirs_engine.train.data import (InstructionDataset, SkippedSampleWarning, build_mixture, collate,
                                     instruction_dataset, modality_groups)
from unirs_engine.train.loop import GroupedSampler, make_loader
from unirs_engine.types import InputKind, Sample

SIZE = 48  # pixels of the fixture rasters and video frames


def scene(seed: int, water: bool) -> np.ndarray:
    """(3, H, W) uint8: textured ground, with a blue square when `water`."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(60, 140, (3, SIZE, SIZE), dtype=np.uint8)
    if water:
        rgb[:, 10:30, 10:30] = np.array([20, 40, 200], np.uint8)[:, None, None]
    return rgb


def write_rsvqa_lr(root, n_images=2):
    """RSVQA-LR files: LR_split_train_{images,questions,answers}.json + Images_LR/{id}.tif."""
    (root / "Images_LR").mkdir(parents=True)
    images, questions, answers = [], [], []
    for i in range(n_images):
        write_raster(root / "Images_LR" / f"{i}.tif", scene(i, water=i % 2 == 0))
        qid = len(questions)
        images.append({"id": i, "questions_ids": [qid], "active": True})
        questions.append({"id": qid, "img_id": i, "type": "presence", "question": "Is there a water area?",
                          "answers_ids": [qid], "active": True})
        answers.append({"id": qid, "question_id": qid, "answer": "yes" if i % 2 == 0 else "no",
                        "active": True})
    for name, key, records in (("images", "images", images), ("questions", "questions", questions),
                               ("answers", "answers", answers)):
        (root / f"LR_split_train_{name}.json").write_text(json.dumps({key: records}))
    return root


def write_levircc(root, n_pairs=2, unchanged=()):
    """LEVIR-CC: LevirCCcaptions.json + images/train/{A,B}/<name>.tif; pairs listed in `unchanged`
    show the same scene twice."""
    captions = ["many buildings have been built on the bare land", "a lake has appeared in the centre"]
    records = []
    for i in range(n_pairs):
        name = f"train_{i:06d}.tif"
        changed = i not in unchanged
        for side, water in (("A", False), ("B", changed)):
            (root / "images" / "train" / side).mkdir(parents=True, exist_ok=True)
            write_raster(root / "images" / "train" / side / name, scene(10 + i, water))
        texts = captions[i % 2:] + captions[:i % 2] if changed else ["nothing has changed", "there is no change"]
        sentences = [{"tokens": c.split(), "raw": f" {c} .", "imgid": i, "sentid": 5 * i + j}
                     for j, c in enumerate(texts)]
        records.append({"filename": name, "filepath": "train", "split": "train", "changeflag": int(changed),
                        "imgid": i, "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": records}))
    return root


def write_era(root):
    """ERA: <class>/<video>.mp4 + split.json."""
    rng = np.random.default_rng(0)
    paths = []
    for label, water in (("flood", True), ("non-event", False)):
        (root / label).mkdir(parents=True)
        frames = np.stack([np.moveaxis(scene(20 + k, water), 0, -1) for k in range(6)])  # (6, H, W, 3)
        frames = np.clip(frames.astype(int) + rng.integers(-3, 4, frames.shape), 0, 255).astype(np.uint8)
        write_video(root / label / "v0.mp4", frames)
        paths.append(f"{label}/v0.mp4")
    (root / "split.json").write_text(json.dumps({"train": paths, "test": []}))
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    return {"rsvqa": write_rsvqa_lr(root / "rsvqa"), "levircc": write_levircc(root / "levircc"),
            "era": write_era(root / "era")}


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def mixture(datasets, repeats=(1, 1, 1)):
    return [{"task": "rsvqa-lr", "root": str(datasets["rsvqa"]), "repeat": repeats[0]},
            {"task": "levir-cc", "root": str(datasets["levircc"]), "repeat": repeats[1]},
            {"task": "era", "root": str(datasets["era"]), "repeat": repeats[2]}]


# ---- config ---------------------------------------------------------------------------------------

def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_config_file_with_overrides(tmp_path):
    path = write_json(tmp_path / "c.json", {
        "_comment": "ignored", "out": "runs/x", "model": "ckpt", "batch_size": 2,
        "data": [{"task": "rsvqa-lr", "root": "d/rsvqa"}, {"task": "era", "root": "d/era", "repeat": 10}]})
    config = load_config("instruct", path, ["lr=2e-4", "data.1.repeat=5", "data.0.options.protocol=geochat",
                                            "out=runs/y", "gradient_checkpointing=true"])
    assert config.lr == 2e-4 and config.batch_size == 2 and config.out == "runs/y"
    assert config.gradient_checkpointing is True
    assert config.data[1] == DatasetSpec(task="era", root="d/era", repeat=5)
    assert config.data[0].options == {"protocol": "geochat"}
    assert config.warmup_ratio == 0.03 and config.max_length == 4096  # the paper's defaults


@pytest.mark.parametrize("content, overrides, message", [
    ({"out": "o", "model": "m", "data": [{"task": "era", "root": "r"}], "lr_rate": 1}, [],
     r"unknown key 'lr_rate'"),
    ({"out": "o", "model": "m", "data": [{"task": "era", "root": "r"}]}, ["batch_size=two"],
     r"batch_size: expected int"),
    ({"out": "o", "model": "m", "data": [{"task": "era", "root": "r", "repeat": 0}]}, [],
     r"data\.0\.repeat: must be >= 1"),
    ({"out": "o", "model": "m", "data": [{"root": "r"}]}, [], r"missing required key data\.0\.'task'"),
    ({"model": "m", "data": [{"task": "era", "root": "r"}]}, [], r"missing required key 'out'"),
    ({"out": "o", "data": [{"task": "era", "root": "r"}]}, [], r"model: required"),
    ({"out": "o", "model": "m", "data": [{"task": "era", "root": "r"}]}, ["data.3.repeat=2"],
     r"data\.3\.repeat: no such entry"),
])
def test_config_errors_name_file_and_key(tmp_path, content, overrides, message):
    path = write_json(tmp_path / "bad.json", content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config("instruct", path, overrides)
    assert str(path) in str(info.value)


def test_config_invalid_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "out": "o",\n  "lr": ,\n}')
    with pytest.raises(ConfigError, match=r"broken\.json: invalid JSON at line 3"):
        load_config("cem", path)


# ---- data -----------------------------------------------------------------------------------------

def make_dataset(loaded, samples, **kw):
    preprocessor = ImagePreprocessor(loaded.image_processor, loaded.model.config["image_aspect_ratio"])
    options = {"tokens_per_slot": ((loaded.model.vision_tower.grid + 1) // 2) ** 2, "max_length": 4096,
               "num_frames": 4, **kw}
    return InstructionDataset(samples, loaded.tokenizer, preprocessor, **options)


def test_labels_keep_only_the_answer(loaded, datasets):
    tokenizer = loaded.tokenizer
    video = str(datasets["era"] / "flood" / "v0.mp4")
    sample = Sample("v", InputKind.SEQUENCE, [], prompts.classify_instruction(("flood", "non-event")),
                    ["flood"], video=video)
    item = make_dataset(loaded, [sample])[0]
    ids, labels = item["input_ids"], item["labels"]
    assert item["pixel_values"].shape == (4, 3, 70, 70)
    assert ids.count(prompts.IMAGE_TOKEN_INDEX) == 4                       # one slot per frame
    kept = [i for i, label in enumerate(labels) if label != prompts.IGNORE_INDEX]
    assert kept == list(range(kept[0], len(ids)))                          # one block, at the end
    assert [ids[i] for i in kept] == labels[kept[0]:]
    assert labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labels[kept[0]:-1]).strip() == "flood"
    prompt = tokenizer.decode([t for t in ids[:kept[0]] if t >= 0])
    assert prompt.rstrip().endswith("ASSISTANT:") and prompts.TASK_TAGS[InputKind.SEQUENCE] in prompt


def test_truncation_never_cuts_visual_slots(loaded, datasets):
    image = str(datasets["rsvqa"] / "Images_LR" / "0.tif")
    long_answer = " ".join(["several buildings near the river"] * 20)
    sample = Sample("long", InputKind.IMAGE, [image], "Describe the image.", [long_answer])
    full = make_dataset(loaded, [sample])[0]
    t = ((loaded.model.vision_tower.grid + 1) // 2) ** 2
    spliced = len(full["input_ids"]) + t - 1
    limit = spliced - 10
    cut = make_dataset(loaded, [sample], max_length=limit)[0]
    assert len(cut["input_ids"]) + t - 1 == limit
    assert cut["input_ids"] == full["input_ids"][:len(cut["input_ids"])]
    assert cut["input_ids"].count(prompts.IMAGE_TOKEN_INDEX) == 1
    # No room left for any answer token: reported and replaced by the next sample.
    short = Sample("short", InputKind.IMAGE, [image], "Is there water?", ["yes"])
    answer_start = next(i for i, label in enumerate(full["labels"]) if label != prompts.IGNORE_INDEX)
    with pytest.warns(SkippedSampleWarning, match=r"sample 'long'.*do not fit max_length"):
        item = make_dataset(loaded, [sample, short], max_length=answer_start + t - 1)[0]
    assert item["sample_id"] == "short"


def test_unreadable_sample_is_reported_and_skipped(loaded, datasets, tmp_path):
    good = Sample("good", InputKind.IMAGE, [str(datasets["rsvqa"] / "Images_LR" / "1.tif")], "Water?", ["no"])
    missing = Sample("gone", InputKind.PAIR, [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")], "Change?",
                     ["none"])
    log = tmp_path / "skipped.jsonl"
    dataset = make_dataset(loaded, [missing, good], skip_log=log)
    with pytest.warns(SkippedSampleWarning, match=r"sample 'gone' \(.*a\.tif"):
        item = dataset[0]
    assert item["sample_id"] == "good"
    assert "a.tif" in json.loads(log.read_text().splitlines()[0])["error"]


def test_clues_go_into_the_prompt(loaded, datasets, tmp_path):
    from unirs_engine.train.data import SampleError, load_clues

    image = str(datasets["rsvqa"] / "Images_LR" / "0.tif")
    samples = [Sample("q1", InputKind.IMAGE, [image], "Is there water?", ["yes"]),
               Sample("q2", InputKind.IMAGE, [image], "Is it urban?", ["no"])]
    clue_file = tmp_path / "clues.jsonl"
    clue_file.write_text('{"id": "q1", "clue": "a blue lake in the centre"}\n\n'
                         '{"id": "q2", "clue": "fields and trees"}\n')
    item = make_dataset(loaded, samples, clues=load_clues(clue_file))[0]
    text = loaded.tokenizer.decode([t for t in item["input_ids"] if t >= 0])
    assert "Is there water?\nClue: a blue lake in the centre ASSISTANT:" in text
    with pytest.raises(SampleError, match=r"no clue for 1 of 2 samples \(first: 'q2'\)"):
        make_dataset(loaded, samples, clues={"q1": "a lake"})
    clue_file.write_text('{"id": "q1"}\n')
    with pytest.raises(SampleError, match=r"clues\.jsonl:1: expected"):
        load_clues(clue_file)


def test_collate_keeps_variable_image_counts(loaded, datasets):
    samples = [Sample("i", InputKind.IMAGE, [str(datasets["rsvqa"] / "Images_LR" / "0.tif")], "Water?", ["yes"]),
               Sample("v", InputKind.SEQUENCE, [], "Event?", ["flood"],
                      video=str(datasets["era"] / "flood" / "v0.mp4"))]
    dataset = make_dataset(loaded, samples)
    batch = collate([dataset[0], dataset[1]])
    assert [p.shape[0] for p in batch["pixel_values"]] == [1, 4]
    assert batch["kind"] == [InputKind.IMAGE, InputKind.SEQUENCE]


def test_all_references_gives_one_item_per_caption(loaded, datasets):
    root = datasets["levircc"] / "images" / "train"
    sample = Sample("p", InputKind.PAIR, [str(root / "A" / "train_000000.tif"), str(root / "B" / "train_000000.tif")],
                    prompts.CHANGE_DESCRIBE_INSTRUCTION, ["a road was built", "a lake has appeared"])
    assert len(make_dataset(loaded, [sample])) == 1
    both = make_dataset(loaded, [sample], all_references=True)
    answers = [loaded.tokenizer.decode([t for t in both[i]["labels"] if t >= 0][:-1]).strip() for i in range(2)]
    assert answers == ["a road was built", "a lake has appeared"]


def test_grouped_batches_hold_one_group_each_in_an_order_fixed_by_seed_and_epoch():
    groups = ["image"] * 37 + ["pair"] * 20 + ["video"] * 9
    sampler = GroupedSampler(groups, batch_size=4, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(groups)))
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    full = 9 + 5 + 2                               # 37 // 4, 20 // 4, 9 // 4
    assert all(len({groups[i] for i in b}) == 1 for b in batches[:full])
    assert sorted(len(b) for b in batches[full:]) == [2]  # the leftovers: 1 image + 1 video
    runs = [groups[b[0]] for b in batches[:full]]
    assert sum(a != b for a, b in zip(runs, runs[1:])) > 2  # batches shuffled, not group after group
    assert list(GroupedSampler(groups, 4, seed=3)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_grouped_loader_of_a_mixture_gives_batches_of_one_kind(loaded, datasets):
    specs = [DatasetSpec(**spec) for spec in mixture(datasets, repeats=(3, 2, 2))]
    data = build_mixture(specs, lambda spec: instruction_dataset(
        spec, loaded.tokenizer, ImagePreprocessor(loaded.image_processor, "pad"), tokens_per_slot=16,
        max_length=4096, num_frames=4))
    config = load_config("instruct", None, ["out=o", "model=m", "data=" + json.dumps(mixture(datasets)),
                                            "batch_size=2"])
    kinds = [batch["kind"] for batch in make_loader(data, config, collate, groups=modality_groups(data))]
    assert len(kinds) == 7 and all(len(set(k)) == 1 for k in kinds)          # 6 + 4 + 4 items
    assert sorted(k[0].value for k in kinds) == sorted(["image"] * 3 + ["pair"] * 2 + ["sequence"] * 2)


# ---- stages ---------------------------------------------------------------------------------------

def losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def tensors(folder):
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def instruct_config(out, model, datasets, *overrides):
    # 6 items in one batch of 6: every step sees the same fixed batch
    return load_config("instruct", None, [f"out={out}", f"model={model}", "data=" + json.dumps(mixture(datasets)),
                                          "batch_size=6", "max_steps=25", "epochs=100", "lr=5e-3", "warmup_ratio=0",
                                          "num_frames=4", "max_length=1024", "log_every=1", *overrides])


@pytest.fixture(scope="module")
def instruct_run(tiny_checkpoint, datasets, tmp_path_factory):
    from unirs_engine.train.instruct import train_instruct

    out = tmp_path_factory.mktemp("instruct")
    return out, train_instruct(instruct_config(out, tiny_checkpoint, datasets))


def test_instruct_loss_falls_on_a_fixed_batch(instruct_run):
    out, _ = instruct_run
    curve = losses(out)
    assert len(curve) == 25
    assert curve[-1] < 0.5 * curve[0]


def test_instruct_freezes_tower_cem_projector_and_tunes_llm(instruct_run, tiny_checkpoint):
    _, final = instruct_run
    for part in ("vision_tower", "mm_projector"):
        before, after = tensors(tiny_checkpoint / part), tensors(final / part)
        assert before.keys() == after.keys()
        for key in before:  # incl. the CEM's BatchNorm running_mean/var/num_batches_tracked
            assert torch.equal(before[key], after[key]), f"{part}: {key} moved"
    assert any(k.startswith("layers.change.LN.left.1.running_mean") for k in before)
    before, after = tensors(tiny_checkpoint / "llm"), tensors(final / "llm")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every LLM tensor got updates


def test_instruct_output_loads_and_generates(instruct_run):
    _, final = instruct_run
    model = load_checkpoint(final)
    assert model.model.config["chg"] is True and model.model.mm_projector.has_change
    ids = prompts.encode(model.tokenizer, prompts.user_message(InputKind.IMAGE, "Water?", 1))[0]
    slots = torch.zeros(1, ((model.model.vision_tower.grid + 1) // 2) ** 2, model.model.llm.config.hidden_size)
    assert len(model.model.generate([ids], [slots], max_new_tokens=3)[0]) <= 3


@pytest.mark.parametrize("grouped", [False, True])
def test_resumed_run_ends_on_the_same_weights(tiny_checkpoint, datasets, tmp_path, grouped):
    from unirs_engine.train.instruct import train_instruct

    # 6 items in batches of 2 with accumulation 2: 2 optimizer steps per epoch, so state-3 is mid-epoch.
    args = ("batch_size=2", "grad_accum=2", "max_steps=6", f"group_by_modality={str(grouped).lower()}")
    whole = train_instruct(instruct_config(tmp_path / "whole", tiny_checkpoint, datasets, *args, "save_every=3"))
    assert (tmp_path / "whole" / "state-3" / "progress.json").is_file()
    resumed = train_instruct(instruct_config(tmp_path / "resumed", tiny_checkpoint, datasets, *args),
                             resume=tmp_path / "whole" / "state-3")
    a, b = tensors(whole / "llm"), tensors(resumed / "llm")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [json.loads(l)["step"] for l in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()] == [4, 5, 6]
    assert losses(tmp_path / "resumed") == losses(tmp_path / "whole")[3:]


def test_cached_tower_features_train_as_the_pixels_do(tiny_checkpoint, datasets, tmp_path):
    from unirs_engine.train.instruct import train_instruct

    args = ("batch_size=2", "max_steps=6", "group_by_modality=true")
    plain = train_instruct(instruct_config(tmp_path / "plain", tiny_checkpoint, datasets, *args))
    cached = train_instruct(instruct_config(tmp_path / "cached", tiny_checkpoint, datasets, *args,
                                            "cache_vision_features=true"))
    # The same features, encoded in other batches: equal up to float rounding (which AdamW's
    # normalised steps carry into the weights, so those agree to 1 % of how far training moved them).
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4)
    start, a, b = tensors(tiny_checkpoint / "llm"), tensors(plain / "llm"), tensors(cached / "llm")
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 0.01 * (a[key] - start[key]).abs().max(), key


def test_the_cache_encodes_each_input_once_and_items_name_it(loaded, datasets, tmp_path):
    from accelerate import Accelerator

    from unirs_engine.train.feature_cache import cache_tower_features

    specs = [DatasetSpec(**spec) for spec in mixture(datasets, repeats=(3, 2, 2))]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    good = str(datasets["rsvqa"] / "Images_LR" / "0.tif")
    extra = make_dataset(loaded, [Sample("again", InputKind.IMAGE, [good], "Is it urban?", ["no"]),
                                  Sample("bad", InputKind.SEQUENCE, [], "Event?", ["flood"], video=str(broken))])
    data = build_mixture(specs, lambda spec: instruction_dataset(
        spec, loaded.tokenizer, ImagePreprocessor(loaded.image_processor, "pad"), tokens_per_slot=4,
        max_length=4096, num_frames=4))
    data = torch.utils.data.ConcatDataset([*data.datasets, extra])
    pixels = {data.datasets[0].input_key(0): data.datasets[0].read_pixels(0)}
    features = cache_tower_features(loaded.model, data, Accelerator(cpu=True), num_workers=0, frames_per_batch=3)
    # 2 images, 2 pairs, 2 videos of 4 frames; "again" asks about image 0, the broken video is left out
    assert sorted(f.shape[0] for f in features.values()) == [1, 1, 2, 2, 4, 4]
    key, image = next(iter(pixels.items()))
    torch.testing.assert_close(features[key], loaded.model.encode_images(image).detach())
    items = [data[i] for i in range(len(data) - 1)]
    assert all("pixel_values" not in item and item["feature_key"] in features for item in items)
    assert extra[0]["feature_key"] == key
    video = next(item for item in items if item["kind"] is InputKind.SEQUENCE)
    assert video["input_ids"].count(prompts.IMAGE_TOKEN_INDEX) == 4   # a slot per cached frame
    with pytest.warns(SkippedSampleWarning, match=r"sample 'bad' \(.*broken\.mp4"):
        assert extra[1]["sample_id"] == "again"    # reported, and the next item given instead


def test_cached_features_need_a_frozen_tower(tmp_path):
    overrides = [f"out={tmp_path}", "model_spec=" + json.dumps(TINY_SPEC), "data=" + json.dumps(
        [{"task": "era", "root": str(tmp_path)}]), "cache_vision_features=true"]
    with pytest.raises(ConfigError, match="cache_vision_features: needs a frozen tower"):
        load_config("align", None, overrides)
    load_config("align", None, [*overrides, "train_vision=false"])


def test_cem_pretraining_from_a_plain_vila_checkpoint(datasets, tmp_path):
    from unirs_engine.testing.tiny import build_tiny_vila_checkpoint
    from unirs_engine.train.cem_pretrain import train_cem

    vila = build_tiny_vila_checkpoint(tmp_path / "vila")
    config = load_config("cem", None, [
        f"out={tmp_path / 'cem'}", f"model={vila}", "data=" + json.dumps(mixture(datasets)[1]),
        "batch_size=4", "max_steps=25", "epochs=100", "lr=3e-3", "min_word_count=1", "log_every=1",
        "lr_step_epochs=100", "dropout=0"])  # 2 pairs x 2 captions: one fixed batch of 4
    final = train_cem(config)
    curve = losses(tmp_path / "cem")
    assert curve[-1] < 0.5 * curve[0]
    projector = tensors(final / "mm_projector")
    change = {k for k in projector if k.startswith("layers.change.")}
    assert change and set(projector) - change == {k.replace("layers.", "layers.single.")
                                                  for k in tensors(vila / "mm_projector")}
    assert projector["layers.change.LN.left.1.num_batches_tracked"].item() == 25  # BN trained
    for part in ("vision_tower", "llm"):
        before, after = tensors(vila / part), tensors(final / part)
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_checkpoint(final).model.config["chg"] is True
    vocab = json.loads((tmp_path / "cem" / "vocab.json").read_text())
    assert [vocab[w] for w in ("<NULL>", "<UNK>", "<START>", "<END>")] == [0, 1, 2, 3] and "lake" in vocab


def test_align_from_scratch(datasets, tmp_path):
    from unirs_engine.train.align import train_align

    data = [mixture(datasets)[0], mixture(datasets)[2]]
    config = load_config("align", None, [
        f"out={tmp_path / 'align'}", "model_spec=" + json.dumps(TINY_SPEC), "vocab_size=400",
        "data=" + json.dumps(data), "tokenizer_data=" + json.dumps([mixture(datasets)[1]]),
        "batch_size=4", "max_steps=25", "epochs=100", "lr=5e-3", "warmup_ratio=0", "num_frames=4", "log_every=1"])
    final = train_align(config)
    curve = losses(tmp_path / "align")
    assert curve[-1] < 0.5 * curve[0]
    model = load_checkpoint(final)
    assert model.model.vision_tower.grid == 4 and model.model.mm_projector.has_change
    assert (final / "llm" / "tokenizer.model").is_file()
    # The vocabulary covers the change captions it has not trained on (tokenizer_data).
    assert model.tokenizer.unk_token_id not in model.tokenizer("bare land")["input_ids"]


TINY_SPEC = {"image_size": 56, "patch_size": 14, "vision_hidden": 32, "vision_layers": 2, "vision_heads": 2,
             "vision_intermediate": 64, "llm_hidden": 64, "llm_layers": 2, "llm_heads": 4, "llm_intermediate": 128}


@pytest.fixture(scope="module")
def vision_run(datasets, tmp_path_factory):
    from unirs_engine.train.vision_pretrain import train_vision

    out = tmp_path_factory.mktemp("vision")
    pairs = write_levircc(tmp_path_factory.mktemp("pairs"), n_pairs=2, unchanged=(1,))
    # 2 images + 2 videos + a changed and an unchanged pair: one fixed batch of 6
    data = [mixture(datasets)[0], mixture(datasets)[2], {"task": "levir-cc", "root": str(pairs)}]
    config = load_config("vision", None, [
        f"out={out}", "model_spec=" + json.dumps(TINY_SPEC), "data=" + json.dumps(data), "batch_size=6",
        "max_steps=30", "epochs=100", "lr=3e-3", "warmup_ratio=0", "num_frames=4", "log_every=1",
        "augment=false", "eval_split=train", "min_caption_word_count=1"])
    return out, train_vision(config)


def test_vision_stage_learns_to_answer_from_the_picture(vision_run):
    out, final = vision_run
    curve = losses(out)
    assert len(curve) == 30 and curve[-1] < 0.2 * curve[0]
    info = json.loads((final / "vision.json").read_text())
    # yes/no (water or not; changed or not) and the two events: only the pictures tell them apart
    assert set(info["answers"]) == {"yes", "no", "flood", "non-event"}
    assert info["accuracy"]["train"] == {"pictures": 1.0, "pairs": 1.0}
    assert {"buildings", "lake", "nothing", "change"} <= set(info["caption_words"])
    weights = tensors(final)
    assert any(k.startswith("vision_tower.model.encoder.") for k in weights)
    projector = {k for k in weights if k.startswith("mm_projector.")}
    assert {f"mm_projector.layers.single.{i}.{p}" for i in (1, 2, 4) for p in ("weight", "bias")} <= projector
    assert "mm_projector.layers.change.Conv1.weight" in projector   # the CEM, trained on the pairs


def test_align_starts_from_the_vision_stage_and_keeps_it_frozen(vision_run, datasets, tmp_path):
    from unirs_engine.train.align import train_align

    _, vision = vision_run
    config = load_config("align", None, [
        f"out={tmp_path / 'align'}", "model_spec=" + json.dumps(TINY_SPEC), "vocab_size=400",
        f"vision_init={vision}", "train_vision=false",
        "data=" + json.dumps([mixture(datasets)[0], mixture(datasets)[2]]),
        "tokenizer_data=" + json.dumps([mixture(datasets)[1]]),
        "batch_size=4", "max_steps=15", "epochs=100", "lr=5e-3", "warmup_ratio=0", "num_frames=4", "log_every=1"])
    final = train_align(config)
    curve = losses(tmp_path / "align")
    assert curve[-1] < 0.5 * curve[0]
    saved = load_checkpoint(final).model.state_dict()
    for key, value in tensors(vision).items():  # tower, projector and CEM (layers.change.*)
        assert torch.equal(saved[key], value), key


def test_vision_init_of_another_size_is_refused(vision_run, loaded, tmp_path):
    from unirs_engine.model.factory import ModelSpec, build_model
    from unirs_engine.train.vision_pretrain import load_vision_init

    _, vision = vision_run
    other = {**TINY_SPEC, "vision_hidden": 48}
    model = build_model(ModelSpec(**other), loaded.tokenizer)
    with pytest.raises(ConfigError, match="different model_spec .*vision_hidden"):
        load_vision_init(model, vision, other)
    with pytest.raises(ConfigError, match="expected the checkpoint folder of `unirs train vision`"):
        load_vision_init(model, tmp_path, other)


def test_train_command(tiny_checkpoint, datasets, tmp_path, capsys):
    from unirs_engine.cli import main

    path = write_json(tmp_path / "instruct.json", {"out": str(tmp_path / "run"), "model": str(tiny_checkpoint),
                                                   "data": mixture(datasets), "num_frames": 2})
    assert main(["train", "instruct", "--config", str(path), "--set", "max_steps=2", "--set", "batch_size=3"]) == 0
    assert f"checkpoint: {tmp_path / 'run' / 'checkpoint'}" in capsys.readouterr().out
    assert len(losses(tmp_path / "run")) == 2
    assert main(["train", "instruct", "--config", str(path), "--set", "lr=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unirs train: error: ") and "lr: must be > 0" in err


# ---- vision stage: the land-cover head (dense_weight) ----------------------------------------------

def water_cover(water: bool) -> np.ndarray:
    """(C, 32, 32) uint8 land-cover fractions of a fixture scene: water where its blue square is."""
    from unirs_engine.data.synthetic.landcover import CLASSES, SCALE
    from unirs_engine.data.synthetic.scene import GRID

    edges = np.arange(GRID + 1) * SIZE / GRID                                      # cell edges, pixels
    inside = np.clip(np.minimum(edges[1:], 30) - np.maximum(edges[:-1], 10), 0, None) * GRID / SIZE  # (GRID,)
    cover = np.zeros((len(CLASSES), GRID, GRID), np.uint8)
    if water:
        cover[CLASSES.index("water")] = np.round(np.outer(inside, inside) * SCALE)
    return cover


@pytest.fixture(scope="module")
def covered(tmp_path_factory):
    """4 images (water on every other) and 2 pairs (water appears in the changed one), with land cover
    and object counts (one water area where there is water)."""
    from unirs_engine.data.synthetic.landcover import landcover_path
    from unirs_engine.data.synthetic.object_counts import COUNTED, counts_path

    root = tmp_path_factory.mktemp("covered")
    rsvqa, levircc = write_rsvqa_lr(root / "rsvqa", n_images=4), write_levircc(root / "levircc", unchanged=(1,))
    pictures = [(rsvqa / "Images_LR" / f"{i}.tif", i % 2 == 0) for i in range(4)]
    for i in range(2):
        name = f"train_{i:06d}.tif"
        pictures += [(levircc / "images/train/A" / name, False), (levircc / "images/train/B" / name, i == 0)]
    for image, water in pictures:
        landcover_path(image).parent.mkdir(exist_ok=True)
        np.save(landcover_path(image), water_cover(water))
        counts_path(image).parent.mkdir(exist_ok=True)
        np.save(counts_path(image), np.array([kind == "water" and water for kind in COUNTED], np.uint8))
    return [{"task": "rsvqa-lr", "root": str(rsvqa)}, {"task": "levir-cc", "root": str(levircc)}]


def dense_config(out, data, *overrides):
    # 4 images + 2 pairs: one fixed batch of 6
    return load_config("vision", None, [
        f"out={out}", "model_spec=" + json.dumps(TINY_SPEC), "data=" + json.dumps(data), "batch_size=6",
        "max_steps=30", "epochs=100", "lr=3e-3", "warmup_ratio=0", "log_every=1", "augment=false",
        "eval_split=train", "min_caption_word_count=1", *overrides])


def parts(out):
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def test_landcover_targets_follow_the_projector_token_order():
    from unirs_engine.model.projector import DownSampleBlock
    from unirs_engine.train.vision_pretrain import LandCoverHead

    for g in (4, 5):   # odd: DownSampleBlock zero-pads the last row and column
        patches = torch.rand(2, 3, g, g)                                         # (M, C, g, g)
        merged = DownSampleBlock()(patches.flatten(2).transpose(1, 2))           # (M, T, 4C)
        expected = merged.reshape(2, -1, 4, 3).mean(2)                           # (M, T, C)
        torch.testing.assert_close(LandCoverHead(8, 3, g).targets(patches), expected)
    cells = torch.zeros(1, 1, 32, 32)
    cells[..., :16, 16:] = 1                                                     # the top right quarter
    assert LandCoverHead(8, 1, 4).targets(cells)[0, :, 0].tolist() == [0, 0, 1, 0]   # token = col * 2 + row


def test_video_land_cover_follows_the_frames_the_reader_picks(tmp_path):
    from unirs_engine.data.synthetic.landcover import CLASSES, SCALE, write_video_landcover
    from unirs_engine.data.synthetic.scene import GRID
    from unirs_engine.inputs.video import frame_indexes
    from unirs_engine.train.vision_pretrain import QuestionedImages
    from unirs_engine.types import InputKind, Sample

    # frame t is t * 20 grey, and its land cover is t / 11 water everywhere
    video = write_video(tmp_path / "clip.mp4", np.repeat(np.arange(12, dtype=np.uint8)[:, None, None, None] * 20,
                                                         SIZE, 1).repeat(SIZE, 2).repeat(3, 3))
    cover = np.zeros((12, len(CLASSES), GRID, GRID), np.float32)
    cover[:, CLASSES.index("water")] = np.arange(12)[:, None, None] / 11
    write_video_landcover(video, cover)
    sample = Sample("clip", InputKind.SEQUENCE, [], "what happens", ["flood"], video=str(video))
    preprocessor = ImagePreprocessor(default_image_processor(56), "pad")
    dataset = QuestionedImages([sample], preprocessor, {}, {"flood": 0}, {}, num_frames=8, augment=False,
                               landcover=True)
    item = dataset[0]
    picked = frame_indexes(12, 8)
    assert picked == [0, 1, 2, 4, 5, 7, 8, 10]
    water = item["landcover"][:, CLASSES.index("water")]                       # (8, 32, 32)
    assert item["landcover"].shape == (8, len(CLASSES), GRID, GRID)
    assert water[:, 0, 0].tolist() == pytest.approx([round(t / 11 * SCALE) / SCALE for t in picked])
    # the pixels are those frames too: brightness rises with t * 20
    brightness = item["pixel_values"].mean((1, 2, 3))                          # (8,)
    assert (brightness.diff() > 0).all()
    steps = brightness.diff() / torch.tensor(np.diff(picked), dtype=torch.float32)
    assert steps.max() < 1.2 * steps.min()
    assert QuestionedImages([sample], preprocessor, {}, {"flood": 0}, {}, num_frames=8, augment=False,
                            landcover=False)[0]["landcover"] is None


def test_vision_land_cover_head_learns_and_leaves_the_rest_as_before(covered, tmp_path):
    from unirs_engine.train.vision_pretrain import train_vision

    plain = train_vision(dense_config(tmp_path / "plain", covered, "dense_weight=0"))
    dense = train_vision(dense_config(tmp_path / "dense", covered, "dense_weight=0.5"))
    assert not (tmp_path / "plain" / "losses.jsonl").exists()
    assert "landcover_ap" not in json.loads((plain / "vision.json").read_text())
    # The head is made last: both runs start from the same tower, projector and classifier.
    split = parts(tmp_path / "dense")
    assert [p["step"] for p in split] == list(range(1, 31))
    assert split[0]["classifier"] == pytest.approx(losses(tmp_path / "plain")[0], rel=1e-6)
    for total, p in zip(losses(tmp_path / "dense"), split):
        assert total == pytest.approx(p["classifier"] + 0.5 * p["dense"], rel=1e-5)
    assert split[-1]["dense"] < 0.2 * split[0]["dense"]
    info = json.loads((dense / "vision.json").read_text())
    assert set(info["landcover_ap"]["train"]) == {"water"} and info["landcover_ap"]["train"]["water"]["ap"] == 1.0
    assert info["accuracy"]["train"]["pictures"] == 1.0
    assert tensors(dense).keys() == tensors(plain).keys()    # the head is not kept


def test_vision_with_land_cover_resumes_to_the_same_weights_and_losses(covered, tmp_path):
    from unirs_engine.train.vision_pretrain import train_vision

    # batches of 2 with accumulation 2: 2 optimizer steps per epoch, so state-3 is mid-epoch
    args = ("batch_size=2", "grad_accum=2", "max_steps=6", "dense_weight=1")
    whole = train_vision(dense_config(tmp_path / "whole", covered, *args, "save_every=3"))
    resumed = train_vision(dense_config(tmp_path / "resumed", covered, *args), resume=tmp_path / "whole" / "state-3")
    a, b = tensors(whole), tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert parts(tmp_path / "resumed") == parts(tmp_path / "whole")[3:]
    assert [p["step"] for p in parts(tmp_path / "resumed")] == [4, 5, 6]


def test_vision_count_head_learns_and_leaves_the_rest_as_before(covered, tmp_path):
    from unirs_engine.train.vision_pretrain import train_vision

    # beside the land-cover head, the count head learns water only after the 30 steps above
    plain = train_vision(dense_config(tmp_path / "plain", covered, "dense_weight=0.5", "max_steps=100"))
    both = train_vision(dense_config(tmp_path / "both", covered, "dense_weight=0.5", "count_weight=2",
                                     "max_steps=100"))
    # The count head is made after the land-cover head: both runs start from the same modules.
    plain_parts, split = parts(tmp_path / "plain"), parts(tmp_path / "both")
    assert [p["step"] for p in split] == list(range(1, 101))
    assert all(math.isnan(p["count"]) for p in plain_parts)
    assert split[0]["classifier"] == pytest.approx(plain_parts[0]["classifier"], rel=1e-6)
    assert split[0]["dense"] == pytest.approx(plain_parts[0]["dense"], rel=1e-6)
    for total, p in zip(losses(tmp_path / "both"), split):
        assert total == pytest.approx(p["classifier"] + 0.5 * p["dense"] + 2 * p["count"], rel=1e-5)
    assert split[-1]["count"] < 0.01 * split[0]["count"]
    info = json.loads((both / "vision.json").read_text())
    assert "count_accuracy" not in json.loads((plain / "vision.json").read_text())
    # 8 pictures (4 images, 2 pairs' two dates), 3 of them with water
    assert info["count_accuracy"]["train"]["water"] == {"accuracy": 1.0, "majority": 5 / 8}
    assert info["count_accuracy"]["train"]["road"] == {"accuracy": 1.0, "majority": 1.0}
    assert tensors(both).keys() == tensors(plain).keys()     # the head is not kept


def test_dense_or_count_weight_without_their_targets_is_refused(datasets, tmp_path):
    from unirs_engine.train.vision_pretrain import train_vision

    with pytest.raises(ConfigError, match="no training picture has land-cover fractions"):
        train_vision(dense_config(tmp_path / "none", [mixture(datasets)[0]], "dense_weight=1"))
    with pytest.raises(ConfigError, match="dense_weight: must be >= 0"):
        dense_config(tmp_path / "neg", [mixture(datasets)[0]], "dense_weight=-1")
    with pytest.raises(ConfigError, match="no training picture has object counts"):
        train_vision(dense_config(tmp_path / "none", [mixture(datasets)[0]], "count_weight=1"))
    with pytest.raises(ConfigError, match="count_weight: must be >= 0"):
        dense_config(tmp_path / "neg", [mixture(datasets)[0]], "count_weight=-1")


def test_dense_weight_takes_videos_with_land_cover_alone(datasets, tmp_path):
    import shutil

    from unirs_engine.data.synthetic.landcover import CLASSES, write_video_landcover
    from unirs_engine.data.synthetic.scene import GRID
    from unirs_engine.train.vision_pretrain import train_vision

    era = shutil.copytree(datasets["era"], tmp_path / "era")
    for video in era.glob("*/*.mp4"):
        write_video_landcover(video, np.zeros((6, len(CLASSES), GRID, GRID), np.float32))
    train_vision(dense_config(tmp_path / "run", [{"task": "era", "root": str(era)}], "dense_weight=1",
                              "max_steps=1", "batch_size=2"))
    assert [math.isfinite(p["dense"]) for p in parts(tmp_path / "run")] == [True]


# ---- instruct: the count head --------------------------------------------------------------------

def test_instruction_items_carry_a_single_images_object_counts(loaded, covered, tmp_path):
    import shutil

    from unirs_engine.data import load_samples
    from unirs_engine.data.synthetic.object_counts import COUNTED, counts_path

    rsvqa = shutil.copytree(covered[0]["root"], tmp_path / "rsvqa")
    np.save(counts_path(rsvqa / "Images_LR" / "0.tif"), np.full(len(COUNTED), 12, np.uint8))
    counts_path(rsvqa / "Images_LR" / "1.tif").unlink()
    images = load_samples("rsvqa-lr", rsvqa, split="train")
    pairs = load_samples("levir-cc", covered[1]["root"], split="train")
    dataset = make_dataset(loaded, images + pairs, counts=True)
    water = COUNTED.index("water")
    assert dataset[0]["counts"].tolist() == [9] * len(COUNTED)         # more than MAX_COUNT: MAX_COUNT
    assert dataset[1]["counts"] is None                                 # no counts written
    assert dataset[2]["counts"].tolist() == [int(k == water) for k in range(len(COUNTED))]
    assert dataset[4]["counts"] is None                                 # a pair: its dates' counts differ
    assert dataset.any_counts() and not make_dataset(loaded, pairs, counts=True).any_counts()
    assert "counts" not in make_dataset(loaded, images)[0]


def test_the_count_head_reads_the_state_that_predicts_the_answer():
    from unirs_engine.train.instruct import answer_predictors

    ignore = prompts.IGNORE_INDEX
    labels = torch.tensor([[ignore, ignore, ignore, 7, 8, 2],      # answer from position 3: predicted at 2
                           [ignore, 5, 2, ignore, ignore, ignore]])  # right padding after the answer
    assert answer_predictors(labels).tolist() == [2, 0]


@pytest.mark.parametrize("count_layer, trained_by_counts", [(-1, [0, 1]), (1, [0])])
def test_the_count_head_reads_the_layer_asked_for(loaded, covered, count_layer, trained_by_counts):
    """The count part of the loss reaches the LLM layers up to count_layer and none above it."""
    import copy

    from unirs_engine.data import load_samples
    from unirs_engine.train.instruct import MultimodalLoss

    model = copy.deepcopy(loaded.model).float()
    layers = model.llm.model.layers
    assert len(layers) == 2                                             # the tiny checkpoint's LLM
    images = load_samples("rsvqa-lr", covered[0]["root"], split="train")[:4]
    batch = collate([make_dataset(loaded, images, counts=True)[i] for i in range(4)])
    step = MultimodalLoss(model, train_vision=False, count_weight=1.0, count_layer=count_layer)
    count_part = step(batch) - model(batch["input_ids"], [model.visual_slots(model.encode_images(p), InputKind.IMAGE)
                                                          for p in batch["pixel_values"]], batch["labels"])
    grads = torch.autograd.grad(count_part, [layer.mlp.down_proj.weight for layer in layers])
    assert [i for i, g in enumerate(grads) if g.abs().max() > 0] == trained_by_counts


def test_instruct_count_head_learns_and_leaves_the_rest_as_before(tiny_checkpoint, covered, datasets, tmp_path):
    from unirs_engine.train.instruct import train_instruct

    # 4 images with counts, 2 pairs and 2 videos without; batches of one kind: some steps count nothing
    args = ("data=" + json.dumps([*covered, mixture(datasets)[2]]), "batch_size=4", "max_steps=30",
            "group_by_modality=true")
    plain = train_instruct(instruct_config(tmp_path / "plain", tiny_checkpoint, datasets, *args))
    counted = train_instruct(instruct_config(tmp_path / "counted", tiny_checkpoint, datasets, *args,
                                             "count_weight=2"))
    assert not (tmp_path / "plain" / "losses.jsonl").exists()
    split = parts(tmp_path / "counted")
    assert [p["step"] for p in split] == list(range(1, 31))
    # The same start weights and first batch: the answer part is the plain run's loss.
    assert split[0]["answer"] == pytest.approx(losses(tmp_path / "plain")[0], rel=1e-6)
    for total, p in zip(losses(tmp_path / "counted"), split):
        assert total == pytest.approx(p["answer"] + (0 if math.isnan(p["count"]) else 2 * p["count"]), rel=1e-5)
    count = [p["count"] for p in split if not math.isnan(p["count"])]
    assert 0 < len(count) < 30
    assert count[-1] < 0.1 * count[0]
    assert tensors(counted / "llm").keys() == tensors(plain / "llm").keys()   # the head is not kept


def test_instruct_count_weight_without_counts_is_refused(tiny_checkpoint, datasets, tmp_path):
    from unirs_engine.train.instruct import train_instruct

    with pytest.raises(ConfigError, match="no training image has object counts"):
        train_instruct(instruct_config(tmp_path / "none", tiny_checkpoint, datasets, "count_weight=1"))
    with pytest.raises(ConfigError, match="count_weight: must be >= 0"):
        instruct_config(tmp_path / "neg", tiny_checkpoint, datasets, "count_weight=-1")
    with pytest.raises(ConfigError, match="count_layer: must not be 0"):
        instruct_config(tmp_path / "zero", tiny_checkpoint, datasets, "count_layer=0")
    with pytest.raises(ConfigError, match="LLM has 2 layers; expected 1..2 or -2..-1, got 3"):
        train_instruct(instruct_config(tmp_path / "deep", tiny_checkpoint, datasets, "count_weight=1",
                                       "count_layer=3"))
