"""GAN losses: adversarial terms and regularizers as small functions, composed per config.

Adversarial terms take logits and return a scalar. Regularizers return one value per
sample ([B]); the loss object weights and averages them. :class:`GANLoss` has one method
per training phase (StyleGAN2-ADA's split): ``d_main``, ``d_reg``, ``g_main``, ``g_reg``.
The trainer decides when each phase runs; this file owns only the mathematics.

References: WGAN (Arjovsky et al. 2017), WGAN-GP (Gulrajani et al. 2017), drift
(Karras et al. 2018, PGGAN), hinge (Lim & Ye 2017; Miyato et al. 2018), non-saturating
and minimax (Goodfellow et al. 2014), R1 (Mescheder et al. 2018), lazy regularization
(Karras et al. 2020, StyleGAN2).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from transgan.registry import ConfigError

Discriminator = Callable[[Tensor, Optional[Tensor]], Tensor]

__all__ = [
    "wgan_d_loss", "wgan_g_loss", "hinge_d_loss", "hinge_g_loss", "ns_d_loss", "ns_g_loss",
    "minimax_d_loss", "minimax_g_loss", "gradient_penalty", "r1_penalty", "drift_penalty",
    "GANLoss", "build_loss", "lazy_regularization_hparams", "ADVERSARIAL_LOSSES",
]


# ----------------------------------------------------------------------------- adversarial terms

def wgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Critic: minimize E[D(fake)] - E[D(real)] (the negated Wasserstein estimate)."""
    return fake_logits.mean() - real_logits.mean()


def wgan_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator: maximize E[D(fake)]."""
    return -fake_logits.mean()


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D: E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))]."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """G: -E[D(fake)]."""
    return -fake_logits.mean()


def ns_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D: -log sigmoid(D(real)) - log(1 - sigmoid(D(fake))) = softplus(-real) + softplus(fake)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def ns_g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating G: -log sigmoid(D(fake)) = softplus(-fake)."""
    return F.softplus(-fake_logits).mean()


def minimax_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D of the original minimax game: the same logistic loss as the non-saturating D."""
    return ns_d_loss(real_logits, fake_logits)


def minimax_g_loss(fake_logits: Tensor) -> Tensor:
    """Minimax G: minimize log(1 - sigmoid(D(fake))) = -softplus(fake) (saturates early on)."""
    return -F.softplus(fake_logits).mean()


ADVERSARIAL_LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "wgan": (wgan_d_loss, wgan_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
    "ns": (ns_d_loss, ns_g_loss),
    "minimax": (minimax_d_loss, minimax_g_loss),
}


# ----------------------------------------------------------------------------- regularizers

@contextmanager
def _regularization_pass(device_type: str) -> Iterator[None]:
    """Settings of every gradient-of-gradient pass: twice-differentiable attention, float32."""
    try:
        from transgan.nn.attention import double_backward_safe
    except ModuleNotFoundError as e:
        # Fallback only while transgan/nn/attention.py does not exist yet; remove it once it lands.
        if e.name != "transgan.nn.attention":
            raise
        double_backward_safe = nullcontext
    # fp16 gradients of gradients underflow, so the penalty passes run with autocast off
    # (the callers cast their inputs to float32).
    with double_backward_safe(), torch.autocast(device_type=device_type, enabled=False):
        yield


def _input_gradient(D: Discriminator, x: Tensor, c: Optional[Tensor]) -> Tensor:
    """grad_x sum_i D(x_i), kept in the graph (create_graph) so a penalty on it can be trained."""
    (grad,) = torch.autograd.grad(D(x, c).sum(), x, create_graph=True)
    return grad


def gradient_penalty(D: Discriminator, real: Tensor, fake: Tensor, c: Optional[Tensor] = None,
                     center: float = 1.0, eps: Optional[Tensor] = None) -> Tensor:
    """Gulrajani et al.: (||grad D(x_hat)||_2 - center)^2 at x_hat = eps*real + (1-eps)*fake, per sample.

    ``eps`` ([B], one per sample) defaults to U(0, 1) draws from the global RNG.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    B = real.shape[0]
    with _regularization_pass(real.device.type):
        real, fake = real.detach().float(), fake.detach().float()
        if eps is None:
            eps = torch.rand(B, device=real.device)
        eps = eps.to(real).reshape(B, *([1] * (real.ndim - 1)))
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad_norm = torch.linalg.vector_norm(_input_gradient(D, x_hat, c).flatten(1), dim=1)
        return (grad_norm - center).square()


