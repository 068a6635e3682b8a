"""StyleGAN2 (Karras et al., CVPR 2020): skip generator and residual discriminator.

Generator (config F, "skip" architecture), top to bottom::

    z (+ class) --MappingNetwork (nn/style.py)--> ws [B, num_ws, w_dim]
    x = learned constant, C(4) x 4 x 4
    block 4:    x = StyledConv(x, ws[0]);                      img = ToRGB(x, ws[1])
    block r:    x = StyledConv(up2(x), ws[i]); x = StyledConv(x, ws[i+1])
                img = up2(img) + ToRGB(x, ws[i+2])              for r = 8, 16, ..., R

A StyledConv is modulated conv (demodulated) -> per-pixel noise -> bias -> lrelu; the ToRGB of
a block and the first conv of the next read the same w, so num_ws = 2 log2(R) - 2. Channels
per resolution r are min(channel_base / r, channel_max).

Discriminator ("resnet" architecture), bottom to top::

    x = FromRGB(img)                                            1x1 conv, lrelu, at R x R
    block r:    x = (conv3x3 -> conv3x3 /2  +  conv1x1 /2) * sqrt(1/2)     for r = R, ..., 8
    epilogue:   minibatch-std (group 4, 1 channel) -> conv3x3 -> fc -> fc to 1 (or cmap_dim)
    conditional: logit = <out, cmap(c)> / sqrt(cmap_dim)        projection (Miyato & Koyama 2018)

/2 is the [1, 3, 3, 1] anti-aliasing filter followed by a stride-2 convolution. Every layer
uses equalized learning rate; ``spectral_norm=True`` spectrally normalizes every layer of D
except the class embedding.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch import Tensor

from transgan.errors import ConfigError
from transgan.models.common import check_resolution, stage_channels
from transgan.nn.layers import (RESAMPLE_MODES, apply_spectral_norm, check_class_labels, downsample2d,
                                EqualizedConv2d, EqualizedLinear, fir_kernel, MinibatchStd, upsample2d, upsample2d_fir)
from transgan.nn.style import MappingNetwork, StyledConv2d, StyleGenerator, ToRGB

__all__ = ["LayerFactory", "SynthesisBlock", "SynthesisNetwork", "StyleGAN2Generator",
           "D_ARCHITECTURES", "DiscriminatorBlock", "DiscriminatorEpilogue", "StyleGAN2Discriminator"]

D_ARCHITECTURES = ("resnet", "orig", "skip")


def _check_shape(x: Tensor, shape: tuple, who: str) -> None:
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = ", ".join("B" if s is None else str(s) for s in shape)
        raise ValueError(f"{who} wants input of shape [{want}], got {tuple(x.shape)}")


# ----------------------------------------------------------------------------- generator

# A synthesis layer: (in_channels, out_channels, w_dim, resolution, up=..., w_index=...) -> module whose
# forward is (x, w, noise_mode) -> x. StyledConv2d here; the token-style generator plugs in its own.
LayerFactory = Callable[..., nn.Module]


class SynthesisBlock(nn.Module):
    """Resolution r of the skip generator: (up +) two synthesis layers and a ToRGB added to the image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 first_w_index: int, layer: LayerFactory = StyledConv2d, resample: str = "bilinear") -> None:
        super().__init__()
        self.resolution, self.resample = resolution, resample
        if resample == "fir":
            self.register_buffer("resample_kernel", fir_kernel(), persistent=False)
        first = resolution == 4
        self.convs = nn.ModuleList(
            [layer(out_channels, out_channels, w_dim, resolution, w_index=first_w_index)] if first else
            [layer(in_channels, out_channels, w_dim, resolution, up=True, w_index=first_w_index),
             layer(out_channels, out_channels, w_dim, resolution, w_index=first_w_index + 1)])
        self.torgb = ToRGB(out_channels, img_channels, w_dim, w_index=first_w_index + len(self.convs))

    def forward(self, x: Tensor, img: Optional[Tensor], ws: Tensor, noise_mode: str = "random") -> tuple[Tensor, Tensor]:
        """Features and image so far -> those of this resolution."""
        for conv in self.convs:
            x = conv(x, ws[:, conv.w_index], noise_mode)
        rgb = self.torgb(x, ws[:, self.torgb.w_index])
        if img is None:
            return x, rgb
        up = upsample2d_fir(img, self.resample_kernel) if self.resample == "fir" else upsample2d(img)
        return x, up + rgb


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> images [B, img_channels, R, R], from a learned 4 x 4 constant.

    ``layer`` builds the two layers of each block (default: StyleGAN2's StyledConv2d).
    ``resample`` upsamples the skip images: ``bilinear`` (edges replicated) or ``fir``
    (StyleGAN2's [1, 3, 3, 1] upfirdn2d with zero padding).
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int,
                 channel_max: int, layer: LayerFactory = StyledConv2d, resample: str = "bilinear") -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {r: stage_channels(r, channel_base, channel_max) for r in resolutions}
        self.const = nn.Parameter(torch.randn(channels[4], 4, 4))
        blocks, w_index = [], 0
        for r in resolutions:
            block = SynthesisBlock(channels[max(r // 2, 4)], channels[r], w_dim, r, img_channels, w_index, layer,
                                   resample)
            blocks.append(block)
            w_index += len(block.convs)
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = w_index + 1  # the last ToRGB's w

    def forward(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        """ws [B, num_ws, w_dim] -> images [B, img_channels, R, R]."""
        _check_shape(ws, (None, self.num_ws, self.w_dim), "StyleGAN2 synthesis")
        x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        img = None
        for block in self.blocks:
            x, img = block(x, img, ws, noise_mode)
        return img


class StyleGAN2Generator(StyleGenerator):
    """StyleGAN2 generator: mapping network + skip synthesis network (see the module docstring).

    ``resample``: ``bilinear`` (this project's default: edges replicated) or ``fir`` (the
    official upfirdn2d [1, 3, 3, 1] with zero padding, for up=2 convolutions and skip images).
    """

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, z_dim: int = 512, w_dim: int = 512,
                 mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01, w_avg_beta: float = 0.995,
                 embed_dim: Optional[int] = None, channel_base: int = 32768, channel_max: int = 512,
                 resample: str = "bilinear") -> None:
        check_resolution(img_resolution)
        if resample not in RESAMPLE_MODES:
            raise ConfigError(f"stylegan2 generator: resample must be one of {list(RESAMPLE_MODES)}, got {resample!r}")
        synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max,
                                     layer=functools.partial(StyledConv2d, resample=resample), resample=resample)
        super().__init__(z_dim, w_dim, synthesis.num_ws, num_classes, img_resolution, img_channels,
                         mapping_layers=mapping_layers, mapping_lr_multiplier=mapping_lr_multiplier,
                         w_avg_beta=w_avg_beta, embed_dim=embed_dim)
        self.synthesis = synthesis


# ----------------------------------------------------------------------------- discriminator

class DiscriminatorBlock(nn.Module):
    """Block at resolution r -> r/2: conv3x3, conv3x3 /2; ``residual`` adds a conv1x1 /2 skip, the sum
    scaled by sqrt(1/2) (StyleGAN2's ``resnet`` block; without it the ``orig`` / ``skip`` block)."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool = True) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu", down=True)
        self.skip = EqualizedConv2d(in_channels, out_channels, 1, bias=False, down=True) if residual else None

    def forward(self, x: Tensor) -> Tensor:
        """[B, in, r, r] -> [B, out, r/2, r/2]."""
        y = self.conv1(self.conv0(x))
        if self.skip is None:
            return y
        # Sum of two unit-variance paths, rescaled to unit variance.
        return (self.skip(x) + y) * math.sqrt(0.5)


class DiscriminatorEpilogue(nn.Module):
    """4 x 4 features -> one output (or a cmap_dim vector): minibatch-std, conv, fc, fc."""

    def __init__(self, channels: int, out_dim: int, mbstd_group_size: int = 4, mbstd_channels: int = 1) -> None:
        super().__init__()
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_channels) if mbstd_channels > 0 else None
        self.conv = EqualizedConv2d(channels + max(mbstd_channels, 0), channels, 3, activation="lrelu")
        self.fc = EqualizedLinear(channels * 16, channels, activation="lrelu")
        self.out = EqualizedLinear(channels, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, 4, 4] -> [B, out_dim]."""
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.out(self.fc(self.conv(x).flatten(1)))


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch-std and projection conditioning.

    ``D(x, c=None) -> logits [B]``. Conditional (num_classes > 0): the epilogue outputs a
    ``cmap_dim`` vector and the logit is its inner product with the class embedding cmap(c)
    (a small MappingNetwork on the class alone), divided by sqrt(cmap_dim).
    ``spectral_norm=True`` spectrally normalizes every conv and linear layer except cmap.
    ``architecture`` as in StyleGAN2 (Karras et al. 2020, fig. 7): ``resnet`` (residual blocks, the
    default), ``orig`` (plain blocks; stylegan2-ada's CIFAR-10 config) or ``skip`` (plain blocks, and
    the image, FIR-downsampled, enters again through a 1x1 conv after every block).
    """

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, channel_base: int = 32768,
                 channel_max: int = 512, mbstd_group_size: int = 4, mbstd_channels: int = 1,
                 cmap_dim: Optional[int] = None, cmap_layers: int = 2, spectral_norm: bool = False,
                 architecture: str = "resnet") -> None:
        super().__init__()
        check_resolution(img_resolution)
        if img_channels < 1 or num_classes < 0:
            raise ConfigError(f"bad discriminator shape: img_channels={img_channels}, num_classes={num_classes}")
        if architecture not in D_ARCHITECTURES:
            raise ConfigError(f"discriminator architecture {architecture!r}: choose one of {list(D_ARCHITECTURES)}")
        self.img_resolution, self.img_channels, self.num_classes = img_resolution, img_channels, num_classes
        self.architecture = architecture
        resolutions = [2 ** i for i in range(int(math.log2(img_resolution)), 2, -1)]  # R, ..., 8
        channels = {r: stage_channels(r, channel_base, channel_max) for r in resolutions + [4]}
        self.fromrgb = EqualizedConv2d(img_channels, channels[img_resolution], 1, activation="lrelu")
        self.blocks = nn.ModuleList([DiscriminatorBlock(channels[r], channels[r // 2], architecture == "resnet")
                                     for r in resolutions])
        # skip: image_inputs[k] adds the image at block k's output size (the last one feeds the epilogue)
        self.image_inputs = nn.ModuleList([EqualizedConv2d(img_channels, channels[r // 2], 1, activation="lrelu")
                                           for r in resolutions]) if architecture == "skip" else None
        if architecture == "skip":
            self.register_buffer("resample_kernel", fir_kernel(), persistent=False)
        self.cmap_dim = (cmap_dim or channels[4]) if num_classes else 0
        self.epilogue = DiscriminatorEpilogue(channels[4], self.cmap_dim or 1, mbstd_group_size, mbstd_channels)
        self.spectral_norm = bool(spectral_norm)
        if spectral_norm:
            apply_spectral_norm(self)  # before cmap exists: the class embedding stays unnormalized
        self.cmap = (MappingNetwork(0, self.cmap_dim, None, num_classes, num_layers=cmap_layers, w_avg_beta=None)
                     if num_classes else None)

    def features(self, x: Tensor) -> Tensor:
        """Images [B, C, R, R] -> the 4 x 4 feature map fed to the epilogue."""
        _check_shape(x, (None, self.img_channels, self.img_resolution, self.img_resolution), "StyleGAN2Discriminator")
        img, x = x, self.fromrgb(x)
        for k, block in enumerate(self.blocks):
            x = block(x)
            if self.image_inputs is not None:
                img = downsample2d(img, self.resample_kernel)
                x = x + self.image_inputs[k](img)
        return x

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """Images [B, C, R, R] (and class labels [B]) -> logits [B]."""
        c = check_class_labels(c, self.num_classes, x.shape[0], "discriminator")
        out = self.epilogue(self.features(x))
        if c is None:
            return out.squeeze(1)
        cmap = self.cmap(None, c)
        return (out * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
