"""Token-style generator: StyleGAN2's skeleton with style injected by attention (REFERENCE.md section 5).

TokenGAN-like (Zeng et al., NeurIPS 2021): instead of scaling convolution weights by w, every
layer lets each content token (pixel) retrieve its own style from a set of style tokens::

    z (+ class) --MappingNetwork (nn/style.py)--> ws [B, num_ws, w_dim]    one w per layer
    x = learned constant, C(4) x 4 x 4
    block 4:    x = TokenStyleLayer(x, ws[0]);                          img = ToRGB(x, ws[1])
    block r:    x = TokenStyleLayer(blur(bilinear_x2(x)), ws[i]); x = TokenStyleLayer(x, ws[i+1])
                img = bilinear_x2(img) + ToRGB(x, ws[i+2])                for r = 8, ..., R

    TokenStyleLayer(x, w):
        style tokens S = affine(w)                           [B, num_style_tokens, C]
        h = LayerNorm(x) (no affine; in place of AdaIN)      content tokens, one per pixel
        s = softmax((W_q (h + pos)) K^T / sqrt(d)) S         K learned keys; per-token style
        x = lrelu(conv3x3(h * s) + noise + bias)

ws, truncation, style mixing and path length are those of every style generator (nn/style.py),
so ``loss=ns_r1_pl`` applies unchanged. The discriminator is StyleGAN2's, imported from
models/stylegan2.py (``model/discriminator=stylegan2``).
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from transgan.errors import ConfigError
from transgan.models.common import check_resolution
from transgan.models.stylegan2 import SynthesisNetwork
from transgan.nn.layers import Blur2d, EqualizedConv2d, EqualizedLinear, NoiseInjection, leaky_relu_gain, upsample2d
from transgan.nn.style import StyleGenerator, StyleTokenAttention

__all__ = ["TokenStyleLayer", "StyleTokenGenerator"]


class TokenStyleLayer(nn.Module):
    """One synthesis layer: [bilinear x2 + blur] -> style by cross-attention -> conv3x3 -> noise -> bias -> lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False,
                 w_index: int = 0, num_style_tokens: int = 8, head_dim: int = 32, kernel: str = "auto") -> None:
        super().__init__()
        if in_channels > head_dim and in_channels % head_dim:
            raise ConfigError(f"styletoken: {in_channels} channels do not split into heads of head_dim={head_dim}")
        heads = max(1, in_channels // head_dim)
        self.up, self.resolution, self.w_index = up, resolution, w_index
        self.blur = Blur2d() if up else None
        self.modulation = StyleTokenAttention(in_channels, w_dim, resolution * resolution, num_style_tokens, heads,
                                              kernel=kernel)
        self.conv = EqualizedConv2d(in_channels, out_channels, 3, bias=False)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @property
    def affine(self) -> EqualizedLinear:
        """w -> style tokens of this layer."""
        return self.modulation.affine

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        """x [B, in, r, r] ([B, in, r/2, r/2] with ``up``), w [B, w_dim] -> [B, out, r, r]."""
        if self.up:
            x = self.blur(upsample2d(x))
        B, C, H, W = x.shape
        tokens = self.modulation(x.flatten(2).transpose(1, 2), w)
        x = self.conv(tokens.transpose(1, 2).reshape(B, C, H, W))
        x = self.noise(x, noise_mode)
        return leaky_relu_gain(x + self.bias.to(x.dtype).reshape(1, -1, 1, 1))


class StyleTokenGenerator(StyleGenerator):
    """Token-style generator (see the module docstring): mapping network + attention-modulated synthesis."""

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, z_dim: int = 512, w_dim: int = 512,
                 mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01, w_avg_beta: float = 0.995,
                 embed_dim: Optional[int] = None, channel_base: int = 32768, channel_max: int = 512,
                 num_style_tokens: int = 32, head_dim: int = 64, attention_kernel: Optional[str] = None) -> None:
        check_resolution(img_resolution)
        if num_style_tokens < 1 or head_dim < 1:
            raise ConfigError(f"styletoken needs num_style_tokens >= 1 and head_dim >= 1, "
                              f"got {num_style_tokens}, {head_dim}")
        # null is the run's model.attention, filled in by the registry's builder.
        kernel = attention_kernel or "auto"  # checked by the attention layers
        layer = partial(TokenStyleLayer, num_style_tokens=num_style_tokens, head_dim=head_dim, kernel=kernel)
        synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max, layer=layer)
        super().__init__(z_dim, w_dim, synthesis.num_ws, num_classes, img_resolution, img_channels,
                         mapping_layers=mapping_layers, mapping_lr_multiplier=mapping_lr_multiplier,
                         w_avg_beta=w_avg_beta, embed_dim=embed_dim)
        self.synthesis = synthesis
        self.attention_kernel = kernel
