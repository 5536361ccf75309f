"""UniRSModel: routing by input kind, splicing at <image> placeholders, generation, freezing."""

import pytest
import torch

from unirs_engine import prompts
from unirs_engine.model.checkpoint import load_checkpoint
from unirs_engine.model.factory import ModelSpec, build_model
from unirs_engine.prompts import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from unirs_engine.testing.tiny import build_tiny_vila_checkpoint
from unirs_engine.types import InputKind


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def features(loaded):
    size = loaded.image_processor.size["height"]
    pixels = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return loaded.model.encode_images(pixels)                                 # (4, P, D)


def prompt_ids(loaded, kind, n_slots, text="How many houses are there?"):
    return prompts.encode(loaded.tokenizer, prompts.user_message(kind, text, n_slots))[0]


def test_encode_images_gives_all_patch_tokens(loaded, features):
    tower = loaded.model.vision_tower
    assert features.shape == (4, tower.grid ** 2, tower.hidden_size)


def test_routing_by_kind(loaded, features):
    model = loaded.model
    with torch.no_grad():
        image = model.visual_slots(features[:1], InputKind.IMAGE)
        pair = model.visual_slots(features[:2], InputKind.PAIR)
        seq = model.visual_slots(features[:3], InputKind.SEQUENCE)
        two_frames = model.visual_slots(features[:2], InputKind.SEQUENCE)
    tokens = ((model.vision_tower.grid + 1) // 2) ** 2
    hidden = model.llm.config.hidden_size
    assert image.shape == pair.shape == (1, tokens, hidden)
    assert seq.shape == (3, tokens, hidden)
    # A 2-frame sequence is two slots of unfused frames, never a change pair.
    assert two_frames.shape == (2, tokens, hidden)
    assert not torch.allclose(two_frames[:1], pair)
    # Batched vs single matmuls may differ in the last bits (CPU kernels pick by batch size).
    torch.testing.assert_close(two_frames[:1], image, rtol=1e-5, atol=1e-6)
    assert image.dtype == model.llm.dtype


@pytest.mark.parametrize("kind, n", [(InputKind.IMAGE, 2), (InputKind.PAIR, 1), (InputKind.PAIR, 3)])
def test_routing_rejects_wrong_counts(loaded, features, kind, n):
    with pytest.raises(ValueError, match="feature map"):
        loaded.model.visual_slots(features[:n], kind)


def test_pair_without_cem_is_two_slots_in_date_order(tmp_path, loaded, features):
    vila = load_checkpoint(build_tiny_vila_checkpoint(tmp_path / "vila"))
    assert vila.model.pair_mode == "two-images" and loaded.model.pair_mode == "cem"
    with torch.no_grad():
        pair = vila.model.visual_slots(features[:2], InputKind.PAIR)                 # (2, T, H)
        frames = vila.model.visual_slots(features[:2], InputKind.SEQUENCE)
        forced = loaded.model.visual_slots(features[:2], InputKind.PAIR, "two-images")
        fused = loaded.model.visual_slots(features[:2], InputKind.PAIR)              # (1, T, H)
    assert pair.shape[0] == 2 and torch.equal(pair, frames)
    assert forced.shape[0] == 2 and fused.shape[0] == 1
    with pytest.raises(ValueError, match="no Change Extraction module"):
        vila.model.visual_slots(features[:2], InputKind.PAIR, "cem")
    with pytest.raises(ValueError, match="unknown pair mode"):
        loaded.model.visual_slots(features[:2], InputKind.PAIR, "fused")


def test_splice_puts_visual_embeddings_at_placeholders(loaded):
    model = loaded.model
    table = model.llm.get_input_embeddings()
    torch.manual_seed(0)
    slots = torch.randn(2, 3, model.llm.config.hidden_size)                      # 2 slots of 3
    ids = [1, 10, IMAGE_TOKEN_INDEX, 11, 12, IMAGE_TOKEN_INDEX, 13]
    labels = [IGNORE_INDEX, IGNORE_INDEX, IMAGE_TOKEN_INDEX, 11, 12, IMAGE_TOKEN_INDEX, 13]
    short = [1, IMAGE_TOKEN_INDEX, 20]
    with torch.no_grad():
        out = model.embed([ids, short], [slots, slots[:1]], [labels, [1, IMAGE_TOKEN_INDEX, 20]],
                          padding_side="left")
    emb, mask, lab = out["inputs_embeds"], out["attention_mask"], out["labels"]
    assert emb.shape == (2, 5 + 2 * 3, slots.shape[-1])                           # 5 text + 6 visual
    text = table(torch.tensor([1, 10, 11, 12, 13]))
    row = emb[0]
    assert torch.equal(row[0:2], text[0:2])
    assert torch.equal(row[2:5], slots[0])
    assert torch.equal(row[5:7], text[2:4])
    assert torch.equal(row[7:10], slots[1])
    assert torch.equal(row[10], text[4])
    assert lab[0].tolist() == [IGNORE_INDEX] * 2 + [IGNORE_INDEX] * 3 + [11, 12] \
        + [IGNORE_INDEX] * 3 + [13]
    # The short sample is left-padded with the pad embedding and masked out.
    n_pad = 11 - 5
    assert mask[1].tolist() == [0] * n_pad + [1] * 5
    assert torch.equal(emb[1, :n_pad], table(torch.tensor([0] * n_pad)))
    assert torch.equal(emb[1, n_pad + 1:n_pad + 4], slots[0])
    assert lab[1, :n_pad].tolist() == [IGNORE_INDEX] * n_pad

    right = model.embed([ids, short], [slots, slots[:1]], padding_side="right")
    assert right["attention_mask"][1].tolist() == [1] * 5 + [0] * n_pad
    assert "labels" not in right


def test_slot_count_mismatch_raises(loaded, features):
    model = loaded.model
    slots = model.visual_slots(features[:3], InputKind.SEQUENCE)                 # 3 slots
    ids = prompt_ids(loaded, InputKind.SEQUENCE, 2)                               # 2 placeholders
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) .* 3 visual slot"):
        model.embed([ids], [slots])


