"""ADA pipeline: each transform against an independent computation, p = 0, double backward; AdaptiveAugment."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from transgan.augment import SYM6, ADAPipeline, ada_resample, apply_color, color_matrix
from transgan.nn.layers import fir_kernel


def images(B=6, C=3, H=8, W=8, seed=0):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed))


OFFICIAL = Path(__file__).resolve().parent / "fixtures" / "official" / "ada_geometric.safetensors"


def _rot(t: float) -> torch.Tensor:
    c, s = math.cos(t), math.sin(t)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _scale(a: float, b: float) -> torch.Tensor:
    return torch.tensor([[a, 0, 0], [0, b, 0], [0, 0, 1.0]])


def _shift(a: float, b: float) -> torch.Tensor:
    return torch.tensor([[1, 0, a], [0, 1, b], [0, 0, 1.0]])


def _official_parameters(case: str, q: float, H: int, W: int) -> torch.Tensor:
    """The output -> input map stylegan2-ada's AugmentPipe builds with debug_percentile q (written out from
    training/augment.py: each parameter from q, each factor the inverse of its forward transform)."""
    e = torch.erfinv(torch.tensor(q * 2 - 1)).item()
    factors = {"xflip": _scale(1 - 2 * math.floor(q * 2), 1), "rotate90": _rot(math.pi / 2 * math.floor(q * 4)),
               "xint": _shift(-round((q * 2 - 1) * 0.125 * W), -round((q * 2 - 1) * 0.125 * H)),
               "scale": _scale(2 ** (-e * 0.2), 2 ** (-e * 0.2)), "rotate": _rot((q * 2 - 1) * math.pi),
               "aniso": _scale(2 ** (-e * 0.2), 2 ** (e * 0.2)), "xfrac": _shift(-e * 0.125 * W, -e * 0.125 * H)}
    G = torch.eye(3)
    for name in factors if case == "all" else [case]:
        G = G @ factors[name]
    return G


CASES = ["xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "all"]


@pytest.mark.parametrize("case", CASES)
def test_geometric_resampling_equals_the_official_pipeline(case):
    """ADA's resampling (2x Symlet-6 grid, mirrored margins) on the official pipe's outputs with its parameters
    fixed (fixture make_ada_geometric.py, NVlabs/stylegan2-ada-pytorch d72cc7d), each transform and all
    together, at four percentiles."""
    fixture = load_file(OFFICIAL)
    x = fixture["input"]
    kernel = fir_kernel(SYM6)
    for q in (0.1, 0.35, 0.6, 0.9):
        G = _official_parameters(case, q, *x.shape[2:]).expand(x.shape[0], 3, 3)
        assert (ada_resample(x, G, kernel) - fixture[f"{case}.q{q}"]).abs().max().item() <= 1e-5
    # The test can fail: a plain 1x bilinear resample of the rotation is far off (max 0.26 on this image).
    if case == "rotate":
        grid = F.affine_grid(_rot(-0.8 * math.pi)[:2].expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        plain = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
        assert (plain - fixture["rotate.q0.1"]).abs().max().item() > 0.1


def test_an_untransformed_image_survives_the_resampling_round_trip():
    x = images(B=2, H=16, W=16)
    y = ada_resample(x, torch.eye(3).expand(2, 3, 3), fir_kernel(SYM6))
    assert (y - x).abs().max().item() < 1e-5


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
    # check via a constant image through the whole pipeline: only color changes a constant image (geometry
    # maps it to itself, away from borders the mirrored margin cannot cover: 16x16 leaves them rare)
    x = torch.full((2000, 3, 16, 16), 0.25)
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
