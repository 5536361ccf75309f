"""mlp_downsample projector: VILA's exact 2x2 merge order, token count, parameter count, key names."""

import pytest
import torch

from unirs_engine.model.projector import DownSampleBlock, MultimodalProjector, mlp_downsample


def downsample_by_loops(x: torch.Tensor) -> torch.Tensor:
    """Straightforward reference: pad to even, then for column pair k (outer) and row pair r (inner)
    emit [x(2r,2k), x(2r,2k+1), x(2r+1,2k), x(2r+1,2k+1)] as one 4D token."""
    n, p, d = x.shape
    g = int(p ** 0.5)
    side = g + g % 2

    def at(b, row, col):
        if row >= g or col >= g:
            return torch.zeros(d, dtype=x.dtype)
        return x[b, row * g + col]

    out = torch.empty(n, (side // 2) ** 2, 4 * d, dtype=x.dtype)
    for b in range(n):
        t = 0
        for k in range(side // 2):
            for r in range(side // 2):
                out[b, t] = torch.cat([at(b, 2 * r, 2 * k), at(b, 2 * r, 2 * k + 1),
                                       at(b, 2 * r + 1, 2 * k), at(b, 2 * r + 1, 2 * k + 1)])
                t += 1
    return out


@pytest.mark.parametrize("grid", [27, 4, 5])
def test_downsample_matches_loop_reference(grid):
    torch.manual_seed(grid)
    x = torch.randn(2, grid * grid, 6)
    got = DownSampleBlock()(x)
    assert torch.equal(got, downsample_by_loops(x))


def test_downsample_token_order_is_column_pair_major():
    # Features that encode their own (row, col) make the order readable.
    g = 4
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    x = torch.stack([rows, cols], dim=-1).reshape(1, g * g, 2).float()     # (1, 16, 2)
    out = DownSampleBlock()(x)                                              # (1, 4, 8)
    # token 1 = column pair 0, row pair 1: its first entry is x(2, 0)
    assert out[0, 1, :2].tolist() == [2.0, 0.0]
    # token 2 = column pair 1, row pair 0: entries x(0,2), x(0,3), x(1,2), x(1,3)
    assert out[0, 2].tolist() == [0, 2, 0, 3, 1, 2, 1, 3]


def test_downsample_pads_odd_grid_with_zeros_bottom_and_right():
    x = torch.ones(1, 27 * 27, 3)
    out = DownSampleBlock()(x)
    assert out.shape == (1, 196, 12)
    last = out[0, -1]  # column pair 13, row pair 13: only x(26, 26) is real
    assert last.tolist() == [1.0] * 3 + [0.0] * 9


def test_downsample_rejects_non_square_token_count():
    with pytest.raises(ValueError, match="square"):
        DownSampleBlock()(torch.zeros(1, 10, 4))


def test_full_size_projector_tokens_and_parameters():
    projector = mlp_downsample(1152, 2560)
    assert sum(p.numel() for p in projector.parameters()) == 18_364_416
    assert sorted(projector.state_dict()) == ["1.bias", "1.weight", "2.bias", "2.weight",
                                              "4.bias", "4.weight"]
    with torch.no_grad():
        out = projector(torch.randn(1, 729, 1152))
    assert out.shape == (1, 196, 2560)


def test_multimodal_projector_keys_and_routing():
    unirs = MultimodalProjector(8, 16, change_grid=5)
    keys = set(unirs.state_dict())
    assert {"layers.single.1.weight", "layers.single.2.weight", "layers.single.4.weight",
            "layers.change.Conv1.weight", "layers.change.h_embedding.weight"} <= keys
    assert unirs.has_change
    a, b = torch.randn(2, 25, 8), torch.randn(2, 25, 8)
    assert unirs.fuse_pair(a, b).shape == (2, 25, 8)
    assert unirs.project(a).shape == (2, 9, 16)

    vila = MultimodalProjector(8, 16)
    assert not vila.has_change
    assert not any(k.startswith("layers.change.") for k in vila.state_dict())
    with pytest.raises(ValueError, match="no Change Extraction module"):
        vila.fuse_pair(a, b)
