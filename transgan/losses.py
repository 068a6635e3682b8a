"""GAN losses: adversarial terms and regularizers as small functions, composed per config.

Adversarial terms take logits and return a scalar. Regularizers return one value per
sample ([B]); the loss object weights and averages them. :class:`GANLoss` has one method
per training phase (StyleGAN2-ADA's split): ``d_main``, ``d_reg``, ``g_main``, ``g_reg``, all
called as ``phase(G, D, inputs) -> (loss, stats)``, and :meth:`GANLoss.phases` lists the ones
this loss schedules (a lazy regularizer that is off is not a phase). The trainer decides when
each phase runs; this file owns only the mathematics.

Style-based generators (``G.mapping`` / ``G.synthesis``, see transgan/nn/style.py) are called
through their ``forward`` with ``style_mixing_prob`` and ``return_ws``, so style mixing and
the path-length regularizer serve every such backbone, and a DistributedDataParallel wrapper
around G still sees (and synchronizes) the whole computation.

References: WGAN (Arjovsky et al. 2017), WGAN-GP (Gulrajani et al. 2017), drift
(Karras et al. 2018, PGGAN), hinge (Lim & Ye 2017; Miyato et al. 2018), non-saturating
and minimax (Goodfellow et al. 2014), R1 (Mescheder et al. 2018), R2 and the relativistic
pairing loss with R1 + R2 (Roth et al. 2017; Huang et al. 2024, R3GAN), lazy regularization,
style mixing and path-length regularization (Karras et al. 2020, StyleGAN2).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from transgan.nn.attention import double_backward_safe
from transgan.nn.style import is_style_generator

from transgan.errors import ConfigError

Discriminator = Callable[[Tensor, Optional[Tensor]], Tensor]

__all__ = [
    "wgan_d_loss", "wgan_g_loss", "hinge_d_loss", "hinge_g_loss", "ns_d_loss", "ns_g_loss",
    "minimax_d_loss", "minimax_g_loss", "rpgan_d_loss", "rpgan_g_loss", "gradient_penalty", "r1_penalty",
    "r2_penalty", "drift_penalty", "RELATIVISTIC",
    "path_lengths", "path_length_penalty",
    "PhaseInputs", "PhaseSpec", "GANLoss", "build_loss", "lazy_regularization_hparams", "ADVERSARIAL_LOSSES",
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


def rpgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Relativistic pairing D (Jolicoeur-Martineau 2019; R3GAN): E[softplus(-(D(real_i) - D(fake_i)))]."""
    return F.softplus(-(real_logits - fake_logits)).mean()


def rpgan_g_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    """Relativistic pairing G: E[softplus(-(D(fake_i) - D(real_i)))], the reals' logits a constant for G."""
    return F.softplus(-(fake_logits - real_logits)).mean()


