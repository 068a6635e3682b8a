"""Style machinery written once for every style-based generator (StyleGAN2, token-style, Swin-GAN).

StyleGAN2 (Karras et al. 2020) splits a generator into a *mapping* network, z (+ class) -> w,
and a *synthesis* network that is steered by one w per layer, ``ws [B, num_ws, w_dim]``.
Everything that acts on ws — truncation, style mixing, path-length regularization — is
therefore written once, here and in transgan/losses.py.

Public API
----------
``normalize_2nd_moment(x, dim=1, eps=1e-8) -> Tensor``
    x / sqrt(mean(x^2)), the mapping network's input normalization.
``MappingNetwork(z_dim, w_dim, num_ws, num_classes=0, num_layers=8, embed_dim=None, lr_multiplier=0.01, w_avg_beta=0.995)``
    ``forward(z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=None) -> ws [B, num_ws, w_dim]``
    (``[B, w_dim]`` when ``num_ws=None``). Tracks ``w_avg`` **per class** (buffer
    ``[max(num_classes, 1), w_dim]``); truncation pulls ws[:, :cutoff] toward the average of
    the sample's own class. ``truncate(ws, c, psi, cutoff)`` does only that step.
``modulated_conv2d(x, weight, styles, demodulate=True, padding=0, fused=False) -> Tensor``
    StyleGAN2's weight modulation/demodulation, fused (grouped conv) or not; same result.
``ModulatedConv2d(in_channels, out_channels, w_dim, kernel_size=3, demodulate=True)``
    ``forward(x, w, fused=None)``; fused by default for inference (autograd off) on CUDA.
``StyledConv2d(in_channels, out_channels, w_dim, resolution, kernel_size=3, up=False)``
    modulated conv + noise injection + bias + lrelu (one StyleGAN2 synthesis layer).
``ToRGB(in_channels, img_channels, w_dim, kernel_size=1)``
    modulated 1x1 conv without demodulation, plus bias.
``TokenAdaIN(dim, w_dim)``, ``SelfModulatedLayerNorm(dim, w_dim)``
    token modulation, ``forward(x [B, N, dim], w [B, w_dim]) -> [B, N, dim]``.
``StyleTokenAttention(dim, w_dim, num_tokens, num_style_tokens=8, num_heads=1)``
    ``forward(x [B, N, dim], w [B, w_dim]) -> [B, N, dim]``: style injected by cross-attention,
    Q = LayerNorm(x) + position, K = learned keys, V = style tokens made from w.
``draw_crossover(num_ws, prob, device=None, crossover=None) -> Tensor``, ``mix_styles(ws, ws_mix, crossover) -> Tensor``
    style mixing: with probability p one crossover index per batch in [1, num_ws); ws[:, crossover:]
    come from a second latent.
``StyleGenerator``
    base class: ``mapping(z, c, truncation_psi=1.0, truncation_cutoff=None)``, a subclass-supplied
    ``synthesis(ws, noise_mode="random")``, and ``forward(z, c=None, truncation_psi=1.0, ...)`` so
    ``G(z, c)`` works like any backbone. ``forward`` also takes ``style_mixing_prob`` and
    ``return_ws``, through which transgan/losses.py mixes styles and regularizes path length
    (calling the module itself, so DistributedDataParallel still synchronizes gradients).

Also used from transgan/nn/layers.py: ``EqualizedLinear``, ``NoiseInjection``, ``upsample2d``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from transgan.nn.attention import check_kernel, scaled_dot_product
from transgan.nn.layers import (RESAMPLE_MODES, EqualizedLinear, NoiseInjection, blur2d, fir_kernel,
                                leaky_relu_gain, upsample2d)

__all__ = [
    "normalize_2nd_moment", "MappingNetwork", "modulated_conv2d", "ModulatedConv2d", "StyledConv2d", "ToRGB",
    "TokenAdaIN", "SelfModulatedLayerNorm", "StyleTokenAttention", "draw_crossover", "mix_styles",
    "StyleGenerator",
]


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """x / sqrt(mean(x^2) + eps) along ``dim``: puts z (and class embeddings) on the unit sphere * sqrt(dim)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------- mapping network

