"""Small building blocks shared by the backbones (imports torch and timm only).

Sections (each appended by the engineer who needs it; keep them independent):

- style-based layers: ``EqualizedLinear``, ``EqualizedConv2d`` (equalized learning rate,
  optional FIR-filtered /2 downsampling), ``leaky_relu_gain``, ``fir_kernel``, ``blur2d``,
  ``Blur2d``, ``upsample2d``, ``downsample2d``, ``apply_spectral_norm``, ``MinibatchStd``,
  ``NoiseInjection``.
- class conditioning: ``check_class_labels``, ``class_planes`` (one-hot constant planes),
  ``ClassProjection`` (the projection discriminator's class term).
- initialization: ``init_linear_like_vit`` (ViT's trunc-normal Linear layers; TransGAN, StyleSwin).
- activation checkpointing: ``checkpointed`` (recomputes under the forward's context variables).
"""

from __future__ import annotations

import contextvars
import math
from contextlib import nullcontext
from typing import Callable, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from transgan.nn.ops import depthwise_filter


# ----------------------------------------------------------------------------- style-based layers
# Equalized learning rate, FIR blur / resampling, minibatch-std and noise injection, as used by
# StyleGAN2 (Karras et al. 2020) and every style-based backbone built on transgan/nn/style.py.

LRELU_GAIN = math.sqrt(2.0)  # keeps unit variance through a 0.2-leaky ReLU (He et al.)


def leaky_relu_gain(x: Tensor, slope: float = 0.2) -> Tensor:
    """StyleGAN2's ``lrelu`` activation: leaky ReLU followed by the variance-preserving gain sqrt(2)."""
    return F.leaky_relu(x, slope) * LRELU_GAIN


def _activate(x: Tensor, activation: str) -> Tensor:
    return leaky_relu_gain(x) if activation == "lrelu" else x


def _check_activation(activation: str) -> str:
    if activation not in ("linear", "lrelu"):
        raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
    return activation


class EqualizedLinear(nn.Module):
    """Linear layer with equalized learning rate (Karras et al. 2018).

    Weights are stored as N(0, 1/lr_multiplier^2) and scaled by lr_multiplier/sqrt(fan_in) at run
    time, so Adam's per-parameter step is the same for every layer; ``lr_multiplier`` slows a layer
    down (0.01 in the StyleGAN mapping network). ``bias_init`` is the effective initial bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, activation: str = "linear") -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"EqualizedLinear needs positive sizes, got {in_features} -> {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.activation = _check_activation(activation)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_features] -> [..., out_features]."""
        bias = self.bias * self.bias_gain if self.bias is not None else None
        return _activate(F.linear(x, self.weight * self.weight_gain, bias), self.activation)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, activation={self.activation}"


def fir_kernel(taps: Sequence[float] = (1, 3, 3, 1)) -> Tensor:
    """Separable 2-D FIR filter from 1-D taps, normalized to sum 1 (StyleGAN2's resample filter)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def blur2d(x: Tensor, kernel: Tensor, padding: tuple[int, int] | int = 0, stride: int = 1) -> Tensor:
    """Depthwise 2-D filter of [B, C, H, W] by ``kernel`` [k, k]; ``padding`` (before, after) on both axes.

    Differentiable to any order at the cost of one grouped convolution per order (see
    :func:`transgan.nn.ops.depthwise_filter`); the filter itself gets no gradient.
    """
    p0, p1 = (padding, padding) if isinstance(padding, int) else padding
    C = x.shape[1]
    x = F.pad(x, (p0, p1, p0, p1))
    weight = kernel.flip((0, 1)).to(device=x.device)[None, None].expand(C, 1, *kernel.shape)
    return depthwise_filter(x, weight, stride)


def upsample2d(x: Tensor) -> Tensor:
    """x2 bilinear upsampling of [B, C, H, W]: zero insertion + the [1, 3, 3, 1] filter, edges replicated."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


RESAMPLE_MODES = ("bilinear", "fir")


def upsample2d_fir(x: Tensor, kernel: Tensor, padding: tuple[int, int] = (2, 1)) -> Tensor:
    """x2 upsampling as StyleGAN2's upfirdn2d: zero insertion, then the FIR ``kernel`` (gain 4), zero padding.

    ``padding`` (before, after) is on the zero-inserted map: (2, 1) gives [B, C, 2H, 2W] for the
    4-tap kernel; larger values keep the border samples a following convolution reads (StyleGAN2
    pads once, before the filter, so pixels outside the image are zeros, not replicated edges).
    """
    B, C, H, W = x.shape
    up = x.new_zeros(B, C, H, 2, W, 2)
    up[:, :, :, 0, :, 0] = x
    return blur2d(up.reshape(B, C, 2 * H, 2 * W), kernel * 4, padding=padding)


