"""Token layouts against timm's Swin: windows, shifted windows, relative position bias, grids."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.swin_transformer import window_partition as timm_window_partition
from timm.models.swin_transformer import window_reverse as timm_window_reverse

from transgan.nn import attention as A
from transgan.nn import windows as layouts


def test_window_partition_follows_row_major_windows_and_reverses():
    x = torch.randn(2, 8, 12, 3)
    w = 4
    windows = layouts.window_partition(x, w)
    assert windows.shape == (2 * 2 * 3, w * w, 3)
    for b, wi, wj, i, j in [(0, 0, 0, 0, 0), (1, 1, 2, 3, 1), (0, 1, 1, 2, 3), (1, 0, 2, 1, 0)]:
        torch.testing.assert_close(windows[b * 6 + wi * 3 + wj, i * w + j], x[b, wi * w + i, wj * w + j])
    torch.testing.assert_close(layouts.window_reverse(windows, w, 8, 12), x)


def test_relative_position_bias_indexes_table_by_offset():
    w, heads = 3, 2
    rel = layouts.RelativePositionBias(w, heads)
    bias = rel()
    assert bias.shape == (heads, w * w, w * w)
    for i in range(w * w):
        for j in range(w * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            row = (yi - yj + w - 1) * (2 * w - 1) + (xi - xj + w - 1)
            torch.testing.assert_close(bias[:, i, j], rel.table[row])


def test_shifted_window_mask_blocks_tokens_the_roll_made_neighbours():
    Hm, Wm, w, s = 8, 12, 4, 2
    mask = layouts.shifted_window_mask(Hm, Wm, w, s)
    assert mask.shape == ((Hm // w) * (Wm // w), w * w, w * w)
    n_wcols = Wm // w
    for win in range(mask.shape[0]):
        for i in range(w * w):
            for j in range(w * w):
                yi, xi = (win // n_wcols) * w + i // w, (win % n_wcols) * w + i % w
                yj, xj = (win // n_wcols) * w + j // w, (win % n_wcols) * w + j % w
                # after rolling by -s, positions >= size - s wrapped around from the other edge
                same = (yi >= Hm - s) == (yj >= Hm - s) and (xi >= Wm - s) == (xj >= Wm - s)
                assert (mask[win, i, j] == 0) == same
                assert same or mask[win, i, j] == float("-inf")


def _timm_shifted_window_attention(ours: layouts.WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """timm's Swin W-MSA / SW-MSA (roll, partition, WindowAttention with its mask) with our weights."""
    _, Hm, Wm, C = x.shape
    w, s = ours.window, ours.shift
    block = SwinTransformerBlock(C, input_resolution=(Hm, Wm), num_heads=ours.attn.num_heads,
                                 window_size=w, shift_size=s)
    ref = block.attn
    ref.qkv.load_state_dict(ours.attn.qkv.state_dict())
    ref.proj.load_state_dict(ours.attn.proj.state_dict())
    ref.relative_position_bias_table = ours.rel_pos.table  # shared, so gradients can be compared
    if s:
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
    windows = timm_window_partition(x, (w, w)).reshape(-1, w * w, C)
    out = ref(windows, mask=block.attn_mask).reshape(-1, w, w, C)
    out = timm_window_reverse(out, (w, w), Hm, Wm)
    return torch.roll(out, shifts=(s, s), dims=(1, 2)) if s else out


@pytest.mark.parametrize("kernel", ["math", "sdpa", "chunked"])
@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_matches_timm_swin(kernel, shift):
    torch.manual_seed(0)
    ours = layouts.WindowAttention(16, 2, window=4, shift=shift, kernel=kernel)
    with torch.no_grad():
        ours.rel_pos.table.normal_()  # large enough that a wrong index would show
    x = torch.randn(2, 8, 12, 16, requires_grad=True)
    out = ours(x)
    ref = _timm_shifted_window_attention(ours, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, ours.rel_pos.table), g)
    want = torch.autograd.grad(ref, (x, ours.rel_pos.table), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_r1_through_shifted_window_attention_matches_math():
    # The trainer's pattern: the discriminator's R1 pass inside double_backward_safe(), with a
    # learnable rel-pos bias and the shifted-window mask in the scores.
    torch.manual_seed(0)
    layer = layouts.WindowAttention(16, 2, window=4, shift=2, kernel="sdpa")
    x = torch.randn(2, 8, 8, 16, requires_grad=True)

    def r1_grads():
        (g,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), list(layer.parameters()))

    with A.double_backward_safe():
        got = r1_grads()
    layer.attn.kernel = "math"
    want = r1_grads()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_grid_attention_attends_only_inside_each_cell():
    torch.manual_seed(0)
    g = 4
    layer = layouts.GridAttention(8, 2, grid=g)
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    out = layer(x)
    # each cell equals plain attention over that cell's tokens with the rel-pos bias
    cell = x[:, 4:8, 0:4].reshape(1, g * g, 8)
    expected = layer.attn(cell, bias=layer.rel_pos()).reshape(1, g, g, 8)
    torch.testing.assert_close(out[:, 4:8, 0:4], expected, atol=1e-5, rtol=1e-5)
    # and nothing outside the cell reaches it
    (grad,) = torch.autograd.grad(out[:, 0:4, 0:4].sum(), x)
    assert grad[:, 0:4, 0:4].abs().sum() > 0
    assert grad[:, 4:, :].abs().sum() == 0 and grad[:, :, 4:].abs().sum() == 0
    torch.testing.assert_close(layouts.grid_attention(x, layer.attn, g, bias=layer.rel_pos()), out)
