"""Conditional convolutional WGAN-GP baseline: the final model of the CWGAN-GP_128 seed paper.

Generator: class (one-hot or embedding) concatenated to z -> linear to a 4x4 map ->
blocks of [bilinear x2 upsampling, conv k3 s1, norm, ReLU] up to the image size ->
conv k3 + tanh. Bilinear upsampling + conv replaced the paper's transposed convolutions,
which left checkerboard artifacts.

Critic: blocks of [conv k3 s2, norm, LeakyReLU(0.2)] down to 4x4, then a linear to one
value, no sigmoid. Classes enter as the paper's constant one-hot planes concatenated to
the image, or by projection (Miyato & Koyama 2018). The paper's critic used BatchNorm;
batch statistics make WGAN-GP's per-sample gradient penalty unsound (Gulrajani et al.
2017), so the default is LayerNorm and ``batch`` is kept only for faithful replication.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from transgan.errors import ConfigError
from transgan.models.common import check_resolution, stage_channels
from transgan.nn.layers import ClassProjection, check_class_labels, class_planes


def critic_norm(kind: str, channels: int) -> nn.Module:
    """The critic's normalization layer; LayerNorm over (C, H, W) is GroupNorm with one group."""
    layers = {
        "layer": lambda: nn.GroupNorm(1, channels),
        "instance": lambda: nn.GroupNorm(channels, channels),  # InstanceNorm with affine
        "batch": lambda: nn.BatchNorm2d(channels),
        "none": nn.Identity,
    }
    if kind not in layers:
        raise ConfigError(f"critic norm must be one of {sorted(layers)}, got {kind!r}")
    return layers[kind]()


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialization: conv and linear weights N(0, 0.02), norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ConvGenerator(nn.Module):
    """z (+ class) -> 4x4 -> [bilinear x2, conv3, norm, ReLU] x log2(R/4) -> conv3 -> tanh."""

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, z_dim: int = 64,
                 class_input: str = "onehot", embed_dim: int = 16, channel_base: int = 512,
                 channel_max: int = 64, norm: str = "batch", dcgan_init: bool = True) -> None:
        super().__init__()
        check_resolution(img_resolution, 16, 256)
        if class_input not in ("onehot", "embedding"):
            raise ConfigError(f"generator class_input must be onehot or embedding, got {class_input!r}")
        if norm not in ("batch", "none"):
            raise ConfigError(f"generator norm must be batch or none, got {norm!r}")
        self.z_dim, self.num_classes = z_dim, num_classes
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.class_input = class_input
        cond_dim = 0
        if num_classes and class_input == "embedding":
            self.embed = nn.Embedding(num_classes, embed_dim)
            cond_dim = embed_dim
        elif num_classes:
            cond_dim = num_classes
        # The baseline keeps at least one channel per stage at any channel_base (floor=1).
        c4 = stage_channels(4, channel_base, channel_max, floor=1)
        self.fc = nn.Linear(z_dim + cond_dim, c4 * 16)
        self.fc_norm = nn.BatchNorm2d(c4) if norm == "batch" else nn.Identity()
        blocks, res, ch = [], 4, c4
        while res < img_resolution:
            res *= 2
            out = stage_channels(res, channel_base, channel_max, floor=1)
            blocks += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(ch, out, 3, padding=1),
                       nn.BatchNorm2d(out) if norm == "batch" else nn.Identity(),
                       nn.ReLU()]
            ch = out
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(ch, img_channels, 3, padding=1)
        if dcgan_init:
            dcgan_init_(self)

    def forward(self, z: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] for latents z [B, z_dim] and labels c [B]."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [B, {self.z_dim}], got {tuple(z.shape)}")
        c = check_class_labels(c, self.num_classes, z.shape[0], "generator")
        if c is not None:
            cond = self.embed(c) if self.class_input == "embedding" else F.one_hot(c, self.num_classes).to(z.dtype)
            z = torch.cat([z, cond], dim=1)
        x = self.fc(z).view(z.shape[0], -1, 4, 4)
        x = F.relu(self.fc_norm(x))
        return torch.tanh(self.to_image(self.blocks(x)))


class ConvCritic(nn.Module):
    """[conv3 s2, norm, LeakyReLU] down to 4x4 -> linear; one-hot planes or projection for classes."""

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, class_input: str = "projection",
                 channel_base: int = 512, channel_max: int = 64, norm: str = "layer",
                 dcgan_init: bool = True) -> None:
        super().__init__()
        check_resolution(img_resolution, 16, 256)
        if class_input not in ("planes", "projection"):
            raise ConfigError(f"critic class_input must be planes or projection, got {class_input!r}")
        self.num_classes, self.img_resolution, self.img_channels = num_classes, img_resolution, img_channels
        self.class_input = class_input
        extra = num_classes if num_classes and class_input == "planes" else 0
        layers, res, ch = [], img_resolution, img_channels + extra
        while res > 4:
            res //= 2
            out = stage_channels(res, channel_base, channel_max, floor=1)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), critic_norm(norm, out), nn.LeakyReLU(0.2)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch * 16, 1)
        if dcgan_init:
            dcgan_init_(self)
        if num_classes and class_input == "projection":
            self.project = ClassProjection(num_classes, ch * 16)

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """Critic values [B] (no sigmoid)."""
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images must have shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        c = check_class_labels(c, self.num_classes, x.shape[0], "critic")
        if c is not None and self.class_input == "planes":
            x = torch.cat([x, class_planes(c, self.num_classes, *x.shape[2:], dtype=x.dtype)], dim=1)
        h = self.features(x).flatten(1)
        out = self.head(h).squeeze(1)  # the final 4x4 conv to one value, written as a linear layer
        if c is not None and self.class_input == "projection":
            out = out + self.project(h, c)
        return out
