"""Loss terms, regularizers and the phase object against formulas written out here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from transgan.losses import (
    GANLoss,
    PhaseInputs,
    build_loss,
    drift_penalty,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    lazy_regularization_hparams,
    minimax_d_loss,
    minimax_g_loss,
    ns_d_loss,
    ns_g_loss,
    r1_penalty,
    wgan_d_loss,
    wgan_g_loss,
)
from transgan.errors import ConfigError

SHAPE = (4, 3, 5, 5)


class QuadraticCritic(nn.Module):
    """D(x) = sum(w * x^2) per sample: grad_x D = 2 w x in closed form."""

    def __init__(self, w: float = 0.3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return (self.w * x.double() ** 2).flatten(1).sum(1)


class LinearCritic(nn.Module):
    """D(x) = sum(v * x) per sample: grad_x D = v, the same at every point."""

    def __init__(self, shape: tuple[int, ...] = SHAPE[1:]) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.linspace(-0.2, 0.3, math.prod(shape)).reshape(shape))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return (self.v * x).flatten(1).sum(1)


class AffineGenerator(nn.Module):
    """G(z) = a * z reshaped to images, so its parameter gets a gradient through G's loss."""

    z_dim = math.prod(SHAPE[1:])

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return (self.a * z).reshape(z.shape[0], *SHAPE[1:])


def logits(seed: int) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


# ----------------------------------------------------------------------------- adversarial terms

def test_wgan_terms_match_formula():
    r, f = logits(0), logits(1)
    assert torch.allclose(wgan_d_loss(r, f), f.sum() / len(f) - r.sum() / len(r))
    assert torch.allclose(wgan_g_loss(f), -f.sum() / len(f))


def test_hinge_terms_match_formula():
    r, f = logits(0), logits(1)
    expected = torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean()
    assert torch.allclose(hinge_d_loss(r, f), expected)
    assert torch.allclose(hinge_g_loss(f), -f.mean())


def test_non_saturating_terms_match_log_sigmoid_forms():
    r, f = logits(0), logits(1)
    sig = lambda t: 1 / (1 + torch.exp(-t))  # noqa: E731
    expected_d = (-torch.log(sig(r))).mean() + (-torch.log(1 - sig(f))).mean()
    assert torch.allclose(ns_d_loss(r, f), expected_d)
    assert torch.allclose(ns_g_loss(f), (-torch.log(sig(f))).mean())


def test_minimax_terms_match_log_sigmoid_forms():
    r, f = logits(0), logits(1)
    sig = lambda t: 1 / (1 + torch.exp(-t))  # noqa: E731
    expected_d = (-torch.log(sig(r))).mean() + (-torch.log(1 - sig(f))).mean()
    assert torch.allclose(minimax_d_loss(r, f), expected_d)
    assert torch.allclose(minimax_g_loss(f), torch.log(1 - sig(f)).mean())


def test_drift_is_squared_real_logit():
    r = logits(0)
    assert torch.equal(drift_penalty(r), r * r)


# ----------------------------------------------------------------------------- regularizers