def downsample2d(x: Tensor, kernel: Tensor) -> Tensor:
    """/2 downsampling of [B, C, H, W]: the anti-aliasing ``kernel`` (``fir_kernel()``) with stride 2.

    The caller keeps the kernel as a buffer: one built here would be copied to the device on
    every call, and a copy from pageable host memory makes the host wait for the GPU.
    """
    return blur2d(x, kernel, padding=1, stride=2)


class Blur2d(nn.Module):
    """Same-size FIR smoothing (default taps [1, 2, 1]), e.g. after bilinear upsampling."""

    def __init__(self, taps: Sequence[float] = (1, 2, 1)) -> None:
        super().__init__()
        if len(taps) % 2 != 1:
            raise ValueError(f"Blur2d keeps the size only with an odd number of taps, got {list(taps)}")
        self.register_buffer("kernel", fir_kernel(taps), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        return blur2d(x, self.kernel, padding=self.kernel.shape[0] // 2)


class EqualizedConv2d(nn.Module):
    """Conv2d with equalized learning rate; ``down=True`` filters with [1, 3, 3, 1] then strides by 2.

    Same-size output for odd kernels (or half size with ``down``). ``weight_gain`` is the run-time
    scale 1/sqrt(fan_in); spectral normalization sets it to 1 (see :func:`apply_spectral_norm`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"EqualizedConv2d wants an odd kernel size, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation, self.down = _check_activation(activation), down
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        if down:
            self.register_buffer("resample_kernel", fir_kernel(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in, H, W] -> [B, out, H, W] (or [B, out, H/2, W/2] with ``down``)."""
        weight = self.weight * self.weight_gain
        if self.down:
            # Filter then stride: the 4-tap filter with k-1 extra taps of the conv needs (k+1)/2 per side.
            x = blur2d(x, self.resample_kernel, padding=(self.kernel_size + 1) // 2)
            x = F.conv2d(x, weight, self.bias, stride=2)
        else:
            x = F.conv2d(x, weight, self.bias, padding=self.kernel_size // 2)
        return _activate(x, self.activation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"activation={self.activation}, down={self.down}")


class _Scale(nn.Module):
    """A parametrization multiplying a weight by a constant (kept as a buffer)."""

    def __init__(self, factor: Union[float, Tensor]) -> None:
        super().__init__()
        # a tensor as it is: no host read, so the layer also builds on the meta device (parameter counts)
        self.register_buffer("factor", torch.as_tensor(factor, dtype=torch.float32).detach().clone())

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.factor.to(weight.dtype)


def improved_spectral_norm(module: nn.Module, types: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> nn.Module:
    """ViTGAN's improved spectral normalization (Lee et al. 2022), in place on every layer of ``types``:
    W -> sigma(W_init) W / sigma(W): spectrally normalized, then scaled back to the layer's spectral norm at
    initialization (plain spectral norm would shrink every layer to 1, which a transformer trains badly with)."""
    for layer in [m for m in module.modules() if isinstance(m, types)]:
        with torch.no_grad():
            sigma0 = torch.linalg.matrix_norm(layer.weight.detach().flatten(1).float(), ord=2)
        nn.utils.parametrizations.spectral_norm(layer, name="weight")
        nn.utils.parametrize.register_parametrization(layer, "weight", _Scale(sigma0))
    return module


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectrally normalize every equalized layer in ``module`` (in place); their run-time gain becomes 1.

    Spectral norm (Miyato et al. 2018) already fixes each layer's scale, so the equalized-lr gain
    would only shrink it further.
    """
    for layer in module.modules():
        if isinstance(layer, (EqualizedConv2d, EqualizedLinear)):
            layer.weight_gain = 1.0
            if isinstance(layer, EqualizedLinear):
                layer.bias_gain = 1.0
            nn.utils.parametrizations.spectral_norm(layer, name="weight")
    return module


class MinibatchStd(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018), appended as ``num_channels`` feature maps.

    Samples are split into groups of ``group_size`` (the largest divisor of the batch not above
    it); each group's per-feature stddev, averaged over features and pixels, becomes extra channels.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        if group_size < 1 or num_channels < 1:
            raise ValueError(f"MinibatchStd needs group_size >= 1 and num_channels >= 1, got {group_size}, {num_channels}")
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C + num_channels, H, W]."""
        B, C, H, W = x.shape
        if C % self.num_channels:
            raise ValueError(f"MinibatchStd: {C} channels are not divisible into {self.num_channels} groups")
        G = math.gcd(self.group_size, B)
        F_ = self.num_channels
        y = x.reshape(G, B // G, F_, C // F_, H, W)        # sample g*n + j sits in group j
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()   # stddev over each group
        y = y.mean(dim=(2, 3, 4)).reshape(B // G, F_, 1, 1)
        return torch.cat([x, y.repeat(G, 1, H, W)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


NOISE_MODES = ("random", "const", "none")


class NoiseInjection(nn.Module):
    """StyleGAN's per-pixel noise: x + strength * n, one noise map shared by all channels.

    ``strength`` is learned (initialized to 0). Works on images [B, C, H, W] and on tokens
    [B, H*W, C]. ``noise_mode``: ``random`` (fresh N(0, 1) per call), ``const`` (a fixed map
    stored with the weights, for reproducible images) or ``none``.
    """

    def __init__(self, resolution: int | tuple[int, int]) -> None:
        super().__init__()
        H, W = (resolution, resolution) if isinstance(resolution, int) else resolution
        self.strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(H, W))

    def forward(self, x: Tensor, noise_mode: str = "random") -> Tensor:
        """Add noise to x ([B, C, H, W] or [B, H*W, C])."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise_mode == "none":
            return x
        H, W = self.noise_const.shape
        shape = (x.shape[0], 1, H, W) if x.dim() == 4 else (x.shape[0], H * W, 1)
        if x.dim() == 4 and x.shape[2:] != (H, W) or x.dim() == 3 and x.shape[1] != H * W or x.dim() not in (3, 4):
            raise ValueError(f"NoiseInjection({H}x{W}) got input of shape {tuple(x.shape)}")
        if noise_mode == "random":
            noise = torch.randn(shape, device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const.to(x.dtype).reshape(1, *shape[1:])
        return x + noise * self.strength.to(x.dtype)


# ----------------------------------------------------------------------------- class conditioning
# Labels are int64 class indices [B]; None for unconditional models.

def check_class_labels(c: Tensor | None, num_classes: int, batch_size: int, who: str = "model") -> Tensor | None:
    """Refuse labels that do not fit: c=None for a conditional model, labels for an unconditional one,
    or anything but integer indices [batch_size]. (Values are not range-checked: that would sync a GPU.)"""
    if num_classes == 0:
        if c is not None:
            raise ValueError(f"this {who} is unconditional (num_classes=0); pass c=None")
        return None
    if c is None:
        raise ValueError(f"this {who} is conditional ({num_classes} classes): pass class labels c [B]")
    if c.dtype.is_floating_point or c.dtype.is_complex or c.dtype == torch.bool or c.shape != (batch_size,):
        raise ValueError(f"class labels c must be integer class indices [{batch_size}], "
                         f"got {c.dtype} {tuple(c.shape)}")
    return c.long()


def class_planes(c: Tensor, num_classes: int, height: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot labels as constant feature maps [B, num_classes, height, width] (plane c is 1, others 0)."""
    return F.one_hot(c.long(), num_classes).to(dtype)[:, :, None, None].expand(-1, -1, height, width)


class ClassProjection(nn.Module):
    """The class term of a projection discriminator (Miyato & Koyama 2018): <embed(c), h> per sample."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"ClassProjection needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        self.embed = nn.Embedding(num_classes, dim)
        nn.init.xavier_uniform_(self.embed.weight)  # N(0, 1) rows would swamp the unconditional logit at init

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """Features h [B, dim] and labels c [B] -> [B]."""
        return (self.embed(c) * h).sum(dim=1)


# ----------------------------------------------------------------------------- initialization

def init_linear_like_vit(m: nn.Module) -> None:
    """ViT's initialization of a Linear layer (trunc-normal weights, std 0.02, zero bias); other modules
    are left alone. For ``module.apply``."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- activation checkpointing

def checkpointed(fn: Callable[..., Tensor], *args: Tensor, enabled: bool = True) -> Tensor:
    """``fn(*args)``, with activation checkpointing when ``enabled`` and gradients are on: backward
    recomputes it under the forward's context.

    The attention kernel a call runs depends on a context variable (``double_backward_safe``);
    backward runs outside the penalty pass that set it, so a recomputation in the ambient context
    could pick another kernel and save tensors of other shapes (``CheckpointError``).
    Non-reentrant checkpointing also serves gradients of gradients (R1, WGAN-GP, path length).
    """
    if not (enabled and torch.is_grad_enabled()):
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _ReenteredContext(contextvars.copy_context())))


class _ReenteredContext:
    """Re-enterable context manager: sets every context variable to its value in ``context``.

    (Backward may recompute a checkpointed block more than once: gradients of gradients.)
    """

    def __init__(self, context: contextvars.Context) -> None:
        self.context, self.tokens = context, []

    def __enter__(self) -> None:
        self.tokens.append([(var, var.set(value)) for var, value in self.context.items()])

    def __exit__(self, *exc: object) -> None:
        for var, token in reversed(self.tokens.pop()):
            var.reset(token)
