"""ADA pipeline: each transform against an independent computation, p = 0, double backward; AdaptiveAugment."""

from __future__ import annotations

import math

import pytest
import torch

from transgan.augment import ADAPipeline, affine_resample, apply_color, color_matrix, int_translate, rot90, xflip


def images(B=6, C=3, H=8, W=8, seed=0):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed))


def test_xflip_equals_torch_flip_where_set():
    x = images()
    flip = torch.tensor([True, False, True, False, False, True])
    y = xflip(x, flip)
    for b in range(6):
        assert torch.equal(y[b], torch.flip(x[b], dims=[2]) if flip[b] else x[b])


def test_rot90_equals_torch_rot90():
    x = images(B=8)
    k = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    y = rot90(x, k)
    for b in range(8):
        assert torch.equal(y[b], torch.rot90(x[b], int(k[b]), dims=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        rot90(images(H=8, W=4), k)


def test_int_translate_is_a_shift_with_mirrored_border():
    x = images(B=5, H=8, W=8)
    ty = torch.tensor([0, 1, -2, 3, -1])
    tx = torch.tensor([0, -1, 2, 0, 3])
    y = int_translate(x, ty, tx)
    # reference: tile the image with its mirror (edge repeated: 'symmetric'), shift with roll, crop the middle
    for b in range(5):
        row = torch.cat([x[b].flip(1), x[b], x[b].flip(1)], 1)
        tiled = torch.cat([row.flip(2), row, row.flip(2)], 2)  # [C, 3H, 3W]
        ref = torch.roll(tiled, (int(ty[b]), int(tx[b])), (1, 2))[:, 8:16, 8:16]
        assert torch.equal(y[b], ref)
        # the interior agrees with a plain torch.roll, with no padding involved
        sy, sx = int(ty[b]), int(tx[b])
        rolled = torch.roll(x[b], (sy, sx), (1, 2))
        rs = slice(max(sy, 0), 8 + min(sy, 0))
        cs = slice(max(sx, 0), 8 + min(sx, 0))
        assert torch.equal(y[b][:, rs, cs], rolled[:, rs, cs])


def test_affine_resample_identity_quarter_turn_and_integer_shift():
    x = images(B=2, H=8, W=8)
    eye = torch.eye(3)[:2].expand(2, 2, 3)
    assert torch.allclose(affine_resample(x, eye), x, atol=1e-6)
    # torch.rot90(k=1): out[i, j] = x[j, W-1-i], i.e. output (u, v) = (col, row) reads input (-v, u)
    quarter = torch.tensor([[0.0, -1, 0], [1, 0, 0]]).expand(2, 2, 3)
    assert torch.allclose(affine_resample(x, quarter), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    # a shift by exactly 2 pixels right, 1 down: the same mirrored fill as int_translate
    shift = torch.tensor([[1.0, 0, -2 * 2 / 8], [0, 1, -2 * 1 / 8]]).expand(2, 2, 3)
    ref = int_translate(x, torch.tensor([1, 1]), torch.tensor([2, 2]))
    assert torch.allclose(affine_resample(x, shift), ref, atol=1e-5)


def test_affine_resample_bilinear_by_hand():
    x = images(B=1, C=1, H=4, W=4)
    # shift left by half a pixel: each output is the mean of two horizontal neighbours (mirrored at the end)
    half = torch.tensor([[[1.0, 0, 0.5 * 2 / 4], [0, 1, 0]]])
    y = affine_resample(x, half)
    nxt = torch.cat([x[..., 1:], x[..., -1:]], 3)
    assert torch.allclose(y, (x + nxt) / 2, atol=1e-6)


LUMA = torch.full((3,), 1 / math.sqrt(3))


def test_color_transforms_against_closed_forms():
    x = images(B=1, C=3)
    one, zero = torch.ones(1), torch.zeros(1)

    def color(b=zero, c=one, f=zero, h=zero, s=one):
        return apply_color(x, color_matrix(b, c, f, h, s))

    assert torch.allclose(color(), x, atol=1e-6)
    assert torch.allclose(color(b=torch.tensor([0.3])), x + 0.3, atol=1e-6)
    assert torch.allclose(color(c=torch.tensor([1.7])), x * 1.7, atol=1e-6)
    # luma flip: negate the component along the gray axis, keep the rest
    gray = torch.einsum("c,bchw->bhw", LUMA, x)[:, None] * LUMA[None, :, None, None]
    assert torch.allclose(color(f=one), x - 2 * gray, atol=1e-5)
    # saturation: scale the part off the gray axis
    assert torch.allclose(color(s=torch.tensor([0.4])), gray + 0.4 * (x - gray), atol=1e-5)
    # hue: a rotation about the gray axis keeps the gray part and the norm; 120 degrees cycles R -> G -> B
    assert torch.allclose(color(h=torch.tensor([2 * math.pi / 3])), x[:, [2, 0, 1]], atol=1e-5)
    y = color(h=torch.tensor([0.7]))
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), atol=1e-5)
    assert torch.allclose(torch.einsum("c,bchw->bhw", LUMA, y), torch.einsum("c,bchw->bhw", LUMA, x), atol=1e-5)


def test_color_on_gray_images():
    g = images(B=1, C=1)
    one, zero = torch.ones(1), torch.zeros(1)
    assert torch.allclose(apply_color(g, color_matrix(torch.tensor([0.2]), torch.tensor([2.0]), zero, zero, one)),
                          (g + 0.2) * 2, atol=1e-6)  # brightness, then contrast
    assert torch.allclose(apply_color(g, color_matrix(zero, one, one, zero, one)), -g, atol=1e-6)  # luma flip
    # hue and saturation leave gray unchanged
    assert torch.allclose(apply_color(g, color_matrix(zero, one, zero, torch.tensor([1.0]), torch.tensor([3.0]))),
                          g, atol=1e-5)


@pytest.mark.parametrize("C", [1, 3])
def test_p_zero_is_identity_and_p_one_changes_every_image(C):
    x = images(B=16, C=C, H=16, W=16)
    assert ADAPipeline(0.0)(x) is x
    torch.manual_seed(0)
    y = ADAPipeline(1.0)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert all(not torch.allclose(y[b], x[b]) for b in range(16))


def test_probability_p_per_transform():
    # with p = 0.5 about half the images keep their brightness offset at 0: check via a constant image
    # through the whole pipeline, only color changes a constant image (geometry maps it to itself)
    x = torch.full((4000, 3, 8, 8), 0.25)
    torch.manual_seed(1)
    y = ADAPipeline(0.3)(x)
    unchanged = (y - x).abs().amax((1, 2, 3)) < 1e-5
    # unchanged iff none of brightness, contrast, hue, saturation fired and luma flip drew 0 or did not fire
    # (luma flip fires with 0.3 and then flips with 1/2); a gray constant is fixed by hue and saturation
    expected = (1 - 0.3) ** 2 * (1 - 0.3 / 2)
    assert abs(unchanged.float().mean().item() - expected) < 0.03


def test_gradients_of_gradients_flow():
    torch.manual_seed(0)
    x = images(B=4, H=16, W=16).requires_grad_(True)
    w = torch.randn(3, 16, 16, requires_grad=True)  # a linear "discriminator"
    out = (ADAPipeline(1.0)(x) * w).sum()
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    assert g.abs().sum() > 0
    g.square().sum().backward()  # the R1 penalty's backward to D's weights
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_adaptive_p_moves_up_when_d_is_overconfident_on_reals_and_down_otherwise():
    from transgan.augment import AdaptiveAugment

    ada = AdaptiveAugment(p=0.0, target=0.6, interval=4, speed_images=1000)
    for _ in range(4):
        ada.observe(torch.tensor([1.0, 2.0, 3.0, -1.0]))  # sign mean 0.5 < 0.6: not overfitting
    assert ada.r_t == 0.5 and ada.p == 0.0  # clamped at 0
    for _ in range(3):
        ada.observe(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert ada.p == 0.0  # the interval is not over yet
    ada.observe(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert ada.r_t == 1.0 and ada.p == pytest.approx(16 / 1000)  # one step of (images in interval) / speed
    for _ in range(4):
        ada.observe(torch.tensor([5.0, 1.0, 1.0, 1.0]))
    assert ada.p == pytest.approx(32 / 1000)
    for _ in range(4):
        ada.observe(torch.tensor([-1.0, -1.0, 1.0, 1.0]))  # r_t = 0 < 0.6: p comes down
    assert ada.r_t == 0.0 and ada.p == pytest.approx(16 / 1000)


def test_adaptive_p_speed_is_zero_to_one_in_500k_images():
    from transgan.augment import AdaptiveAugment

    ada = AdaptiveAugment(p=0.0, interval=4)  # defaults: target 0.6, 500k images
    batch = torch.ones(64)
    for _ in range(500_000 // 64 - 1):
        ada.observe(batch)
    assert 0.99 < ada.p < 1.0
    for _ in range(8):
        ada.observe(batch)
    assert ada.p == 1.0  # clamped


def test_fixed_p_mode_and_validation():
    from transgan.augment import AdaptiveAugment
    from transgan.errors import ConfigError

    ada = AdaptiveAugment(p=0.3, target=None, interval=1)
    ada.observe(torch.ones(8))
    assert ada.p == 0.3 and ada.r_t == 1.0  # r_t is still measured for the logs
    for bad in ({"p": 1.5}, {"target": 1.0}, {"interval": 0}):
        with pytest.raises(ConfigError):
            AdaptiveAugment(**bad)


def test_adaptive_state_round_trips_exactly():
    from transgan.augment import AdaptiveAugment

    g = torch.Generator().manual_seed(0)
    a = AdaptiveAugment(p=0.1, interval=3, speed_images=777)
    for _ in range(7):  # ends mid-interval
        a.observe(torch.randn(5, generator=g) + 2)
    b = AdaptiveAugment(p=0.0, interval=3, speed_images=777)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    for _ in range(5):  # and both continue identically
        x = torch.randn(5, generator=g) + 2
        a.observe(x)
        b.observe(x)
    assert a.p == b.p and a.state_dict() == b.state_dict() and a.p != 0.1