def images(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("center", [1.0, 0.0])
def test_gradient_penalty_matches_closed_form(center):
    D, real, fake = QuadraticCritic(0.3), images(0), images(1)
    eps = torch.tensor([0.0, 0.25, 0.5, 1.0])
    gp = gradient_penalty(D, real, fake, center=center, eps=eps)
    x_hat = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
    grad_norm = (2 * 0.3 * x_hat).pow(2).sum(dim=(1, 2, 3)).sqrt()
    assert gp.shape == (4,)
    assert torch.allclose(gp.double(), (grad_norm.double() - center) ** 2, rtol=1e-5)


def test_gradient_penalty_trains_the_critic_through_its_gradient():
    # gp_i = (2 |w| ||x_hat_i|| - 1)^2, so d gp_i / dw = 2 (2 w n_i - 1) * 2 n_i for w > 0.
    D, real, fake = QuadraticCritic(0.3), images(0), images(1)
    eps = torch.full((4,), 0.5)
    gradient_penalty(D, real, fake, eps=eps).sum().backward()
    n = (0.5 * real + 0.5 * fake).double().pow(2).sum(dim=(1, 2, 3)).sqrt()
    expected = (2 * (2 * 0.3 * n - 1) * 2 * n).sum()
    assert torch.allclose(D.w.grad, expected, rtol=1e-5)


def test_gradient_penalty_draws_one_uniform_eps_per_sample():
    # A linear-in-x^2 critic along one coordinate tells the interpolation weight back.
    D, B = QuadraticCritic(0.5), 256
    real, fake = torch.ones(B, 1, 1, 1), torch.zeros(B, 1, 1, 1)
    torch.manual_seed(0)
    gp = gradient_penalty(D, real, fake, center=0.0)  # grad = 2 * 0.5 * eps -> gp = eps^2
    eps = gp.sqrt()
    assert eps.min() >= 0 and eps.max() <= 1
    assert abs(eps.mean().item() - 0.5) < 0.06 and len(torch.unique(eps)) == B


def test_r1_matches_formula_and_trains_the_critic():
    D, real = QuadraticCritic(0.3), images(0)
    r1 = r1_penalty(D, real)
    expected = (4 * 0.3**2 * real.double() ** 2).sum(dim=(1, 2, 3))
    assert r1.shape == (4,)
    assert torch.allclose(r1.double(), expected, rtol=1e-5)
    r1.sum().backward()  # d/dw sum(4 w^2 x^2) = 8 w sum(x^2)
    assert torch.allclose(D.w.grad, (8 * 0.3 * real.double() ** 2).sum(), rtol=1e-5)


def test_penalties_run_in_float32_under_autocast():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Flatten(), nn.Linear(75, 16), nn.Tanh(), nn.Linear(16, 1), nn.Flatten(0))
    critic = lambda x, c: D(x)  # noqa: E731
    real, fake, eps = images(0).bfloat16(), images(1).bfloat16(), torch.rand(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp, r1 = gradient_penalty(critic, real, fake, eps=eps), r1_penalty(critic, real)
    # The same penalties in plain float32: bf16 matmuls would differ at the 1e-2 level.
    plain_gp = gradient_penalty(critic, real.float(), fake.float(), eps=eps)
    plain_r1 = r1_penalty(critic, real.float())
    assert gp.dtype == r1.dtype == torch.float32
    assert torch.allclose(gp, plain_gp, rtol=1e-6, atol=0) and torch.allclose(r1, plain_r1, rtol=1e-6, atol=0)


def test_penalties_keep_bf16_autocast_when_asked():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Flatten(), nn.Linear(75, 16), nn.Tanh(), nn.Linear(16, 1), nn.Flatten(0))
    critic = lambda x, c: D(x)  # noqa: E731
    real, fake, eps = images(0), images(1), torch.rand(4)
    plain_gp = gradient_penalty(critic, real, fake, eps=eps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp = gradient_penalty(critic, real, fake, eps=eps, precision="bf16")
    # bf16 matmuls: close to float32 at bf16's resolution, but not equal to it.
    assert torch.allclose(gp, plain_gp, rtol=5e-2, atol=1e-3) and not torch.equal(gp, plain_gp)
    gp.sum().backward()  # the double backward also runs under bf16
    assert D[1].weight.grad is not None and torch.isfinite(D[1].weight.grad).all()
    with torch.autocast("cpu", dtype=torch.float16):  # fp16 would underflow: stays float32
        gp16 = gradient_penalty(critic, real, fake, eps=eps, precision="bf16")
    assert torch.allclose(gp16, plain_gp, rtol=1e-6, atol=0)
    with pytest.raises(ConfigError, match="reg_precision"):
        GANLoss("wgan", reg_precision="fp8")


# ----------------------------------------------------------------------------- GANLoss phases

def test_d_main_adds_weighted_gradient_penalty_and_drift():
    G, D = AffineGenerator(), LinearCritic()
    real, z = images(0), torch.randn(4, G.z_dim)
    loss = GANLoss("wgan", gp_weight=10.0, drift_weight=1e-3)
    total, stats = loss.d_main(G, D, PhaseInputs(real, None, z, None))
    r, f = D(real).detach(), D(0.5 * z.reshape(SHAPE)).detach()
    gp = (D.v.detach().pow(2).sum().sqrt() - 1) ** 2  # grad of a linear critic is v everywhere
    expected = (f.mean() - r.mean()) + 10.0 * gp + 1e-3 * (r**2).mean()
    assert torch.allclose(total, expected, rtol=1e-5)
    assert torch.allclose(stats["gp"], gp, rtol=1e-5)
    assert torch.allclose(stats["drift"], (r**2).mean(), rtol=1e-5)
    assert torch.allclose(stats["d_real"], r.mean()) and torch.allclose(stats["d_fake"], f.mean())
    # r_t, ADA's overfitting heuristic: the fraction of reals D scores positive, mapped to [-1, 1]
    assert torch.allclose(stats["r_t"], torch.tensor(2 * (r > 0).float().mean().item() - 1))
    assert torch.equal(stats["loss_d"], total.detach())
    assert all(not v.requires_grad and v.ndim == 0 for v in stats.values())
    total.backward()
    assert D.v.grad is not None and G.a.grad is None  # fakes come from no_grad


def test_drift_on_the_squared_batch_mean_as_transgans_code():
    G, D = AffineGenerator(), LinearCritic()
    real, z = images(0), torch.randn(4, G.z_dim)
    total, stats = GANLoss("wgan", drift_weight=1e-3, drift_form="square_mean").d_main(G, D, PhaseInputs(real, None, z, None))
    r, f = D(real).detach(), D(0.5 * z.reshape(SHAPE)).detach()
    torch.testing.assert_close(total, (f.mean() - r.mean()) + 1e-3 * r.mean() ** 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(stats["drift"], r.mean() ** 2)
    assert not torch.allclose(r.mean() ** 2, (r ** 2).mean())  # the two forms differ on these logits
    with pytest.raises(ConfigError, match="drift_form must be one of mean_square, square_mean"):
        GANLoss("wgan", drift_form="mean")


def test_augment_is_applied_to_every_image_d_sees():
    G, D = AffineGenerator(), LinearCritic()
    real, z = images(0), torch.randn(4, G.z_dim)
    loss = GANLoss("wgan", gp_weight=10.0, r1_gamma=2.0, r1_interval=4,
                   augment=lambda x: 2 * x)  # doubles logits and D's input gradient
    _, stats = loss.d_main(G, D, PhaseInputs(real, None, z, None))
    assert torch.allclose(stats["d_real"], 2 * D(real).mean())
    assert torch.allclose(stats["gp"], (2 * D.v.detach().pow(2).sum().sqrt() - 1) ** 2, rtol=1e-5)
    _, stats = loss.d_reg(None, D, PhaseInputs(real, None))
    assert torch.allclose(stats["r1"], 4 * D.v.detach().pow(2).sum(), rtol=1e-5)
    _, stats = loss.g_main(G, D, PhaseInputs(z=z, c_fake=None))
    assert torch.allclose(stats["loss_g"], -2 * D(0.5 * z.reshape(SHAPE)).mean())


def test_d_reg_is_lazy_r1_scaled_by_interval():
    D, real = QuadraticCritic(0.3), images(0)
    loss = GANLoss("ns", r1_gamma=10.0, r1_interval=16)
    assert loss.d_reg_interval == 16 and loss.g_reg_interval is None
    total, stats = loss.d_reg(None, D, PhaseInputs(real, None))
    r1 = (4 * 0.3**2 * real.double() ** 2).sum(dim=(1, 2, 3))
    assert torch.allclose(total.double(), 10.0 / 2 * r1.mean() * 16, rtol=1e-5)
    assert torch.allclose(stats["r1"].double(), r1.mean(), rtol=1e-5)
    # Lazy R1 is not also computed in the main phase.
    _, main_stats = loss.d_main(AffineGenerator(), LinearCritic(), PhaseInputs(real, None, torch.randn(4, 75), None))
    assert "r1" not in main_stats


def test_r1_every_step_is_part_of_d_main_unscaled():
    G, D = AffineGenerator(), LinearCritic()
    real, z = images(0), torch.randn(4, G.z_dim)
    loss = GANLoss("ns", r1_gamma=10.0, r1_interval=1)
    assert loss.d_reg_interval is None
    total, stats = loss.d_main(G, D, PhaseInputs(real, None, z, None))
    r, f = D(real).detach(), D(0.5 * z.reshape(SHAPE)).detach()
    r1 = D.v.detach().pow(2).sum()
    expected = torch.log1p(torch.exp(-r)).mean() + torch.log1p(torch.exp(f)).mean() + 10.0 / 2 * r1
    assert torch.allclose(total, expected, rtol=1e-5)
    assert [p.name for p in loss.phases()] == ["d_main", "g_main"]  # no lazy D phase is scheduled


def test_g_main_trains_the_generator_with_its_adversarial_term():
    G, D = AffineGenerator(), LinearCritic()
    z = torch.randn(4, G.z_dim)
    total, stats = GANLoss("hinge").g_main(G, D, PhaseInputs(z=z, c_fake=None))
    assert torch.allclose(total, -D(0.5 * z.reshape(SHAPE)).mean())
    total.backward()
    assert G.a.grad is not None and G.a.grad != 0
    assert set(stats) == {"loss_g"}


def test_phases_are_the_main_ones_plus_each_lazy_regularizer_that_is_on():
    def table(loss):
        return [(p.name, p.trains, p.interval, p.needs_reals, p.needs_latents) for p in loss.phases()]

    assert table(GANLoss()) == [("d_main", "D", 1, True, True), ("g_main", "G", 1, False, True)]
    assert table(GANLoss("ns", r1_gamma=1.0, r1_interval=16, pl_weight=2.0, pl_interval=4)) == [
        ("d_main", "D", 1, True, True), ("d_reg", "D", 16, True, False), ("g_main", "G", 1, False, True),
        ("g_reg", "G", 4, False, True)]
    loss = GANLoss("ns", r1_gamma=1.0, r1_interval=16)
    assert [p.run for p in loss.phases()] == [loss.d_main, loss.d_reg, loss.g_main]


def test_state_is_empty_without_path_length():
    loss = GANLoss()
    assert loss.state_dict() == {}
    loss.load_state_dict({})
    with pytest.raises(ValueError, match="pl_mean"):
        loss.load_state_dict({"pl_mean": torch.zeros(())})


def test_d_must_return_one_logit_per_sample():
    G = AffineGenerator()
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        GANLoss().d_main(G, lambda x, c: x.flatten(1).sum(1, keepdim=True),
                         PhaseInputs(images(0), None, torch.randn(4, G.z_dim), None))


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("bad", [{"gp_wieght": 10.0}, {"adversarial": "lsgan"}, {"gp_weight": -1.0},
                                 {"r1_interval": 0}, {"r1_interval": 2.5}, {"r1_gamma": "10"}])
def test_bad_loss_options_raise_config_error(bad):
    with pytest.raises(ConfigError):
        GANLoss(**bad)


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="gp_wieght"):
        build_loss({"name": "wgan_gp", "gp_wieght": 10.0})


@pytest.mark.parametrize("name, adversarial, d_reg_interval",
                         [("wgan_gp", "wgan", None), ("hinge", "hinge", None), ("ns_r1", "ns", 16)])
def test_loss_configs_build(repo_root: Path, name, adversarial, d_reg_interval):
    cfg = OmegaConf.load(repo_root / "configs" / "loss" / f"{name}.yaml")
    assert cfg.name == name
    loss = build_loss(cfg)
    assert loss.adversarial == adversarial and loss.d_reg_interval == d_reg_interval
    if name == "wgan_gp":
        assert (loss.gp_weight, loss.gp_center, loss.drift_weight, loss.r1_gamma) == (10.0, 1.0, 0.0, 0.0)
    if name == "ns_r1":
        assert (loss.r1_gamma, loss.r1_interval) == (10.0, 16)


@pytest.mark.parametrize("k", [16, 4])
def test_lazy_regularization_hparams(k):
    lr, betas = lazy_regularization_hparams(2e-3, (0.5, 0.99), k)
    assert lr == pytest.approx(2e-3 * k / (k + 1))
    assert betas == pytest.approx((0.5 ** (k / (k + 1)), 0.99 ** (k / (k + 1))))


def test_lazy_regularization_hparams_identity_without_lazy_phase():
    assert lazy_regularization_hparams(1e-4, (0.0, 0.99), None) == (1e-4, (0.0, 0.99))
    assert lazy_regularization_hparams(1e-4, (0.0, 0.99), 1) == (1e-4, (0.0, 0.99))
