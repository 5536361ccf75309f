"""VILA-1.5 layout: save/load round trip, VILA projector keys, tokenizer, device pick, clear errors."""

import json
import shutil

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from unirs_engine import prompts
from unirs_engine.model.checkpoint import CheckpointError, load_checkpoint, pick_device, save_checkpoint
from unirs_engine.model.tokenizer import load_tokenizer, train_sentencepiece
from unirs_engine.testing.tiny import build_tiny_checkpoint, build_tiny_vila_checkpoint
from unirs_engine.types import InputKind


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint that a test may damage."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "copy")


def outputs(loaded, seed=0):
    """Everything downstream code sees: features, slots of each kind, logits and greedy tokens."""
    model = loaded.model
    size = loaded.image_processor.size["height"]
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))
    ids = prompts.encode(loaded.tokenizer, prompts.user_message(InputKind.PAIR, "What changed?", 1))[0]
    with torch.no_grad():
        feats = model.encode_images(pixels)
        pair = model.visual_slots(feats[:2], InputKind.PAIR)
        seq = model.visual_slots(feats, InputKind.SEQUENCE)
        logits = model.llm(**model.embed([ids], [pair])).logits
    tokens = model.generate([ids], [pair], max_new_tokens=6)
    return feats, pair, seq, logits, tokens