def r1_penalty(D: Discriminator, real: Tensor, c: Optional[Tensor] = None) -> Tensor:
    """Mescheder et al.: ||grad_x D(x)||^2 on real images, per sample."""
    with _regularization_pass(real.device.type):
        x = real.detach().float().requires_grad_(True)
        return _input_gradient(D, x, c).square().flatten(1).sum(dim=1)


def drift_penalty(real_logits: Tensor) -> Tensor:
    """Karras et al. (PGGAN) epsilon-drift: D(real)^2 per sample, keeps critic outputs near zero."""
    return real_logits.square()


# ----------------------------------------------------------------------------- composed loss

class GANLoss:
    """Composes an adversarial loss with its regularizers; one method per training phase.

    ``D`` is called as ``D(x, c)`` and returns logits [B]. ``self.augment`` (identity unless
    the trainer sets, e.g., ``DiffAugment``) is applied to every image D sees: reals, fakes,
    gradient-penalty interpolates and R1 reals; penalties differentiate through it.

    The gradient penalty and drift are computed every D step (in ``d_main``). R1 is lazy
    (``d_reg`` every ``r1_interval`` D steps, scaled by the interval, as in StyleGAN2);
    ``r1_interval=1`` computes it every step inside ``d_main`` instead.
    """

    def __init__(self, adversarial: str = "wgan", gp_weight: float = 0.0, gp_center: float = 1.0,
                 drift_weight: float = 0.0, r1_gamma: float = 0.0, r1_interval: int = 16, **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"unknown loss option(s) {sorted(unknown)}; options are adversarial, gp_weight, "
                              "gp_center, drift_weight, r1_gamma, r1_interval")
        if adversarial not in ADVERSARIAL_LOSSES:
            raise ConfigError(f"unknown adversarial loss {adversarial!r}; choose one of {sorted(ADVERSARIAL_LOSSES)}")
        for key, value in (("gp_weight", gp_weight), ("gp_center", gp_center), ("drift_weight", drift_weight),
                           ("r1_gamma", r1_gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"loss.{key} must be a number >= 0, got {value!r}")
        if isinstance(r1_interval, bool) or not isinstance(r1_interval, int) or r1_interval < 1:
            raise ConfigError(f"loss.r1_interval must be an integer >= 1, got {r1_interval!r}")
        self.adversarial = adversarial
        self.d_adversarial, self.g_adversarial = ADVERSARIAL_LOSSES[adversarial]
        self.gp_weight, self.gp_center = float(gp_weight), float(gp_center)
        self.drift_weight = float(drift_weight)
        self.r1_gamma, self.r1_interval = float(r1_gamma), r1_interval
        self.augment: Callable[[Tensor], Tensor] = _identity

    def __repr__(self) -> str:
        return (f"GANLoss(adversarial={self.adversarial!r}, gp_weight={self.gp_weight}, gp_center={self.gp_center}, "
                f"drift_weight={self.drift_weight}, r1_gamma={self.r1_gamma}, r1_interval={self.r1_interval})")

    @property
    def d_reg_interval(self) -> Optional[int]:
        """D steps between lazy regularization (``d_reg``) phases; None when there is none."""
        return self.r1_interval if self.r1_gamma > 0 and self.r1_interval > 1 else None

    @property
    def g_reg_interval(self) -> Optional[int]:
        """G steps between ``g_reg`` phases; None: no G regularizer is implemented yet."""
        return None

    def _sees(self, D: Discriminator) -> Discriminator:
        """D as the loss uses it: every input goes through ``self.augment`` first."""
        return lambda x, c: D(self.augment(x), c)

    def _logits(self, D: Discriminator, x: Tensor, c: Optional[Tensor]) -> Tensor:
        logits = self._sees(D)(x, c)
        if logits.shape != (x.shape[0],):
            raise ValueError(f"D must return logits of shape [B] = [{x.shape[0]}], got {tuple(logits.shape)}")
        return logits.float()  # loss arithmetic in float32 also under autocast

    def d_main(self, G: Callable, D: Discriminator, real: Tensor, c_real: Optional[Tensor], z: Tensor,
               c_fake: Optional[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Dmain: the adversarial D loss plus the penalties computed every D step."""
        with torch.no_grad():
            fake = G(z, c_fake)
        real_logits = self._logits(D, real, c_real)
        fake_logits = self._logits(D, fake, c_fake)
        loss = self.d_adversarial(real_logits, fake_logits)
        stats = {"d_real": real_logits.mean(), "d_fake": fake_logits.mean(), "loss_d_adv": loss}
        if self.gp_weight > 0:
            # Gradient penalty on real-fake interpolates; they take the real image's class.
            gp = gradient_penalty(self._sees(D), real, fake, c_real, center=self.gp_center)
            loss = loss + self.gp_weight * gp.mean()
            stats["gp"] = gp.mean()
        if self.drift_weight > 0:
            # Drift: keep the critic's outputs on reals from wandering off.
            drift = drift_penalty(real_logits)
            loss = loss + self.drift_weight * drift.mean()
            stats["drift"] = drift.mean()
        if self.r1_gamma > 0 and self.d_reg_interval is None:
            # R1 every step (r1_interval=1): no lazy scaling.
            r1 = r1_penalty(self._sees(D), real, c_real)
            loss = loss + (self.r1_gamma / 2) * r1.mean()
            stats["r1"] = r1.mean()
        stats["loss_d"] = loss
        return loss, {k: v.detach() for k, v in stats.items()}

    def d_reg(self, D: Discriminator, real: Tensor, c_real: Optional[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Dreg: lazy R1 on reals, gamma/2 * ||grad D(x)||^2, times the interval (StyleGAN2)."""
        if self.d_reg_interval is None:
            raise RuntimeError("d_reg called, but this loss has no lazy D regularization (d_reg_interval is None)")
        r1 = r1_penalty(self._sees(D), real, c_real)
        loss = r1.mean() * (self.r1_gamma / 2) * self.r1_interval
        return loss, {"r1": r1.mean().detach(), "loss_d_reg": loss.detach()}

    def g_main(self, G: Callable, D: Discriminator, z: Tensor,
               c_fake: Optional[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Gmain: the adversarial G loss on freshly generated images."""
        fake_logits = self._logits(D, G(z, c_fake), c_fake)
        loss = self.g_adversarial(fake_logits)
        return loss, {"loss_g": loss.detach()}

    def g_reg(self, G: Callable, z: Tensor, c: Optional[Tensor]) -> Optional[tuple[Tensor, dict[str, Tensor]]]:
        """Greg: hook for the path-length regularizer, not implemented yet: returns None.

        ``g_reg_interval`` is None, so the trainer never schedules this phase.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """Loss state to checkpoint (e.g. a path-length mean); this loss has none yet."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses entries this loss does not have."""
        if state:
            raise ValueError(f"unexpected loss state entries {sorted(state)}; {self!r} keeps no state")


def _identity(x: Tensor) -> Tensor:
    return x


def build_loss(cfg: Mapping[str, Any]) -> GANLoss:
    """Build the loss from the ``loss`` config node (its ``name`` is only a label)."""
    options = {k: v for k, v in dict(cfg).items() if k != "name"}
    return GANLoss(**options)


def lazy_regularization_hparams(lr: float, betas: tuple[float, float],
                                interval: Optional[int]) -> tuple[float, tuple[float, float]]:
    """StyleGAN2: an optimizer also stepped by a regularizer every k steps uses lr*c, betas**c, c = k/(k+1)."""
    if interval is None or interval == 1:
        return lr, (betas[0], betas[1])
    if interval < 1:
        raise ConfigError(f"regularization interval must be >= 1 or None, got {interval}")
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)
