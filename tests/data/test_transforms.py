import math

import torch

from transgan.data.transforms import random_augment


def batch():
    torch.manual_seed(0)
    return torch.randn(64, 3, 8, 8)


def test_identity_when_off():
    x = batch()
    assert torch.equal(random_augment(x), x)


def test_flips_and_transpose_give_one_of_the_allowed_images():
    x = batch()
    for kw, alt in [({"hflip": True}, x.flip(-1)), ({"vflip": True}, x.flip(-2)),
                    ({"transpose": True}, x.transpose(-1, -2))]:
        y = random_augment(x, **kw)
        same = (y == x).flatten(1).all(1)
        flipped = (y == alt).flatten(1).all(1)
        assert (same | flipped).all()
        assert same.sum() > 10 and flipped.sum() > 10  # p = 0.5 each


def test_rotation_matches_a_written_out_rotation():
    # A 90-degree bound and a sample drawing angle exactly 90 degrees -> rot90.
    x = batch()[:1]
    torch.manual_seed(1)
    u = torch.rand(1)
    torch.manual_seed(1)
    y = random_augment(x, rotate=90.0)
    angle = (u * 2 - 1) * math.pi / 2
    # Inverse mapping: output pixel (i, j) samples the input at R(angle) applied to its centre.
    n = 8
    coords = (torch.arange(n) + 0.5) / n * 2 - 1
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    sx = torch.cos(angle) * gx - torch.sin(angle) * gy
    sy = torch.sin(angle) * gx + torch.cos(angle) * gy
    grid = torch.stack([sx, sy], -1)[None]
    expected = torch.nn.functional.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_reproducible_under_seed():
    x = batch()
    torch.manual_seed(5)
    a = random_augment(x, hflip=True, transpose=True, rotate=30)
    torch.manual_seed(5)
    b = random_augment(x, hflip=True, transpose=True, rotate=30)
    assert torch.equal(a, b)