class MappingNetwork(nn.Module):
    """z (+ class embedding) -> w through an MLP with a reduced learning rate; tracks w_avg.

    The class label ``c`` (int64 [B]) is embedded by an equalized linear layer on its one-hot
    code, normalized like z and concatenated to it. ``w_avg`` is a per-class table (one row when
    unconditional), updated in training mode with the per-class batch means of w:
    ``w_avg[k] <- lerp(mean w of class k, w_avg[k], w_avg_beta)``. Truncation of a sample moves
    its ws toward the row of its own class, so psi = 0 gives that class's average image.
    ``z_dim=0`` (class embedding only) and ``num_ws=None`` (return w [B, w_dim]) serve the
    discriminator's projection embedding.
    """

    def __init__(self, z_dim: int, w_dim: int, num_ws: Optional[int], num_classes: int = 0, num_layers: int = 8,
                 embed_dim: Optional[int] = None, lr_multiplier: float = 0.01,
                 w_avg_beta: Optional[float] = 0.995) -> None:
        super().__init__()
        if z_dim < 0 or w_dim < 1 or num_classes < 0 or num_layers < 1:
            raise ValueError(f"MappingNetwork: bad sizes z_dim={z_dim}, w_dim={w_dim}, num_classes={num_classes}, "
                             f"num_layers={num_layers}")
        if z_dim == 0 and num_classes == 0:
            raise ValueError("MappingNetwork needs a latent (z_dim > 0) or classes (num_classes > 0)")
        if num_ws is not None and num_ws < 1:
            raise ValueError(f"MappingNetwork: num_ws must be >= 1 or None, got {num_ws}")
        self.z_dim, self.w_dim, self.num_ws, self.num_classes = z_dim, w_dim, num_ws, num_classes
        self.w_avg_beta = w_avg_beta
        embed_dim = (w_dim if embed_dim is None else embed_dim) if num_classes else 0
        self.embed = EqualizedLinear(num_classes, embed_dim) if num_classes else None
        dims = [z_dim + embed_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[EqualizedLinear(i, o, lr_multiplier=lr_multiplier, activation="lrelu")
                                      for i, o in zip(dims[:-1], dims[1:])])
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(max(num_classes, 1), w_dim))

    def _check_inputs(self, z: Optional[Tensor], c: Optional[Tensor]) -> int:
        B = None
        if self.z_dim:
            if z is None or z.dim() != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"mapping wants z as [B, {self.z_dim}], got {None if z is None else tuple(z.shape)}")
            B = z.shape[0]
        if self.num_classes:
            if c is None:
                raise ValueError(f"this generator is conditional ({self.num_classes} classes): pass class labels c")
            if c.dtype not in (torch.int64, torch.int32) or c.dim() != 1 or (B is not None and c.shape[0] != B):
                raise ValueError(f"class labels c must be integer [B] = [{B}], got {c.dtype} {tuple(c.shape)}")
            B = c.shape[0]
        elif c is not None:
            raise ValueError("this generator is unconditional (num_classes=0); pass c=None")
        return B

    def forward(self, z: Optional[Tensor], c: Optional[Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, update_w_avg: Optional[bool] = None) -> Tensor:
        """z [B, z_dim], c [B] -> ws [B, num_ws, w_dim] (w [B, w_dim] when num_ws is None)."""
        self._check_inputs(z, c)
        dtype, parts = self.layers[0].weight.dtype, []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.to(dtype)))
        if self.num_classes:
            parts.append(normalize_2nd_moment(self.embed(F.one_hot(c.long(), self.num_classes).to(dtype))))
        w = self.layers(torch.cat(parts, dim=1))
        if self.w_avg_beta is not None and (self.training if update_w_avg is None else update_w_avg):
            self._update_w_avg(w.detach(), c)
        if self.num_ws is None:
            return w
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.truncate(ws, c, truncation_psi, truncation_cutoff)

    @torch.no_grad()
    def _update_w_avg(self, w: Tensor, c: Optional[Tensor]) -> None:
        if not self.num_classes:
            self.w_avg.copy_(w.float().mean(0, keepdim=True).lerp(self.w_avg, self.w_avg_beta))
            return
        # Per-class means of this batch; classes absent from it keep their average.
        sums = torch.zeros_like(self.w_avg).index_add_(0, c.long(), w.float())
        counts = torch.bincount(c.long(), minlength=self.num_classes).to(sums)[:, None]
        means = sums / counts.clamp(min=1)
        self.w_avg.copy_(torch.where(counts > 0, means.lerp(self.w_avg, self.w_avg_beta), self.w_avg))

    def truncate(self, ws: Tensor, c: Optional[Tensor], psi: float = 1.0, cutoff: Optional[int] = None) -> Tensor:
        """w' = w_avg[c] + psi (w - w_avg[c]) for the first ``cutoff`` ws (all when None)."""
        if psi == 1:
            return ws
        if self.w_avg_beta is None:
            raise ValueError("truncation needs w_avg tracking (w_avg_beta is None)")
        avg = self.w_avg[c.long()] if self.num_classes else self.w_avg.expand(ws.shape[0], -1)
        layer = torch.arange(ws.shape[1], device=ws.device)[None, :, None]
        truncated = avg.unsqueeze(1).to(ws.dtype).lerp(ws, psi)
        return torch.where(layer < (ws.shape[1] if cutoff is None else cutoff), truncated, ws)

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, num_classes={self.num_classes}, "
                f"w_avg_beta={self.w_avg_beta}")


