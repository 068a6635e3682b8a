"""R3GAN (Huang et al., "The GAN is dead; long live the GAN! A Modern GAN Baseline", NeurIPS 2024).

A normalization-free ResNet, the convolutional reference an attention backbone must beat:

- Residual block: 1x1 conv (C -> E*C), bias + LeakyReLU(0.2), 3x3 grouped conv (``cardinality``
  groups), bias + LeakyReLU(0.2), 1x1 conv (E*C -> C), added to the input. Convolutions have no
  bias (the activations carry it); no normalization anywhere.
- Fix-up initialization: weights N(0, gain^2 / fan_in) with gain = sqrt(2 / (1 + 0.2^2)) L^(-1/4)
  (L = blocks in the network) for the first two convs of a block and 0 for the last, so every
  block starts as the identity.
- Generator: z (concatenated with a class embedding) -> a learned 4x4 basis scaled per channel
  by a linear map of z; per stage a 1x1 width change and x2 upsampling with the [1, 3, 3, 1]
  filter, then the blocks; a 1x1 conv to RGB, no output nonlinearity.
- Discriminator: the mirror: 1x1 conv from RGB, per stage the blocks then /2 downsampling and a
  1x1 width change; at 4x4 a depthwise 4x4 conv (the "discriminative basis") and a linear map to
  one logit, or to an embedding projected on the class's (Miyato & Koyama 2018).
- Stages listed in ``bf16_stages`` compute in bfloat16 (the official "FP16Stages").

Widths, cardinalities and blocks are listed per stage from 4x4 up (the generator's order); the
discriminator takes the same lists and walks them from the image down. The official presets are
``experiment=r3gan_cifar10`` and ``experiment=r3gan_ffhq256`` (docs/reproduction.md).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from transgan.errors import ConfigError
from transgan.models.common import check_resolution
from transgan.nn.layers import check_class_labels, downsample2d, fir_kernel, upsample2d_fir

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2 / (1 + LRELU_SLOPE ** 2))  # keeps the second moment through LeakyReLU(0.2)


def msr_init_(weight: Tensor, gain: float = 1.0) -> Tensor:
    """He ("MSR") initialization: N(0, gain^2 / fan_in), fan_in = input channels x kernel taps."""
    fan_in = weight.shape[1] * weight[0][0].numel()
    with torch.no_grad():
        return weight.normal_(0.0, gain / math.sqrt(fan_in))


def lowpass_taps(resample_filter: Sequence[float]) -> list[float]:
    """The 1-D taps of the x2 resampling filter: ``resample_filter`` convolved with [1, 1] ([1, 2, 1] -> [1, 3, 3, 1])."""
    return np.convolve(np.asarray(resample_filter, dtype=np.float64), [1.0, 1.0]).tolist()


class Conv(nn.Conv2d):
    """A bias-free, same-size convolution with He initialization, run in the input's dtype."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1,
                 gain: float = 1.0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, groups=groups,
                         bias=False)
        msr_init_(self.weight, gain)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in, H, W] -> [B, out, H, W]."""
        return F.conv2d(x, self.weight.to(x.dtype), padding=self.padding, groups=self.groups)


class BiasedLeakyReLU(nn.Module):
    """LeakyReLU(0.2) of x plus a learned per-channel bias (the biases of the network live here)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, ...] -> [B, C, ...]."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return F.leaky_relu(x + self.bias.to(x.dtype).view(shape), LRELU_SLOPE)


class ResidualBlock(nn.Module):
    """x + conv1x1(act(conv_kxk_grouped(act(conv1x1(x))))), the last conv zero-initialized (fix-up)."""

    def __init__(self, channels: int, cardinality: int, expansion: int, kernel_size: int, total_blocks: int) -> None:
        super().__init__()
        expanded = channels * expansion
        if expanded % cardinality:
            raise ConfigError(f"r3gan: {expanded} expanded channels are not divisible by cardinality {cardinality}")
        # Three linear layers per block: each scaled so the residual branches' sum keeps its variance.
        gain = LRELU_GAIN * total_blocks ** (-1 / (2 * 3 - 2))
        self.conv1 = Conv(channels, expanded, 1, gain=gain)
        self.act1 = BiasedLeakyReLU(expanded)
        self.conv2 = Conv(expanded, expanded, kernel_size, groups=cardinality, gain=gain)
        self.act2 = BiasedLeakyReLU(expanded)
        self.conv3 = Conv(expanded, channels, 1, gain=0.0)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        return x + self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))