def assert_same_outputs(a, b):
    for x, y in zip(outputs(a), outputs(b)):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def test_layout_on_disk(tiny_checkpoint):
    for rel in ("config.json", "llm/config.json", "llm/model.safetensors", "llm/tokenizer.model",
                "llm/generation_config.json", "vision_tower/config.json",
                "vision_tower/model.safetensors", "vision_tower/preprocessor_config.json",
                "mm_projector/config.json", "mm_projector/model.safetensors"):
        assert (tiny_checkpoint / rel).is_file(), rel
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["LlavaLlamaModel"] and config["model_type"] == "llava_llama"
    assert config["mm_vision_select_layer"] == -2 and config["mm_vision_select_feature"] == "cls_patch"
    assert config["chg"] is True and config["chg_type"] == "Chg2Cap" and config["cc_n_layers"] == 0
    assert config["mm_use_im_start_end"] is False and config["image_aspect_ratio"] == "pad"
    assert config["hidden_size"] == config["llm_cfg"]["hidden_size"]
    assert config["mm_hidden_size"] == config["vision_tower_cfg"]["hidden_size"]
    assert json.loads((tiny_checkpoint / "mm_projector/config.json").read_text()) == {
        "architectures": ["MultimodalProjector"], "mm_projector_type": "mlp_downsample",
        "model_type": "v2l_projector"}
    processor = json.loads((tiny_checkpoint / "vision_tower/preprocessor_config.json").read_text())
    assert processor["resample"] == 3 and processor["image_mean"] == processor["image_std"] == [0.5] * 3
    assert processor["rescale_factor"] == pytest.approx(1 / 255)
    with safe_open(str(tiny_checkpoint / "mm_projector/model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "layers.single.1.weight" in keys and "layers.change.Conv1.weight" in keys
    with safe_open(str(tiny_checkpoint / "vision_tower/model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())


def test_round_trip_is_bit_exact(tiny_checkpoint, tmp_path):
    first = load_checkpoint(tiny_checkpoint)
    assert first.model_id == tiny_checkpoint.name
    assert first.device == torch.device("cpu") or torch.cuda.is_available()
    out = save_checkpoint(first, tmp_path / "again")
    second = load_checkpoint(out)
    assert second.model_id == "again"
    assert_same_outputs(first, second)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Saving over an existing checkpoint replaces it whole.
    save_checkpoint(second, out)
    assert_same_outputs(first, load_checkpoint(out))
    assert not list(tmp_path.glob(".again*"))


def test_tiny_build_is_reproducible(tiny_checkpoint, tmp_path):
    again = build_tiny_checkpoint(tmp_path / "unirs-tiny")
    assert_same_outputs(load_checkpoint(tiny_checkpoint), load_checkpoint(again))


def test_vila_projector_keys_load(tmp_path):
    path = build_tiny_vila_checkpoint(tmp_path / "vila")
    saved = load_file(str(path / "mm_projector/model.safetensors"))
    assert sorted(saved) == ["layers.1.bias", "layers.1.weight", "layers.2.bias", "layers.2.weight",
                             "layers.4.bias", "layers.4.weight"]
    loaded = load_checkpoint(path)
    assert not loaded.model.mm_projector.has_change
    state = loaded.model.mm_projector.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key.replace("layers.", "layers.single.")], value)
    assert "chg" not in json.loads((path / "config.json").read_text())


def test_saved_vision_head_and_legacy_buffers_are_tolerated(ckpt):
    reference = outputs(load_checkpoint(ckpt))
    vision = ckpt / "vision_tower/model.safetensors"
    state = load_file(str(vision))
    state["vision_model.head.probe"] = torch.zeros(1, 1, 32)
    state["vision_model.embeddings.position_ids"] = torch.arange(25)[None]
    save_file(state, str(vision), metadata={"format": "pt"})
    llm = ckpt / "llm/model.safetensors"
    state = load_file(str(llm))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(state, str(llm), metadata={"format": "pt"})
    for x, y in zip(reference, outputs(load_checkpoint(ckpt))):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return path


def _edit_tensors(path, edit):
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def _to_pickle(ckpt):
    weights = ckpt / "llm/model.safetensors"
    torch.save(load_file(str(weights)), ckpt / "llm/pytorch_model.bin")
    weights.unlink()
    return ckpt / "llm/pytorch_model.bin"


DAMAGES = {
    "missing folder": (lambda c: c / "nowhere", "no such checkpoint folder"),
    "missing vision_tower/": (lambda c: shutil.rmtree(c / "vision_tower") or c / "vision_tower",
                              "missing folder"),
    "missing config.json": (lambda c: (c / "config.json").unlink() or c / "config.json", "missing"),
    "truncated llm weights": (lambda c: _truncate(c / "llm/model.safetensors"), "truncated"),
    "truncated vision weights": (lambda c: _truncate(c / "vision_tower/model.safetensors"), "truncated"),
    "truncated projector weights": (lambda c: _truncate(c / "mm_projector/model.safetensors"),
                                    "truncated"),
    "llm shape mismatch": (lambda c: _edit_json(c / "llm/config.json", intermediate_size=96)
                           and c / "llm/model.safetensors", r"shape \[64, 128\], expected \[64, 96\]"),
    "projector shape mismatch": (lambda c: _edit_json(c / "config.json", hidden_size=96)
                                 and c / "mm_projector/model.safetensors", "layers.single"),
    "pytorch_model.bin only": (_to_pickle, "refused"),
    "llm model_type": (lambda c: _edit_json(c / "llm/config.json", model_type="mistral"),
                       "model_type is 'mistral', expected 'llama'"),
    "vision model_type": (lambda c: _edit_json(c / "vision_tower/config.json", model_type="clip_vision_model"),
                          "expected 'siglip_vision_model'"),
    "top-level model_type": (lambda c: _edit_json(c / "config.json", model_type="llava_qwen"),
                             "expected 'llava_llama'"),
    "missing llm tensors": (lambda c: _edit_json(c / "llm/config.json", num_hidden_layers=3)
                            and c / "llm/model.safetensors", "missing keys"),
    "unexpected vision tensor": (lambda c: _edit_tensors(
        c / "vision_tower/model.safetensors", lambda s: s.update(extra=torch.zeros(1))), "unexpected tensor"),
    "missing change module": (lambda c: _edit_tensors(
        c / "mm_projector/model.safetensors",
        lambda s: [s.pop(k) for k in list(s) if k.startswith("layers.change.")]), "chg true"),
    "missing projector tensor": (lambda c: _edit_tensors(
        c / "mm_projector/model.safetensors", lambda s: s.pop("layers.change.Conv1.bias")),
        "missing tensor 'layers.change.Conv1.bias'"),
    "missing tokenizer": (lambda c: [(c / "llm" / f).unlink() for f in ("tokenizer.model", "tokenizer.json")]
                          and c / "llm/tokenizer.model", "missing"),
    "missing image processor": (lambda c: (c / "vision_tower/preprocessor_config.json").unlink()
                                or c / "vision_tower/preprocessor_config.json", "missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_bad_checkpoints_raise_one_line_error_naming_the_file(ckpt, damage):
    apply, expected = DAMAGES[damage]
    culprit = apply(ckpt)
    target = ckpt / "nowhere" if damage == "missing folder" else ckpt
    with pytest.raises(CheckpointError, match=expected) as err:
        load_checkpoint(target)
    message = str(err.value)
    assert "\n" not in message
    assert str(culprit) in message


def test_tokenizer_file_and_ids(tiny_checkpoint, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint / "llm/tokenizer.model"))
    tokenizer = load_tokenizer(tiny_checkpoint / "llm")
    text = "There are 12 houses near the river. Ünïcode ✓ post-earthquake"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 0 and tokenizer.padding_side == "right"
    assert tokenizer.decode(sp.encode(text)) == text
    # A fresh tokenizer reloaded from its own folder gives the same ids.
    model_file = train_sentencepiece(["a few remote sensing words", "a river and a road"], tmp_path, 300)
    assert model_file == tmp_path / "tokenizer.model"
    fresh = load_tokenizer(tmp_path)
    assert fresh("a road", add_special_tokens=False)["input_ids"] == \
        spm.SentencePieceProcessor(model_file=str(model_file)).encode("a road")
    with pytest.raises(ValueError, match="non-empty"):
        train_sentencepiece(["", "  "], tmp_path / "empty", 300)


def test_pick_device_defaults_and_overrides():
    if not torch.cuda.is_available():
        assert pick_device() == (torch.device("cpu"), torch.float32)
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda:0")
    assert pick_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    assert pick_device("cpu", "torch.float16") == (torch.device("cpu"), torch.float16)
    assert pick_device("cpu", torch.float64) == (torch.device("cpu"), torch.float64)
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_device("cpu", "int7")


def test_load_with_explicit_dtype(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint, device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 and loaded.device == torch.device("cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    feats, pair, *_ , tokens = outputs(loaded)
    assert pair.dtype == torch.bfloat16 and len(tokens[0]) <= 6
