import copy

import torch
import torch.nn as nn

from transgan.train.ema import ema_beta, update_ema


def test_ema_beta_matches_half_life_formula():
    # Half-life h images: after h images the old weight counts one half.
    b = ema_beta(batch_size=64, images_seen=10**9, half_life_kimg=10.0, rampup=0.05)
    assert abs(b - 0.5 ** (64 / 10_000)) < 1e-12
    assert abs(b ** (10_000 / 64) - 0.5) < 1e-9
    # Ramp-up: early on the half-life is images_seen * rampup.
    b_early = ema_beta(batch_size=64, images_seen=6400, half_life_kimg=10.0, rampup=0.05)
    assert abs(b_early - 0.5 ** (64 / (6400 * 0.05))) < 1e-12
    assert ema_beta(64, 6400, 10.0, None) == b


def test_update_ema_matches_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[1].running_mean.fill_(0.7)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, beta=0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p, rtol=0, atol=1e-6)
    assert torch.equal(ema[1].running_mean, model[1].running_mean)