class GenerativeBasis(nn.Module):
    """The generator's 4x4 start: a learned basis [C, 4, 4] scaled per channel by a linear map of the input."""

    def __init__(self, in_features: int, channels: int) -> None:
        super().__init__()
        self.basis = nn.Parameter(torch.randn(channels, 4, 4))
        self.linear = nn.Linear(in_features, channels, bias=False)
        msr_init_(self.linear.weight)

    def forward(self, z: Tensor) -> Tensor:
        """[B, in] -> [B, C, 4, 4]."""
        return self.basis.to(z.dtype).unsqueeze(0) * self.linear(z).unsqueeze(-1).unsqueeze(-1)


class DiscriminativeBasis(nn.Module):
    """The discriminator's 4x4 end: a depthwise 4x4 conv (one value per channel), then a linear map."""

    def __init__(self, channels: int, out_features: int) -> None:
        super().__init__()
        self.basis = nn.Conv2d(channels, channels, 4, groups=channels, bias=False)
        self.linear = nn.Linear(channels, out_features, bias=False)
        msr_init_(self.basis.weight)
        msr_init_(self.linear.weight)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, 4, 4] -> [B, out]."""
        h = F.conv2d(x, self.basis.weight.to(x.dtype), groups=self.basis.groups).flatten(1)
        return F.linear(h, self.linear.weight.to(h.dtype))


class Resample(nn.Module):
    """x2 up (1x1 width change first) or /2 down (1x1 width change after) with the low-pass filter."""

    def __init__(self, in_channels: int, out_channels: int, taps: Sequence[float], up: bool) -> None:
        super().__init__()
        self.up = up
        self.register_buffer("kernel", fir_kernel(taps), persistent=False)
        self.conv = Conv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        """[B, in, H, W] -> [B, out, 2H, 2W] (up) or [B, out, H/2, W/2] (down)."""
        kernel = self.kernel.to(x.dtype)
        if self.up:
            x = self.conv(x) if self.conv is not None else x
            return upsample2d_fir(x, kernel)
        x = downsample2d(x, kernel)
        return self.conv(x) if self.conv is not None else x


class Stage(nn.Module):
    """One resolution: the transition (first in G, last in D) and the residual blocks, in ``dtype``."""

    def __init__(self, transition: nn.Module, blocks: list[ResidualBlock], transition_first: bool,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.transition, self.blocks = transition, nn.ModuleList(blocks)
        self.transition_first, self.dtype = transition_first, dtype

    def forward(self, x: Tensor) -> Tensor:
        """The stage's computation, in its dtype."""
        x = x.to(self.dtype)
        if self.transition_first:
            x = self.transition(x)
        for block in self.blocks:
            x = block(x)
        return x if self.transition_first else self.transition(x)


def stage_plan(img_resolution: int, widths: Sequence[int], cardinalities: Sequence[int], blocks: Sequence[int],
               bf16_stages: Sequence[int], who: str) -> tuple[int, list[torch.dtype]]:
    """Check the per-stage lists (one entry per resolution from 4x4 up); return the stage count and dtypes."""
    check_resolution(img_resolution, 8, 1024)
    n = int(math.log2(img_resolution)) - 1  # 4, 8, ..., img_resolution
    for name, values in (("widths", widths), ("cardinalities", cardinalities), ("blocks", blocks)):
        if len(values) != n or any(int(v) < (0 if name == "blocks" else 1) for v in values):
            raise ConfigError(f"{who}: {name} must list one value per stage from 4x4 to {img_resolution}x"
                              f"{img_resolution} ({n} stages), got {list(values)}")
    dtypes = [torch.float32] * n
    for i in bf16_stages:
        if not -n <= int(i) < n:
            raise ConfigError(f"{who}: bf16_stages entry {i} is not one of the {n} stages")
        dtypes[int(i)] = torch.bfloat16
    return n, dtypes


