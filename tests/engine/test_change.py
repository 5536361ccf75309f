"""Change Extraction module: released parameter count and key names, position layout, behaviour."""

import pytest
import torch
import torch.nn.functional as F

from unirs_engine.model.change import ChangeExtraction


def test_full_size_parameter_count_and_state_dict_keys():
    cem = ChangeExtraction(1152, 27)
    assert sum(p.numel() for p in cem.parameters()) == 7_006_464
    shapes = {k: tuple(v.shape) for k, v in cem.state_dict().items()}
    assert shapes["h_embedding.weight"] == (27, 576)
    assert shapes["w_embedding.weight"] == (27, 576)
    assert shapes["Conv1.weight"] == (1152, 2304, 1, 1)
    assert shapes["Conv1.bias"] == (1152,)
    assert shapes["LN.left.0.weight"] == (576, 1152, 1, 1)
    assert shapes["LN.left.3.weight"] == (576, 576, 3, 3)
    assert shapes["LN.left.6.weight"] == (1152, 576, 1, 1)
    for i, ch in ((1, 576), (4, 576), (7, 1152)):
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert shapes[f"LN.left.{i}.{name}"] == (ch,)
        assert f"LN.left.{i}.num_batches_tracked" in shapes
    expected = {"h_embedding.weight", "w_embedding.weight", "Conv1.weight", "Conv1.bias"}
    expected |= {f"LN.left.{i}.{n}" for i in (0, 3, 6) for n in ("weight", "bias")}
    expected |= {f"LN.left.{i}.{n}" for i in (1, 4, 7)
                 for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert set(shapes) == expected


def test_position_embedding_is_column_then_row_flattened_row_major():
    cem = ChangeExtraction(8, 3)
    pos = cem.position_embedding(torch.device("cpu"))
    cols, rows = cem.h_embedding.weight, cem.w_embedding.weight
    for h in range(3):
        for w in range(3):
            assert torch.equal(pos[h * 3 + w], torch.cat([cols[w], rows[h]]))


def test_forward_matches_stepwise_reference():
    torch.manual_seed(0)
    cem = ChangeExtraction(8, 3).eval()
    x1, x2 = torch.randn(2, 9, 8), torch.randn(2, 9, 8)
    pos = cem.position_embedding(torch.device("cpu"))
    a = (x1 + pos).reshape(2, 3, 3, 8).permute(0, 3, 1, 2)
    b = (x2 + pos).reshape(2, 3, 3, 8).permute(0, 3, 1, 2)
    dot = (a * b).sum(1)
    cos = dot / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-8)                 # (2, 3, 3)
    fused = cem.Conv1(torch.cat([a, b], 1) + cos[:, None])                      # cosine on every channel
    expected = F.relu(cem.LN.left(fused) + fused).reshape(2, 8, 9).transpose(1, 2)
    with torch.no_grad():
        assert torch.allclose(cem(x1, x2), expected, atol=1e-5)


def test_output_shape_and_order_matters():
    torch.manual_seed(0)
    cem = ChangeExtraction(16, 5).eval()
    before, after = torch.randn(2, 25, 16), torch.randn(2, 25, 16)
    with torch.no_grad():
        out = cem(before, after)
        swapped = cem(after, before)
    assert out.shape == (2, 25, 16)
    assert not torch.allclose(out, swapped)


def test_rejects_wrong_shapes():
    cem = ChangeExtraction(16, 5)
    with pytest.raises(ValueError, match=r"\(B, 25, 16\)"):
        cem(torch.randn(1, 16, 16), torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="even feature size"):
        ChangeExtraction(15, 5)


def test_change_score_ranks_pairs():
    torch.manual_seed(0)
    cem = ChangeExtraction(16, 5).eval()
    x = torch.randn(1, 25, 16)
    small = x + 0.05 * torch.randn_like(x)
    large = torch.randn(1, 25, 16)
    with torch.no_grad():
        same = cem.change_score(x, x)
        scores = cem.change_score(torch.cat([x, x]), torch.cat([small, large]))  # (2,)
    assert same.shape == (1,) and abs(float(same[0])) < 1e-5
    assert 0 < scores[0] < scores[1]