# ----------------------------------------------------------------------------- modulated convolution

def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, padding: int = 0,
                     fused: bool = False, up: bool = False) -> Tensor:
    """StyleGAN2 modulated convolution: W'_b = W * s_b (per input channel), then W'' = W' / ||W'||.

    x [B, I, H, W], weight [O, I, k, k], styles [B, I]. ``fused=True`` convolves each sample with
    its own W''_b as one grouped convolution (cheap at inference); ``fused=False`` scales the
    activations instead — x * s, one shared conv, output * demodulation coefficient — whose
    backward is a plain convolution's (training). The two are the same function.
    ``up=True`` convolves x with its zeros inserted (x at even positions, 2H - 1 long) with full
    padding, as a stride-2 transposed convolution that skips the zeros: [B, O, 2H + k - 2, ...]
    (``padding`` ignored).
    """
    B, I = x.shape[:2]
    O = weight.shape[0]
    if weight.dim() != 4 or weight.shape[1] != I or styles.shape != (B, I):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)} and styles "
                         f"{tuple(styles.shape)} do not fit (want weight [O, {I}, k, k], styles [{B}, {I}])")
    if fused:
        w = weight.unsqueeze(0) * styles.reshape(B, 1, I, 1, 1)          # W'_b  [B, O, I, k, k]
        if demodulate:
            w = w * (w.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
        if up:  # a transposed convolution with the flipped kernel is the correlation of the zero-inserted x
            w_t = w.transpose(1, 2).flip((3, 4)).reshape(B * I, O, *weight.shape[2:])
            out = F.conv_transpose2d(x.reshape(1, B * I, *x.shape[2:]), w_t, stride=2, groups=B)
        else:
            out = F.conv2d(x.reshape(1, B * I, *x.shape[2:]), w.reshape(B * O, I, *weight.shape[2:]),
                           padding=padding, groups=B)
        return out.reshape(B, O, *out.shape[2:])
    x = x * styles.reshape(B, I, 1, 1)
    if up:
        out = F.conv_transpose2d(x, weight.transpose(0, 1).flip((2, 3)), stride=2)
    else:
        out = F.conv2d(x, weight, padding=padding)
    if not demodulate:
        return out
    # ||W'_b,o||^2 = sum_i s_bi^2 sum_k W_oik^2: a [B, I] x [I, O] product, no [B, O, I, k, k] tensor.
    dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()
    return out * dcoefs.reshape(B, O, 1, 1)


class ModulatedConv2d(nn.Module):
    """Modulated (and demodulated) k x k convolution; styles from w by an affine layer with bias 1."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 3,
                 demodulate: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ModulatedConv2d wants an odd kernel size, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate = demodulate
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        # Without demodulation the equalized-lr gain keeps the output scale (ToRGB).
        self.weight_gain = 1.0 if demodulate else 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor, w: Tensor, fused: Optional[bool] = None, padding: Optional[int] = None,
                up: bool = False) -> Tensor:
        """x [B, in, H, W], w [B, w_dim] -> [B, out, H, W] (``padding`` default: same size; ``up``: modulated_conv2d's).

        ``fused=None`` picks the grouped form for inference on CUDA (no autograd) and the
        shared-weight form otherwise; CPU grouped convolutions are slower than the shared one.
        """
        styles = self.affine(w) * self.weight_gain
        fused = (not torch.is_grad_enabled() and x.is_cuda) if fused is None else fused
        return modulated_conv2d(x, self.weight.to(x.dtype), styles.to(x.dtype), demodulate=self.demodulate,
                                padding=self.kernel_size // 2 if padding is None else padding, fused=fused, up=up)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, demodulate={self.demodulate}"


class StyledConv2d(nn.Module):
    """One StyleGAN2 synthesis layer: [x2 bilinear up] -> modulated conv -> noise -> bias -> lrelu.

    ``w_index`` (set by the synthesis network) names the entry of ws this layer reads.
    ``resample``: ``bilinear`` (edges replicated) or ``fir`` (StyleGAN2's upfirdn2d: zero
    insertion and the [1, 3, 3, 1] filter with zero padding, padded once before the filter so
    the convolution sees the filter's full support, as the official up=2 convolution does).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: bool = False, w_index: int = 0, resample: str = "bilinear") -> None:
        super().__init__()
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        self.up, self.resolution, self.w_index, self.resample = up, resolution, w_index, resample
        if up and resample == "fir":
            self.register_buffer("resample_kernel", fir_kernel(), persistent=False)
        self.conv = ModulatedConv2d(in_channels, out_channels, w_dim, kernel_size)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @property
    def affine(self) -> EqualizedLinear:
        """w -> styles of this layer (every style-reading module has one)."""
        return self.conv.affine

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random", fused: Optional[bool] = None) -> Tensor:
        """x [B, in, r, r] ([B, in, r/2, r/2] with ``up``), w [B, w_dim] -> [B, out, r, r]."""
        if self.up and self.resample == "fir":
            # The official order: the stride-2 transposed convolution (it skips the inserted zeros, a
            # quarter of the multiply-adds of a convolution at 2r), then the [1, 3, 3, 1] filter (gain 4).
            # Both are linear and shift-invariant, so this equals filtering the zero-inserted x first,
            # zero padded, then convolving; the padding trims the k + 2 border samples to r.
            x = self.conv(x, w, fused=fused, up=True)
            x = blur2d(x, self.resample_kernel * 4, padding=2 - self.conv.kernel_size // 2)
        else:
            # Bilinear x2 = zero insertion + StyleGAN2's [1, 3, 3, 1] filter (up to the borders).
            x = self.conv(upsample2d(x) if self.up else x, w, fused=fused)
        x = self.noise(x, noise_mode)
        return leaky_relu_gain(x + self.bias.to(x.dtype).reshape(1, -1, 1, 1))


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to image channels, no demodulation, plus bias (skip architecture)."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, kernel_size: int = 1,
                 w_index: int = 0) -> None:
        super().__init__()
        self.w_index = w_index
        self.conv = ModulatedConv2d(in_channels, img_channels, w_dim, kernel_size, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    @property
    def affine(self) -> EqualizedLinear:
        """w -> styles of this layer."""
        return self.conv.affine

    def forward(self, x: Tensor, w: Tensor, fused: Optional[bool] = None) -> Tensor:
        """x [B, in, H, W], w [B, w_dim] -> [B, img_channels, H, W]."""
        return self.conv(x, w, fused=fused) + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


# ----------------------------------------------------------------------------- token modulation

class _StyleAffine(nn.Module):
    """w -> (scale, shift) per channel, the scale's bias initialized to ``scale_init`` (1) and the shift's to 0."""

    def __init__(self, dim: int, w_dim: int, scale_init: float = 1.0) -> None:
        super().__init__()
        self.scale = EqualizedLinear(w_dim, dim, bias_init=scale_init)
        self.shift = EqualizedLinear(w_dim, dim, bias_init=0.0)

    def forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        return self.scale(w).unsqueeze(1), self.shift(w).unsqueeze(1)


def _check_tokens(x: Tensor, w: Tensor, dim: int, w_dim: int, who: str) -> None:
    if x.dim() != 3 or x.shape[-1] != dim or w.shape != (x.shape[0], w_dim):
        raise ValueError(f"{who} wants x [B, N, {dim}] and w [B, {w_dim}], got {tuple(x.shape)} and {tuple(w.shape)}")


class TokenAdaIN(nn.Module):
    """AdaIN on tokens (StyleSwin): normalize each channel over the tokens of a sample, then scale(w) x + shift(w).

    ``scale_init``: initial bias of the scale (1 here; StyleSwin's code starts it at 0).
    """

    def __init__(self, dim: int, w_dim: int, eps: float = 1e-5, scale_init: float = 1.0) -> None:
        super().__init__()
        self.dim, self.w_dim, self.eps = dim, w_dim, eps
        self.style = _StyleAffine(dim, w_dim, scale_init)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x [B, N, dim], w [B, w_dim] -> [B, N, dim]."""
        _check_tokens(x, w, self.dim, self.w_dim, "TokenAdaIN")
        x = F.instance_norm(x.transpose(1, 2), eps=self.eps).transpose(1, 2)
        scale, shift = self.style(w)
        return x * scale.to(x.dtype) + shift.to(x.dtype)


class SelfModulatedLayerNorm(nn.Module):
    """Self-modulated LayerNorm (ViTGAN): LayerNorm over each token's channels with gain and bias from w."""

    def __init__(self, dim: int, w_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.w_dim, self.eps = dim, w_dim, eps
        self.style = _StyleAffine(dim, w_dim)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x [B, N, dim], w [B, w_dim] -> [B, N, dim]."""
        _check_tokens(x, w, self.dim, self.w_dim, "SelfModulatedLayerNorm")
        scale, shift = self.style(w)
        return F.layer_norm(x, (self.dim,), eps=self.eps) * scale.to(x.dtype) + shift.to(x.dtype)


class StyleTokenAttention(nn.Module):
    """Style injection by cross-attention (TokenGAN-style): each content token retrieves its own style.

    The layer's w becomes ``num_style_tokens`` style tokens [B, T, dim] (one learned affine map,
    bias 1, so styles start near 1). Content tokens are normalized (LayerNorm without affine, in
    place of AdaIN's instance norm); queries are the normalized tokens plus a learned position,
    projected; keys are learned, one per style token; values are the style tokens. The output is
    ``LayerNorm(x) * style_per_token``. Keys do not depend on w and values are not projected, so
    this calls attention.py's kernel dispatcher ``scaled_dot_product`` (flash / sdpa / the
    twice-differentiable path under ``double_backward_safe``) rather than ``Attention``, whose
    keys and values are both projections of one context.
    """

    def __init__(self, dim: int, w_dim: int, num_tokens: int, num_style_tokens: int = 8, num_heads: int = 1,
                 eps: float = 1e-5, kernel: str = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"StyleTokenAttention: dim {dim} is not divisible by num_heads {num_heads}")
        if num_style_tokens < 1 or num_tokens < 1:
            raise ValueError(f"StyleTokenAttention needs num_tokens >= 1 and num_style_tokens >= 1, "
                             f"got {num_tokens}, {num_style_tokens}")
        self.dim, self.w_dim, self.num_heads, self.eps = dim, w_dim, num_heads, eps
        self.kernel = check_kernel(kernel)
        self.num_tokens, self.num_style_tokens = num_tokens, num_style_tokens
        self.affine = EqualizedLinear(w_dim, num_style_tokens * dim, bias_init=1.0)  # w -> style tokens
        self.pos = nn.Parameter(torch.zeros(num_tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.to_q = EqualizedLinear(dim, dim, bias=False)
        self.keys = nn.Parameter(torch.randn(num_style_tokens, dim))

    def style_tokens(self, w: Tensor) -> Tensor:
        """w [B, w_dim] -> style tokens [B, num_style_tokens, dim]."""
        return self.affine(w).reshape(w.shape[0], self.num_style_tokens, self.dim)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x [B, N, dim], w [B, w_dim] -> LayerNorm(x) * style retrieved per token, [B, N, dim]."""
        _check_tokens(x, w, self.dim, self.w_dim, "StyleTokenAttention")
        if x.shape[1] != self.num_tokens:
            raise ValueError(f"StyleTokenAttention was built for {self.num_tokens} tokens, got {x.shape[1]}")
        h = F.layer_norm(x, (self.dim,), eps=self.eps)
        q = rearrange(self.to_q(h + self.pos.to(h.dtype)), "b n (h d) -> b h n d", h=self.num_heads)
        k = rearrange(self.keys.to(h.dtype), "t (h d) -> h t d", h=self.num_heads).expand(x.shape[0], -1, -1, -1)
        v = rearrange(self.style_tokens(w).to(h.dtype), "b t (h d) -> b h t d", h=self.num_heads)
        style = rearrange(scaled_dot_product(q, k, v, kernel=self.kernel), "b h n d -> b n (h d)")
        return h * style

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, w_dim={self.w_dim}, num_tokens={self.num_tokens}, "
                f"num_style_tokens={self.num_style_tokens}, num_heads={self.num_heads}")


# ----------------------------------------------------------------------------- style mixing

def draw_crossover(num_ws: int, prob: float, device: Optional[torch.device] = None,
                   crossover: Optional[int] = None) -> Tensor:
    """One crossover index per batch: with probability ``prob`` the given ``crossover`` (default: uniform
    in [1, num_ws)), else num_ws (no mixing).

    Returned as a 0-d int64 tensor on ``device`` so that no host synchronization is needed.
    """
    if not 0 <= prob <= 1:
        raise ValueError(f"style mixing probability must be in [0, 1], got {prob}")
    if crossover is not None and not 0 <= crossover <= num_ws:
        raise ValueError(f"style mixing crossover must be in [0, {num_ws}], got {crossover}")
    if crossover is None and num_ws < 2:
        return torch.full((), num_ws, dtype=torch.int64, device=device)
    crossover = (torch.randint(1, num_ws, (), device=device) if crossover is None
                 else torch.full((), crossover, dtype=torch.int64, device=device))
    return torch.where(torch.rand((), device=device) < prob, crossover, torch.full_like(crossover, num_ws))


def mix_styles(ws: Tensor, ws_mix: Tensor, crossover: int | Tensor) -> Tensor:
    """ws [B, num_ws, w_dim] with entries ``crossover`` and after taken from ``ws_mix``."""
    if ws.shape != ws_mix.shape:
        raise ValueError(f"mix_styles: ws {tuple(ws.shape)} and ws_mix {tuple(ws_mix.shape)} differ")
    layer = torch.arange(ws.shape[1], device=ws.device)[None, :, None]
    crossover = torch.as_tensor(crossover, device=ws.device)
    return torch.where(layer < crossover, ws, ws_mix)


# ----------------------------------------------------------------------------- generator base class

def is_style_generator(G: Callable) -> bool:
    """True for generators with the style contract (``G.mapping``/``G.synthesis``), also inside a DDP wrapper:
    truncation, style mixing and path length act on their ws."""
    plain = getattr(G, "module", G)  # the module inside a DistributedDataParallel (or similar) wrapper
    return hasattr(plain, "mapping") and hasattr(plain, "synthesis")


class StyleGenerator(nn.Module):
    """Base of style-based generators: ``G(z, c) = synthesis(mapping(z, c))``.

    A subclass builds its synthesis network, calls ``super().__init__(...)`` with that network's
    ``num_ws`` and then assigns ``self.synthesis`` — a module or a method taking
    ``(ws [B, num_ws, w_dim], noise_mode="random")`` and returning images [B, C, H, W] in [-1, 1]
    (bounded by the trained generator, not clamped). Attributes of the generator contract:
    ``z_dim``, ``w_dim``, ``num_ws``, ``num_classes``, ``img_resolution``, ``img_channels``.
    """

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_classes: int, img_resolution: int,
                 img_channels: int, mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.995, embed_dim: Optional[int] = None) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        self.num_classes, self.img_resolution, self.img_channels = num_classes, img_resolution, img_channels
        self.mapping = MappingNetwork(z_dim, w_dim, num_ws, num_classes, num_layers=mapping_layers,
                                      embed_dim=embed_dim, lr_multiplier=mapping_lr_multiplier,
                                      w_avg_beta=w_avg_beta)

    def forward(self, z: Tensor, c: Optional[Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, noise_mode: str = "random", style_mixing_prob: float = 0.0,
                style_mixing_crossover: Optional[int] = None, return_ws: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """z [B, z_dim], c [B] -> images [B, C, H, W] (and the ws that made them, with ``return_ws``).

        With ``style_mixing_prob`` p > 0, with probability p (one draw per batch) the ws from
        ``style_mixing_crossover`` (default: drawn uniformly in [1, num_ws)) on come from a second
        z of the same class; the second mapping does not update w_avg.
        """
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        if style_mixing_prob > 0:
            ws_mix = self.mapping(torch.randn_like(z), c, truncation_psi=truncation_psi,
                                  truncation_cutoff=truncation_cutoff, update_w_avg=False)
            ws = mix_styles(ws, ws_mix, draw_crossover(self.num_ws, style_mixing_prob, ws.device,
                                                       style_mixing_crossover))
        images = self.synthesis(ws, noise_mode=noise_mode)
        return (images, ws) if return_ws else images