def test_greedy_generation_deterministic_and_batch_equals_single(loaded, features):
    model = loaded.model
    with torch.no_grad():
        items = [
            (prompt_ids(loaded, InputKind.IMAGE, 1), model.visual_slots(features[:1], InputKind.IMAGE)),
            (prompt_ids(loaded, InputKind.PAIR, 1, prompts.CHANGE_DESCRIBE_INSTRUCTION),
             model.visual_slots(features[:2], InputKind.PAIR)),
            (prompt_ids(loaded, InputKind.SEQUENCE, 4, prompts.classify_instruction()),
             model.visual_slots(features, InputKind.SEQUENCE)),
        ]
    ids, slots = [i for i, _ in items], [s for _, s in items]
    batched = model.generate(ids, slots, max_new_tokens=8)
    again = model.generate(ids, slots, max_new_tokens=8)
    single = [model.generate([i], [s], max_new_tokens=8)[0] for i, s in items]
    assert batched == again == single
    assert all(len(b) <= 8 for b in batched)
    assert any(batched)  # a random tiny model still writes something
    eos = loaded.tokenizer.eos_token_id
    assert all(eos not in b for b in batched)


def test_forward_loss_and_frozen_parts_stay_in_eval(tiny_checkpoint, features):
    fresh = load_checkpoint(tiny_checkpoint)
    model, tokenizer = fresh.model, fresh.tokenizer
    model.freeze(vision=True, projector=True)
    model.train()
    assert model.llm.training
    assert not model.vision_tower.training and not model.mm_projector.training
    assert all(not m.training for m in model.mm_projector.modules())
    bn = model.mm_projector.layers["change"].LN.left[1]
    stats = (bn.running_mean.clone(), bn.num_batches_tracked.clone())

    ids, labels = prompts.encode(tokenizer, prompts.user_message(InputKind.PAIR, "What changed?", 1),
                                 "New roads.")
    assert labels[-1] == ids[-1] == tokenizer.eos_token_id
    slots = model.visual_slots(features[:2], InputKind.PAIR)
    loss = model([ids], [slots], [labels])
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.num_batches_tracked, stats[1])
    assert model.llm.lm_head.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.mm_projector.parameters())
    assert all(p.grad is None for p in model.vision_tower.parameters())

    model.freeze(vision=True, projector=False)
    model.train()
    assert model.mm_projector.training and not model.vision_tower.training
    assert all(p.requires_grad for p in model.mm_projector.parameters())
    model.eval()
    assert not model.llm.training


def test_full_size_spec_dimensions_on_meta_device(loaded):
    """VILA-1.5-3B dims (never materialised): Sheared-LLaMA-2.7B, SigLIP-so400m without head, 196 tokens."""
    with torch.device("meta"):
        model = build_model(ModelSpec.full_size(), loaded.tokenizer)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(model.llm) == 2_701_560_320
    assert count(model.vision_tower) == 412_987_248
    assert count(model.mm_projector.layers["single"]) == 18_364_416
    assert count(model.mm_projector.layers["change"]) == 7_006_464
    assert model.vision_tower.grid == 27
    with torch.no_grad():
        slots = model.visual_slots(torch.empty(2, 729, 1152, device="meta"), InputKind.PAIR)
    assert slots.shape == (1, 196, 2560)