ADVERSARIAL_LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[..., Tensor]]] = {
    "wgan": (wgan_d_loss, wgan_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
    "ns": (ns_d_loss, ns_g_loss),
    "minimax": (minimax_d_loss, minimax_g_loss),
    "rpgan": (rpgan_d_loss, rpgan_g_loss),
}
RELATIVISTIC = ("rpgan",)  # their G loss also reads D on a real batch of its own
PENALTY_PASSES = ("separate", "shared")


# ----------------------------------------------------------------------------- regularizers

REG_PRECISIONS = ("float32", "bf16")


@contextmanager
def _regularization_pass(device_type: str, precision: str = "float32") -> Iterator[None]:
    """Settings of every gradient-of-gradient pass: twice-differentiable attention, eager, float32.

    ``precision="bf16"`` keeps a surrounding bfloat16 autocast on instead of float32.
    """
    if precision not in REG_PRECISIONS:
        raise ConfigError(f"regularization precision must be one of {REG_PRECISIONS}, got {precision!r}")
    # fp16 gradients of gradients underflow, so by default the penalty passes run with autocast
    # off (the callers cast their inputs to float32). bfloat16 has float32's exponent range, so
    # under bf16 autocast the passes may keep it (loss.reg_precision=bf16): they are most of a
    # WGAN-GP step's work. fp16 autocast is always turned off here.
    keep = (precision == "bf16" and torch.is_autocast_enabled(device_type)
            and torch.get_autocast_dtype(device_type) == torch.bfloat16)
    # Eager: graphs compiled by torch.compile (AOTAutograd) have no double backward.
    with (double_backward_safe(), torch.compiler.set_stance("force_eager"),
          torch.autocast(device_type=device_type, enabled=keep)):
        yield


def _input_gradient(D: Discriminator, x: Tensor, c: Optional[Tensor]) -> Tensor:
    """grad_x sum_i D(x_i), kept in the graph (create_graph) so a penalty on it can be trained."""
    (grad,) = torch.autograd.grad(D(x, c).sum(), x, create_graph=True)
    return grad


def gradient_penalty(D: Discriminator, real: Tensor, fake: Tensor, c: Optional[Tensor] = None,
                     center: float = 1.0, eps: Optional[Tensor] = None, precision: str = "float32") -> Tensor:
    """Gulrajani et al.: (||grad D(x_hat)||_2 - center)^2 at x_hat = eps*real + (1-eps)*fake, per sample.

    ``eps`` ([B], one per sample) defaults to U(0, 1) draws from the global RNG. ``precision``:
    see :func:`_regularization_pass`.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    B = real.shape[0]
    with _regularization_pass(real.device.type, precision):
        real, fake = real.detach().float(), fake.detach().float()
        if eps is None:
            eps = torch.rand(B, device=real.device)
        eps = eps.to(real).reshape(B, *([1] * (real.ndim - 1)))
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad_norm = torch.linalg.vector_norm(_input_gradient(D, x_hat, c).flatten(1), dim=1)
        return (grad_norm - center).square()


def r1_penalty(D: Discriminator, real: Tensor, c: Optional[Tensor] = None, precision: str = "float32") -> Tensor:
    """Mescheder et al.: ||grad_x D(x)||^2 on real images, per sample (``precision``: see _regularization_pass)."""
    with _regularization_pass(real.device.type, precision):
        x = real.detach().float().requires_grad_(True)
        return _input_gradient(D, x, c).square().flatten(1).sum(dim=1)


def r2_penalty(D: Discriminator, fake: Tensor, c: Optional[Tensor] = None, precision: str = "float32") -> Tensor:
    """R2 (Roth et al. 2017; R3GAN): ||grad_x D(x)||^2 on generated images, per sample: R1's formula on fakes."""
    return r1_penalty(D, fake, c, precision)


# mean_square: E[D(real)^2] (PGGAN, the TransGAN paper); square_mean: E[D(real)]^2 (TransGAN's public code)
DRIFT_FORMS = ("mean_square", "square_mean")


def drift_penalty(real_logits: Tensor) -> Tensor:
    """Karras et al. (PGGAN) epsilon-drift: D(real)^2 per sample, keeps critic outputs near zero."""
    return real_logits.square()


def _squared_gradient_norm(logits: Tensor, inputs: Tensor) -> Tensor:
    """||d sum(logits) / d inputs||^2 per sample, kept in the graph (R1 or R2 on logits already computed)."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.square().flatten(1).sum(dim=1)


def path_lengths(images: Tensor, ws: Tensor, noise: Optional[Tensor] = None) -> Tensor:
    """StyleGAN2 path length per sample: ||J_w^T y||, y ~ N(0, I) / sqrt(H W), averaged over the ws.

    ``ws`` [B, num_ws, w_dim] must be in the graph that made ``images`` [B, C, H, W]. The result
    stays in the graph (create_graph) so a penalty on it trains the generator.
    L_b = sqrt(mean_i sum_j (d sum(images * y) / d ws[b, i, j])^2).
    """
    if noise is None:
        noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (grads,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    return grads.square().sum(dim=2).mean(dim=1).sqrt()


def path_length_penalty(lengths: Tensor, pl_mean: Tensor) -> Tensor:
    """(L - a)^2 per sample, a the running mean of path lengths: keeps |J_w^T y| constant in w."""
    return (lengths - pl_mean).square()


def _mean_over_processes(x: Tensor) -> Tensor:
    """Mean of a tensor over all processes when torch.distributed runs (identity otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.detach().clone()
        dist.all_reduce(x)
        return x / dist.get_world_size()
    return x.detach()


# ----------------------------------------------------------------------------- composed loss

@dataclass
class PhaseInputs:
    """What one phase's micro-batch gets: real images and labels, latents and the labels to generate."""

    real: Optional[Tensor] = None
    c_real: Optional[Tensor] = None
    z: Optional[Tensor] = None
    c_fake: Optional[Tensor] = None


Phase = Callable[[Callable, Discriminator, PhaseInputs], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class PhaseSpec:
    """A phase the loss schedules: its method, the network it trains, how often, and what it reads."""

    name: str
    run: Phase
    trains: str                  # "D" or "G"
    interval: int = 1            # runs on every interval-th step of the network it trains
    needs_reals: bool = False    # a real batch (shared by the phases of one network step)
    needs_latents: bool = True   # fresh latents of its own


class GANLoss:
    """Composes an adversarial loss with its regularizers; one method per training phase.

    ``D`` is called as ``D(x, c)`` and returns logits [B]. ``augment`` (e.g. ``DiffAugment`` or
    ``ADAPipeline``; identity by default) is applied to every image D sees: reals, fakes,
    gradient-penalty interpolates and R1 reals; penalties differentiate through it.

    The gradient penalty and drift are computed every D step (in ``d_main``). R1 is lazy
    (``d_reg`` every ``r1_interval`` D steps, scaled by the interval, as in StyleGAN2);
    ``r1_interval=1`` computes it every step inside ``d_main`` instead. R2 (``r2_gamma``, on the
    fakes) is computed every step. ``penalty_pass="shared"`` takes R1 and R2 every step from the
    logits of the adversarial term itself (R3GAN), instead of a separate D pass each.

    ``adversarial="rpgan"`` is relativistic: D's loss pairs each real with a fake of the same
    class, and G's step reads D on a real batch of its own (its phase asks the trainer for reals).

    Style-based generators: with ``style_mixing_prob`` > 0 every generated batch (D and G
    phases) mixes two latents at one crossover (StyleGAN2-ADA's ``run_G``). The path-length
    penalty (``pl_weight`` > 0) is lazy like R1: ``g_reg`` every ``pl_interval`` G steps on the
    first 1/``pl_batch_shrink`` of the batch, scaled by the interval; ``pl_interval=1`` adds it
    to every ``g_main``. Its running mean ``pl_mean`` (decay ``pl_decay``, averaged over
    processes) is the loss's state: :meth:`state_dict` / :meth:`load_state_dict`.

    ``reg_precision``: every gradient-of-gradient pass (GP, R1, path length) runs in float32
    (default), or, with ``"bf16"`` under bfloat16 autocast, in bfloat16 like the rest of the step.
    """

    OPTIONS = ("adversarial", "gp_weight", "gp_center", "drift_weight", "drift_form", "r1_gamma", "r1_interval",
               "r2_gamma", "penalty_pass",
               "style_mixing_prob", "pl_weight", "pl_interval", "pl_batch_shrink", "pl_decay", "reg_precision")

    def __init__(self, adversarial: str = "wgan", gp_weight: float = 0.0, gp_center: float = 1.0,
                 drift_weight: float = 0.0, drift_form: str = "mean_square", r1_gamma: float = 0.0,
                 r1_interval: int = 16, r2_gamma: float = 0.0, penalty_pass: str = "separate",
                 style_mixing_prob: float = 0.0, pl_weight: float = 0.0, pl_interval: int = 4,
                 pl_batch_shrink: int = 2, pl_decay: float = 0.01, reg_precision: str = "float32",
                 augment: Optional[Callable[[Tensor], Tensor]] = None, **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"unknown loss option(s) {sorted(unknown)}; options are {', '.join(self.OPTIONS)}")
        if adversarial not in ADVERSARIAL_LOSSES:
            raise ConfigError(f"unknown adversarial loss {adversarial!r}; choose one of {sorted(ADVERSARIAL_LOSSES)}")
        for key, value in (("gp_weight", gp_weight), ("gp_center", gp_center), ("drift_weight", drift_weight),
                           ("r1_gamma", r1_gamma), ("r2_gamma", r2_gamma), ("pl_weight", pl_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"loss.{key} must be a number >= 0, got {value!r}")
        for key, value in (("r1_interval", r1_interval), ("pl_interval", pl_interval),
                           ("pl_batch_shrink", pl_batch_shrink)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"loss.{key} must be an integer >= 1, got {value!r}")
        for key, value in (("style_mixing_prob", style_mixing_prob), ("pl_decay", pl_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"loss.{key} must be a number in [0, 1], got {value!r}")
        self.adversarial = adversarial
        self.d_adversarial, self.g_adversarial = ADVERSARIAL_LOSSES[adversarial]
        self.gp_weight, self.gp_center = float(gp_weight), float(gp_center)
        if drift_form not in DRIFT_FORMS:
            raise ConfigError(f"loss.drift_form must be one of {', '.join(DRIFT_FORMS)}, got {drift_form!r}")
        self.drift_weight, self.drift_form = float(drift_weight), drift_form
        self.r1_gamma, self.r1_interval, self.r2_gamma = float(r1_gamma), r1_interval, float(r2_gamma)
        if penalty_pass not in PENALTY_PASSES:
            raise ConfigError(f"loss.penalty_pass must be one of {', '.join(PENALTY_PASSES)}, got {penalty_pass!r}")
        self.penalty_pass = penalty_pass
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight, self.pl_interval = float(pl_weight), pl_interval
        self.pl_batch_shrink, self.pl_decay = pl_batch_shrink, float(pl_decay)
        if reg_precision not in REG_PRECISIONS:
            raise ConfigError(f"loss.reg_precision must be one of {', '.join(REG_PRECISIONS)}, got {reg_precision!r}")
        self.reg_precision = reg_precision
        self.pl_mean = torch.zeros(())
        self.augment: Callable[[Tensor], Tensor] = augment if augment is not None else _identity

    def __repr__(self) -> str:
        return "GANLoss(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.OPTIONS) + ")"

    def phases(self) -> list[PhaseSpec]:
        """The phases this loss schedules, in the order they run within a step of their network."""
        table = [PhaseSpec("d_main", self.d_main, "D", needs_reals=True)]
        if self.d_reg_interval is not None:
            table.append(PhaseSpec("d_reg", self.d_reg, "D", self.d_reg_interval, needs_reals=True,
                                   needs_latents=False))
        table.append(PhaseSpec("g_main", self.g_main, "G", needs_reals=self.adversarial in RELATIVISTIC))
        if self.g_reg_interval is not None:
            table.append(PhaseSpec("g_reg", self.g_reg, "G", self.g_reg_interval))
        return table

    @property
    def d_reg_interval(self) -> Optional[int]:
        """D steps between lazy regularization (``d_reg``) phases; None when there is none."""
        return self.r1_interval if self.r1_gamma > 0 and self.r1_interval > 1 else None

    @property
    def g_reg_interval(self) -> Optional[int]:
        """G steps between lazy ``g_reg`` (path-length) phases; None when there is none."""
        return self.pl_interval if self.pl_weight > 0 and self.pl_interval > 1 else None

    def _sees(self, D: Discriminator) -> Discriminator:
        """D as the loss uses it: every input goes through ``self.augment`` first."""
        return lambda x, c: D(self.augment(x), c)

    def _fake_classes(self, x: PhaseInputs) -> Optional[Tensor]:
        """The classes to generate: a relativistic pair compares a real and a fake of the same class (R3GAN
        generates with the real batch's labels); otherwise the drawn ones."""
        return x.c_real if self.adversarial in RELATIVISTIC and x.real is not None else x.c_fake

    def _logits(self, D: Discriminator, x: Tensor, c: Optional[Tensor]) -> Tensor:
        logits = self._sees(D)(x, c)
        if logits.shape != (x.shape[0],):
            raise ValueError(f"D must return logits of shape [B] = [{x.shape[0]}], got {tuple(logits.shape)}")
        return logits.float()  # loss arithmetic in float32 also under autocast

    def _generate(self, G: Callable, z: Tensor, c: Optional[Tensor],
                  return_ws: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """run_G: images from z (with style mixing for style-based generators), and their ws if asked."""
        if not is_style_generator(G):
            if return_ws:
                raise TypeError(f"path-length regularization needs a style-based generator (G.mapping, "
                                f"G.synthesis, see transgan/nn/style.py); {type(_unwrap(G)).__name__} is not one")
            return G(z, c)
        return G(z, c, style_mixing_prob=self.style_mixing_prob, return_ws=return_ws)

    def d_main(self, G: Callable, D: Discriminator, x: PhaseInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """Dmain: the adversarial D loss plus the penalties computed every D step."""
        real, c_real = x.real, x.c_real
        c_fake = self._fake_classes(x)
        with torch.no_grad():
            fake = self._generate(G, x.z, c_fake)
        r1_now = self.r1_gamma > 0 and self.d_reg_interval is None
        r1 = r2 = None
        if self.penalty_pass == "shared" and (r1_now or self.r2_gamma > 0):
            # R3GAN's Trainer: R1 and R2 are gradients of the very logits of the adversarial term (one D
            # pass per image instead of two), so the whole pass runs under the penalty settings.
            with _regularization_pass(real.device.type, self.reg_precision):
                real_in = real.detach().float().requires_grad_(r1_now)
                fake_in = fake.detach().float().requires_grad_(self.r2_gamma > 0)
                real_logits = self._logits(D, real_in, c_real)
                fake_logits = self._logits(D, fake_in, c_fake)
                r1 = _squared_gradient_norm(real_logits, real_in) if r1_now else None
                r2 = _squared_gradient_norm(fake_logits, fake_in) if self.r2_gamma > 0 else None
        else:
            real_logits = self._logits(D, real, c_real)
            fake_logits = self._logits(D, fake, c_fake)
        loss = self.d_adversarial(real_logits, fake_logits)
        # r_t, ADA's overfitting heuristic: E[sign(D(real))] on the (augmented) reals D trains on.
        stats = {"d_real": real_logits.mean(), "d_fake": fake_logits.mean(), "r_t": real_logits.sign().mean(),
                 "loss_d_adv": loss}
        if self.gp_weight > 0:
            # Gradient penalty on real-fake interpolates; they take the real image's class.
            gp = gradient_penalty(self._sees(D), real, fake, c_real, center=self.gp_center,
                                  precision=self.reg_precision)
            loss = loss + self.gp_weight * gp.mean()
            stats["gp"] = gp.mean()
        if self.drift_weight > 0:
            # Drift: keep the critic's outputs on reals from wandering off.
            drift = drift_penalty(real_logits).mean() if self.drift_form == "mean_square" else real_logits.mean().square()
            loss = loss + self.drift_weight * drift
            stats["drift"] = drift
        if r1_now:
            # R1 every step (r1_interval=1): no lazy scaling.
            if r1 is None:
                r1 = r1_penalty(self._sees(D), real, c_real, precision=self.reg_precision)
            loss = loss + (self.r1_gamma / 2) * r1.mean()
            stats["r1"] = r1.mean()
        if self.r2_gamma > 0:
            # R2 every step: the same zero-centred penalty on the fakes.
            if r2 is None:
                r2 = r2_penalty(self._sees(D), fake, c_fake, precision=self.reg_precision)
            loss = loss + (self.r2_gamma / 2) * r2.mean()
            stats["r2"] = r2.mean()
        stats["loss_d"] = loss
        return loss, {k: v.detach() for k, v in stats.items()}

    def d_reg(self, G: Callable, D: Discriminator, x: PhaseInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """Dreg: lazy R1 on reals, gamma/2 * ||grad D(x)||^2, times the interval (StyleGAN2); G is unused."""
        r1 = r1_penalty(self._sees(D), x.real, x.c_real, precision=self.reg_precision)
        loss = r1.mean() * (self.r1_gamma / 2) * self.r1_interval
        return loss, {"r1": r1.mean().detach(), "loss_d_reg": loss.detach()}

    def g_main(self, G: Callable, D: Discriminator, x: PhaseInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """Gmain: the adversarial G loss on freshly generated images (plus path length if not lazy)."""
        c_fake = self._fake_classes(x)
        fake_logits = self._logits(D, self._generate(G, x.z, c_fake), c_fake)
        if self.adversarial in RELATIVISTIC:
            loss = self.g_adversarial(fake_logits, self._logits(D, x.real.detach(), x.c_real))
        else:
            loss = self.g_adversarial(fake_logits)
        stats = {}
        if self.pl_weight > 0 and self.g_reg_interval is None:
            # Path length every step (pl_interval=1): no lazy scaling.
            pl_loss, stats = self._path_length_loss(G, x.z, x.c_fake, gain=1.0)
            stats["loss_g_adv"] = loss.detach()
            loss = loss + pl_loss
        stats["loss_g"] = loss.detach()
        return loss, stats

    def g_reg(self, G: Callable, D: Discriminator, x: PhaseInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """Greg: lazy path-length penalty, pl_weight * (L - pl_mean)^2, times the interval (StyleGAN2);
        D is unused."""
        return self._path_length_loss(G, x.z, x.c_fake, gain=float(self.pl_interval))

    def _path_length_loss(self, G: Callable, z: Tensor, c: Optional[Tensor],
                          gain: float) -> tuple[Tensor, dict[str, Tensor]]:
        # A shrunk batch: the penalty's double backward is the expensive part.
        n = max(1, z.shape[0] // self.pl_batch_shrink)
        z, c = z[:n], (c[:n] if c is not None else None)
        with _regularization_pass(z.device.type, self.reg_precision):
            images, ws = self._generate(G, z.float(), c, return_ws=True)
            lengths = path_lengths(images.float(), ws).float()  # bf16 ws give bf16 lengths
        # pl_mean <- lerp(pl_mean, mean L, decay), with mean L over every process's batch; the penalty
        # treats it as a constant.
        pl_mean = self.pl_mean.to(lengths.device).lerp(_mean_over_processes(lengths.mean()), self.pl_decay)
        self.pl_mean = pl_mean.detach()
        penalty = path_length_penalty(lengths, pl_mean)
        # images[:, 0, 0, 0] * 0 puts every generator weight in the graph (DDP expects gradients for all).
        loss = (images[:, 0, 0, 0].float() * 0 + penalty * self.pl_weight).mean() * gain
        return loss, {"pl_penalty": penalty.mean().detach(), "pl_length": lengths.mean().detach(),
                      "pl_mean": pl_mean.detach(), "loss_g_reg": loss.detach()}

    def set_penalty_weights(self, r1_gamma: float, r2_gamma: float) -> None:
        """New R1 and R2 weights (a schedule's; neither can be switched on or off: the phases are set)."""
        if (r1_gamma > 0) != (self.r1_gamma > 0) or (r2_gamma > 0) != (self.r2_gamma > 0):
            raise ValueError("a scheduled penalty weight cannot switch its penalty on or off")
        self.r1_gamma, self.r2_gamma = float(r1_gamma), float(r2_gamma)

    def running_state(self) -> dict[str, Tensor]:
        """Tensors the loss updates while training, on their device (restored on a skipped step)."""
        return {"pl_mean": self.pl_mean} if self.pl_weight > 0 else {}

    def restore_running_state(self, state: Mapping[str, Tensor]) -> None:
        """Set tensors :meth:`running_state` returned; unlike :meth:`load_state_dict`, nothing leaves the device."""
        if "pl_mean" in state:
            self.pl_mean = state["pl_mean"]

    def state_dict(self) -> dict[str, Any]:
        """Loss state to checkpoint: the path-length running mean when path length is on."""
        return {"pl_mean": self.pl_mean.detach().cpu().clone()} if self.pl_weight > 0 else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses entries this loss does not have."""
        unexpected = sorted(set(state) - set(self.state_dict()))
        if unexpected:
            raise ValueError(f"unexpected loss state entries {unexpected}; {self!r} keeps "
                             f"{sorted(self.state_dict()) or 'no state'}")
        if "pl_mean" in state:
            pl_mean = torch.as_tensor(state["pl_mean"], dtype=torch.float32)
            if pl_mean.shape != ():
                raise ValueError(f"loss state pl_mean must be a scalar, got shape {tuple(pl_mean.shape)}")
            self.pl_mean = pl_mean.clone()


def _identity(x: Tensor) -> Tensor:
    return x


def _unwrap(G: Callable) -> Callable:
    """The module inside a DistributedDataParallel (or similar) wrapper."""
    return getattr(G, "module", G)


def build_loss(cfg: Mapping[str, Any], augment: Optional[Callable[[Tensor], Tensor]] = None) -> GANLoss:
    """Build the loss from the ``loss`` config node (its ``name`` is only a label), seeing through ``augment``."""
    options = {k: v for k, v in dict(cfg).items() if k != "name"}
    if "augment" in options:  # chosen by train.augment, not a loss option
        raise ConfigError(f"unknown loss option(s) ['augment']; options are {', '.join(GANLoss.OPTIONS)}")
    return GANLoss(**options, augment=augment)


def lazy_regularization_hparams(lr: float, betas: tuple[float, float],
                                interval: Optional[int]) -> tuple[float, tuple[float, float]]:
    """StyleGAN2: an optimizer also stepped by a regularizer every k steps uses lr*c, betas**c, c = k/(k+1)."""
    if interval is None or interval == 1:
        return lr, (betas[0], betas[1])
    if interval < 1:
        raise ConfigError(f"regularization interval must be >= 1 or None, got {interval}")
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)