class R3GANGenerator(nn.Module):
    """z [B, z_dim] (+ class c [B]) -> images [B, C, R, R] (linear output)."""

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, z_dim: int = 64,
                 widths: Sequence[int] = (768, 768, 768, 768), cardinalities: Sequence[int] = (96, 96, 96, 96),
                 blocks: Sequence[int] = (2, 2, 2, 2), expansion: int = 2, kernel_size: int = 3,
                 class_embed_dim: int = 64, resample_filter: Sequence[float] = (1, 2, 1),
                 bf16_stages: Sequence[int] = ()) -> None:
        super().__init__()
        n, dtypes = stage_plan(img_resolution, widths, cardinalities, blocks, bf16_stages, "r3gan generator")
        self.z_dim, self.num_classes = int(z_dim), int(num_classes)
        self.img_resolution, self.img_channels = int(img_resolution), int(img_channels)
        embed = int(class_embed_dim) if num_classes else 0
        # The class enters as a learned embedding (a bias-free linear map of its one-hot vector).
        self.embed = nn.Linear(num_classes, embed, bias=False) if num_classes else None
        if self.embed is not None:
            msr_init_(self.embed.weight)
        total, taps = sum(int(b) for b in blocks), lowpass_taps(resample_filter)
        stages = []
        for i in range(n):
            transition = (GenerativeBasis(self.z_dim + embed, widths[0]) if i == 0 else
                          Resample(widths[i - 1], widths[i], taps, up=True))
            stages.append(Stage(transition, [ResidualBlock(widths[i], cardinalities[i], expansion, kernel_size, total)
                                             for _ in range(int(blocks[i]))], transition_first=True, dtype=dtypes[i]))
        self.stages = nn.ModuleList(stages)
        self.to_rgb = Conv(widths[-1], img_channels, 1)

    def forward(self, z: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """Images [B, img_channels, R, R] for latents z [B, z_dim] and labels c [B]."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [B, {self.z_dim}], got {tuple(z.shape)}")
        c = check_class_labels(c, self.num_classes, z.shape[0], "generator")
        x = z if c is None else torch.cat([z, F.embedding(c, self.embed.weight.t()).to(z.dtype)], dim=1)
        for stage in self.stages:
            x = stage(x)
        return self.to_rgb(x).float()


class R3GANDiscriminator(nn.Module):
    """Images [B, C, R, R] (+ class c [B]) -> logits [B]."""

    # oneDNN's double backward of grouped convolutions (the R1/R2 passes) is slower in NHWC than in
    # NCHW on CPU: a digits R1 pass 0.36-0.43 s NCHW, 0.47-0.48 s NHWC (docs/performance.md).
    cpu_channels_last = False

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int,
                 widths: Sequence[int] = (768, 768, 768, 768), cardinalities: Sequence[int] = (96, 96, 96, 96),
                 blocks: Sequence[int] = (2, 2, 2, 2), expansion: int = 2, kernel_size: int = 3,
                 class_embed_dim: Optional[int] = None, resample_filter: Sequence[float] = (1, 2, 1),
                 bf16_stages: Sequence[int] = ()) -> None:
        super().__init__()
        n, dtypes = stage_plan(img_resolution, widths, cardinalities, blocks, bf16_stages, "r3gan discriminator")
        self.num_classes, self.img_resolution, self.img_channels = int(num_classes), int(img_resolution), int(img_channels)
        # The lists run from 4x4 up (the generator's order); this network walks them from the image down.
        widths, cardinalities, blocks = list(widths)[::-1], list(cardinalities)[::-1], list(blocks)[::-1]
        dtypes = dtypes[::-1]
        embed = int(class_embed_dim or widths[-1]) if num_classes else 0
        total, taps = sum(int(b) for b in blocks), lowpass_taps(resample_filter)
        self.from_rgb = Conv(img_channels, widths[0], 1)
        stages = []
        for i in range(n):
            transition = (Resample(widths[i], widths[i + 1], taps, up=False) if i < n - 1 else
                          DiscriminativeBasis(widths[i], embed if num_classes else 1))
            stages.append(Stage(transition, [ResidualBlock(widths[i], cardinalities[i], expansion, kernel_size, total)
                                             for _ in range(int(blocks[i]))], transition_first=False, dtype=dtypes[i]))
        self.stages = nn.ModuleList(stages)
        self.embed = nn.Linear(num_classes, embed, bias=False) if num_classes else None
        if self.embed is not None:
            msr_init_(self.embed.weight, gain=1 / math.sqrt(embed))

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """Logits [B]."""
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images must have shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        c = check_class_labels(c, self.num_classes, x.shape[0], "discriminator")
        h = self.from_rgb(x.to(self.stages[0].dtype))
        for stage in self.stages:
            h = stage(h)
        h = h.float()
        if c is None:
            return h.squeeze(1)
        return (h * F.embedding(c, self.embed.weight.t())).sum(dim=1)
