"""DiffAugment: each op against its definition, determinism, differentiability."""

from __future__ import annotations

import pytest
import torch

from transgan.augment import DiffAugment
from transgan.errors import ConfigError


def distinct_images(B: int = 16, C: int = 3, H: int = 16, W: int = 16) -> torch.Tensor:
    """Strictly positive, all-distinct pixel values: a zero can only come from padding or cutout."""
    return (torch.arange(B * C * H * W, dtype=torch.float32) + 1).reshape(B, C, H, W)


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_output_shape_and_dtype(policy, C):
    x = torch.randn(5, C, 16, 12)
    y = DiffAugment(policy)(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert not torch.equal(y, x)


def test_empty_policy_is_identity():
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(DiffAugment("")(x), x)


def test_unknown_op_lists_valid_ops():
    with pytest.raises(ConfigError, match=r"'zoom'.*color.*cutout.*translation"):
        DiffAugment("color,zoom")


def test_translation_shifts_each_image_within_an_eighth_with_zero_fill():
    x = distinct_images(B=64, H=16, W=16)
    torch.manual_seed(0)
    y = DiffAugment("translation")(x)
    s = 2  # 16 / 8
    shifts = set()
    for b in range(x.shape[0]):
        matches = []
        for ty in range(-s, s + 1):
            for tx in range(-s, s + 1):
                # Reference: out[i, j] = x[i - ty, j - tx], zero where that falls outside.
                ref = torch.zeros_like(x[b])
                ref[:, max(ty, 0):16 + min(ty, 0), max(tx, 0):16 + min(tx, 0)] = \
                    x[b, :, max(-ty, 0):16 - max(ty, 0), max(-tx, 0):16 - max(tx, 0)]
                if torch.equal(y[b], ref):
                    matches.append((ty, tx))
        assert len(matches) == 1, f"image {b} is not a shift of its input by at most {s} pixels"
        shifts.add(matches[0])
    assert len(shifts) > 10  # shifts vary per image and per axis
    assert {abs(ty) for ty, _ in shifts} == {0, 1, 2} and {abs(tx) for _, tx in shifts} == {0, 1, 2}


def test_translation_keeps_values_from_the_input_set_plus_zeros():
    x = distinct_images(B=8, H=32, W=24)
    y = DiffAugment("translation")(x)
    allowed = torch.cat([x.flatten(), torch.zeros(1)])
    assert torch.isin(y, allowed).all()


@pytest.mark.parametrize("H, W", [(16, 16), (15, 9)])
def test_cutout_zeroes_exactly_one_square_of_half_the_size(H, W):
    x = distinct_images(B=32, C=3, H=H, W=W)
    y = DiffAugment("cutout")(x)
    size_h, size_w = int(H / 2 + 0.5), int(W / 2 + 0.5)
    tops = set()
    for b in range(x.shape[0]):
        zero = y[b] == 0
        assert torch.equal(zero, zero[:1].expand_as(zero)), "the same square in every channel"
        rows = zero[0].any(dim=1).nonzero().flatten()
        cols = zero[0].any(dim=0).nonzero().flatten()
        assert len(rows) == size_h and len(cols) == size_w
        assert rows[-1] - rows[0] == size_h - 1 and cols[-1] - cols[0] == size_w - 1  # contiguous
        assert int(zero[0].sum()) == size_h * size_w  # a full rectangle, nothing else
        assert torch.equal(y[b][~zero], x[b][~zero])  # everything else untouched
        tops.add((int(rows[0]), int(cols[0])))
    assert len(tops) > 5


@pytest.mark.parametrize("C", [1, 3])
def test_color_matches_brightness_saturation_contrast_formulas(C):
    x = torch.randn(6, C, 8, 8, dtype=torch.float64)
    torch.manual_seed(3)
    y = DiffAugment("color")(x)
    # Replay the draws: brightness U(-0.5, 0.5), saturation U(0, 2) (none for one channel),
    # contrast U(0.5, 1.5), each one per image.
    torch.manual_seed(3)
    expected = x + (torch.rand(6, 1, 1, 1, dtype=torch.float64) - 0.5)
    if C > 1:
        m = expected.mean(dim=1, keepdim=True)
        expected = m + (expected - m) * 2 * torch.rand(6, 1, 1, 1, dtype=torch.float64)
    m = expected.mean(dim=(1, 2, 3), keepdim=True)
    expected = m + (expected - m) * (0.5 + torch.rand(6, 1, 1, 1, dtype=torch.float64))
    assert torch.allclose(y, expected)


def test_same_seed_same_output():
    x = torch.randn(8, 3, 16, 16)
    aug = DiffAugment()
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradients_and_gradients_of_gradients_flow():
    aug = DiffAugment("color,translation,cutout")

    def seeded(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(11)  # the same augmentation on every call gradcheck makes
        return aug(x)

    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)  # small: gradgradcheck is quadratic
    assert torch.autograd.gradcheck(seeded, (x,))
    assert torch.autograd.gradgradcheck(seeded, (x,))
    # A gradient penalty through the augmentation reaches the input of a nonlinear critic.
    w = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((w * seeded(x) ** 2).sum(), x, create_graph=True)
    (g.square().sum()).backward()
    assert x.grad is not None and w.grad is not None and w.grad.abs().sum() > 0


def test_rejects_non_image_batches():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        DiffAugment()(torch.randn(3, 8, 8))


def test_transgan_translation_reaches_a_fifth_of_the_image():
    """translation_transgan shifts by up to round(32/5) = 6 pixels, the public TransGAN code's range."""
    x = distinct_images(B=256, C=1, H=32, W=32)
    torch.manual_seed(0)
    y = DiffAugment("translation_transgan")(x)
    # The row shift of an image: its first row's values come from row (0 - ty) of the input.
    shifts = set()
    for b in range(x.shape[0]):
        kept = y[b, 0][y[b, 0] > 0]
        src_rows = ((kept - 1 - b * 32 * 32) // 32).long()
        out_rows = (y[b, 0] > 0).nonzero()[:, 0]
        shifts.add(int((out_rows - src_rows).unique().item()))
    assert shifts == set(range(-6, 7))


def test_transgan_cutout_cuts_whole_batches_with_probability_03_and_clips_squares():
    """cutout_transgan: one draw per batch (about 30% cut), squares of 16x16 centred anywhere, clipped."""
    torch.manual_seed(0)
    cut_batches, clipped, full = 0, 0, 0
    for _ in range(300):
        y = DiffAugment("cutout_transgan")(torch.ones(8, 2, 32, 32))
        zeros = (y[:, 0] == 0)
        cut = zeros.flatten(1).any(1)
        assert bool(cut.all()) or not bool(cut.any()), "all images of a batch or none"
        if not cut.any():
            continue
        cut_batches += 1
        for z in zeros:
            rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
            # One axis-aligned rectangle: the 16x16 square intersected with the image.
            assert int(z.sum()) == len(rows) * len(cols) and len(rows) <= 16 and len(cols) <= 16
            assert len(rows) == 16 or rows[0] == 0 or rows[-1] == 31  # shorter only where clipped
            clipped += int(z.sum()) < 256
            full += int(z.sum()) == 256
    assert 60 < cut_batches < 120  # 300 * 0.3 = 90
    assert clipped > 0 and full > 0


# --------------------------------------------------------------------------- TransGAN's 256 policy

def _official_aug256():
    from pathlib import Path

    from safetensors.torch import load_file

    return load_file(str(Path(__file__).parent / "fixtures" / "official" / "transgan_aug256.safetensors"))


def test_filter_bank_equals_the_official_one_and_sums_to_an_impulse():
    from transgan.augment import FILTER_BANK

    gold = _official_aug256()
    torch.testing.assert_close(FILTER_BANK, gold["filter_bank"], rtol=0, atol=1e-7)
    impulse = torch.zeros(FILTER_BANK.shape[1])
    impulse[FILTER_BANK.shape[1] // 2] = 1
    torch.testing.assert_close(FILTER_BANK.sum(0), impulse, rtol=0, atol=1e-6)  # unit gains: the identity


def test_filter_and_hue_equal_the_official_ops_under_the_same_seed():
    from transgan.augment import filter_transgan, hue_transgan

    gold = _official_aug256()
    torch.manual_seed(11)
    torch.testing.assert_close(filter_transgan(gold["input"].clone()), gold["filter_seed11"], rtol=0, atol=1e-5)
    torch.manual_seed(12)
    torch.testing.assert_close(hue_transgan(gold["input"].clone()), gold["hue_seed12"], rtol=0, atol=1e-5)
    assert not torch.allclose(gold["filter_seed11"], gold["input"])  # the fixture does transform


def test_hue_keeps_gray_and_the_distance_from_it():
    from transgan.augment import hue_transgan

    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    y = hue_transgan(x)
    torch.testing.assert_close(y.mean(1), x.mean(1), rtol=0, atol=1e-5)  # rotation about the gray axis
    chroma = lambda t: (t - t.mean(1, keepdim=True)).norm(dim=1)  # noqa: E731
    torch.testing.assert_close(chroma(y), chroma(x), rtol=0, atol=1e-5)
    changed = (y - x).abs().flatten(1).amax(1) > 1e-4
    assert 20 <= changed.sum() <= 44  # about half the images (p 0.5)
    gray = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(hue_transgan(gray), gray)


def test_erase_transgan_cuts_a_batch_wide_rectangle_size_with_probability_0_3():
    from transgan.augment import erase_transgan

    torch.manual_seed(0)
    cut, sizes = 0, set()
    for _ in range(400):
        y = erase_transgan(torch.ones(6, 2, 40, 40))
        zero = y[:, 0] == 0
        assert torch.equal(zero, y[:, 1] == 0)  # the same box in every channel
        if zero.any():
            cut += 1
            rows, cols = zero.any(2).sum(1), zero.any(1).sum(1)  # box extent per image (clipped)
            assert int(rows.max()) <= 28 and int(cols.max()) <= 28  # sides at most 0.7 x 40
            sizes.add((int(rows.max()), int(cols.max())))
    assert 90 <= cut <= 150  # p 0.3 of 400
    assert len(sizes) > 10  # sizes vary between batches


def test_transgan_256_policy_parses_and_keeps_gradients_of_gradients():
    from transgan.augment import DiffAugment

    aug = DiffAugment("filter_transgan,translation_transgan,erase_transgan,color,hue_transgan")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(aug(x).square().sum(), x, create_graph=True)
    g.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="larger than 21 pixels"):
        DiffAugment("filter_transgan")(torch.rand(2, 3, 16, 16))
