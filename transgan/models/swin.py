"""Swin-GAN: the style-based Swin transformer generator of StyleSwin (Zhang et al., CVPR 2022).

Generator, top to bottom as in the paper (section 3; REFERENCE.md section 3)::

    z (+ class) --mapping (nn/style.py)--> ws [B, 2 * stages, w_dim]      one w per block
    x = learned constant, 4 x 4 tokens of C channels
    for each stage r = 4, 8, ..., R:
        2 x StyleSwinBlock(x, w):        x = x + DoubleWindowAttention(AdaIN(x, w))
                                         x = x + MLP(AdaIN(x, w))
        rgb = upsample(rgb) + to_rgb(x)                                   skip to RGB
        x = Linear(LayerNorm(bilinear_x2(x))) + alpha * SPE               all but the last stage

``to_rgb=upsampled`` moves each to-RGB after the upsampling, as StyleSwin's code does (none at
4x4, two at full resolution), and ``resample=fir`` upsamples the skip images with StyleGAN2's
[1, 3, 3, 1] filter and zero padding (defaults: before the upsampling, bilinear).

Double attention splits the heads (and channels) in half: one half attends inside regular
``window`` x ``window`` windows, the other inside windows shifted by ``window / 2`` (Swin's
cyclic roll with its mask); both halves share the qkv and output projections and have their
own relative position bias. While the map fits one window, attention is full (no shift).

Discriminator: StyleGAN2's (``models/stylegan2.py``, imported), optionally on the Haar
wavelet coefficients of the image (``stylegan2_wavelet``), as StyleSwin does against the
blocking artifacts of window attention at high resolution.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from einops import rearrange
from timm.layers import Mlp
from torch import Tensor

from transgan.errors import ConfigError
from transgan.models.common import check_resolution, stage_channels
from transgan.models.stylegan2 import StyleGAN2Discriminator
from transgan.nn.attention import Attention
from transgan.nn.layers import (RESAMPLE_MODES, apply_spectral_norm, check_class_labels, checkpointed, downsample2d,
                                EqualizedConv2d, EqualizedLinear, fir_kernel, init_linear_like_vit, leaky_relu_gain,
                                MinibatchStd, upsample2d, upsample2d_fir)
from transgan.nn.style import StyleGenerator, TokenAdaIN
from transgan.nn.windows import RelativePositionBias, shifted_window_mask, windowed_attention

TO_RGB_PLACES = ("stage", "upsampled")  # each stage's output before upsampling | after (StyleSwin's code)

__all__ = [
    "sinusoidal_position_encoding", "haar_dwt", "haar_idwt", "DoubleWindowAttention", "TokenUpsample",
    "SHIFT_MASKS", "StyleSwinBlock", "SwinStage", "SwinGenerator", "WaveletDiscriminator", "stage_heads",
]


# ----------------------------------------------------------------------------- positional encoding

def sinusoidal_position_encoding(height: int, width: int, dim: int, device: torch.device | str | None = None) -> Tensor:
    """StyleSwin's 2-D sinusoidal positional encoding (SPE), tokens [height * width, dim] row-major.

    The first ``dim/2`` channels encode the column x = 1..width, the last ``dim/2`` the row
    y = 1..height; each half is [sin(p f_0..f_{k-1}), cos(p f_0..f_{k-1})] with k = dim/4 and
    f_i = 10000^(-i / (k - 1)). (timm's sin-cos embedding counts from 0 and spaces the
    frequencies by i / k, so it is not this encoding.)
    """
    if dim % 4 or dim < 8:
        raise ValueError(f"the 2-D sinusoidal encoding needs a channel count divisible by 4 and >= 8, got {dim}")
    k = dim // 4
    freqs = torch.exp(torch.arange(k, dtype=torch.float32, device=device) * (-math.log(10000.0) / (k - 1)))

    def axis(n: int) -> Tensor:  # [n, dim/2]; positions start at 1 (0 was fairseq's padding index)
        angles = torch.arange(1, n + 1, dtype=torch.float32, device=device)[:, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    cols = axis(width)[None, :, :].expand(height, width, dim // 2)
    rows = axis(height)[:, None, :].expand(height, width, dim // 2)
    return torch.cat([cols, rows], dim=-1).reshape(height * width, dim)


# ----------------------------------------------------------------------------- Haar wavelets

# Orthonormal 2-D Haar analysis on each 2x2 block (a b / c d): rows give LL, LH, HL, HH. The
# matrix is symmetric and its own inverse, so synthesis uses it again.
_HAAR = 0.5 * torch.tensor([[1.0, 1.0, 1.0, 1.0],     # LL: average
                            [1.0, 1.0, -1.0, -1.0],   # LH: top minus bottom (horizontal edges)
                            [1.0, -1.0, 1.0, -1.0],   # HL: left minus right (vertical edges)
                            [1.0, -1.0, -1.0, 1.0]])  # HH: diagonal


def haar_dwt(x: Tensor, haar: Tensor = _HAAR) -> Tensor:
    """One level of the 2-D Haar transform: [B, C, H, W] -> [B, 4C, H/2, W/2] as (LL, LH, HL, HH) x C.

    Modules pass ``haar`` as a buffer already on the device (a copy per call would stall the host).
    """
    if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"haar_dwt wants [B, C, H, W] with even H and W, got {tuple(x.shape)}")
    blocks = rearrange(x, "b c (h p) (w q) -> b c h w (p q)", p=2, q=2)
    bands = torch.einsum("kj,bchwj->bkchw", haar.to(x), blocks)
    return rearrange(bands, "b k c h w -> b (k c) h w")


def haar_idwt(y: Tensor) -> Tensor:
    """Inverse of :func:`haar_dwt`: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    if y.dim() != 4 or y.shape[1] % 4:
        raise ValueError(f"haar_idwt wants [B, 4C, H, W], got {tuple(y.shape)}")
    bands = rearrange(y, "b (k c) h w -> b k c h w", k=4)
    blocks = torch.einsum("kj,bkchw->bchwj", _HAAR.to(y), bands)
    return rearrange(blocks, "b c h w (p q) -> b c (h p) (w q)", p=2, q=2)


# ----------------------------------------------------------------------------- double attention

SHIFT_MASKS = {"exact": -math.inf, "swin": -100.0}  # shift_mask: the logit added across a rolled border


class DoubleWindowAttention(nn.Module):
    """StyleSwin's double attention on a ``resolution`` x ``resolution`` map of tokens [B, N, C].

    Heads 0 .. h/2-1 (channels 0 .. C/2-1 of q, k, v) attend inside regular ``window`` x
    ``window`` windows; heads h/2 .. h-1 inside windows shifted by ``window // 2`` (cyclic roll
    by -shift, Swin's mask against tokens the roll made neighbours, roll back). One qkv and one
    output projection serve both halves; one relative position bias table holds both halves'
    heads. A map no larger than ``window`` is a single window: full attention, no shift.
    """

    def __init__(self, dim: int, num_heads: int, resolution: int, window: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, kernel: str = "auto", shift_mask: str = "exact") -> None:
        super().__init__()
        if shift_mask not in SHIFT_MASKS:
            raise ConfigError(f"shift_mask must be one of {list(SHIFT_MASKS)}, got {shift_mask!r}")
        if num_heads < 2 or num_heads % 2:
            raise ValueError(f"double attention splits the heads in two halves: num_heads must be even, "
                             f"got {num_heads}")
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.resolution, self.num_heads = resolution, num_heads
        self.window = min(window, resolution)
        if resolution % self.window:
            raise ValueError(f"a {resolution}x{resolution} map is not divisible into "
                             f"{self.window}x{self.window} windows")
        self.shift = self.window // 2 if resolution > self.window else 0
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, kernel=kernel)
        self.rel_pos = RelativePositionBias(self.window, num_heads)
        if self.shift:
            mask = shifted_window_mask(resolution, resolution, self.window, self.shift, fill=SHIFT_MASKS[shift_mask])
            self.register_buffer("shift_mask", mask, persistent=False)  # [nW, n, n], 0 / -inf (or -100)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, window={self.window}, shift={self.shift}"

    def head_outputs(self, x: Tensor) -> Tensor:
        """Tokens [B, N, C] -> the heads' outputs before the output projection, [B, N, C].

        Channels 0 .. C/2-1 come from the regular windows, C/2 .. C-1 from the shifted ones.
        """
        R, h = self.resolution, self.num_heads
        if x.dim() != 3 or x.shape[1] != R * R:
            raise ValueError(f"DoubleWindowAttention({R}x{R}) wants tokens [B, {R * R}, C], got {tuple(x.shape)}")
        bias = self.rel_pos()                                # [h, n, n]
        q, k, v = self.attn.project_qkv(x)                   # [B, h, N, d]
        if not self.shift:                                   # one window: full attention for all heads
            return rearrange(self.attn.attend(q, k, v, bias=bias), "b h n d -> b n (h d)")
        half = h // 2
        regular = self._windowed([t[:, :half] for t in (q, k, v)], bias[:half], shift=0)
        shifted = self._windowed([t[:, half:] for t in (q, k, v)], bias[half:], shift=self.shift)
        return torch.cat([regular, shifted], dim=-1)

    def _windowed(self, qkv: list[Tensor], bias: Tensor, shift: int) -> Tensor:
        """Attention of some heads inside (shifted) windows: q, k, v [B, h', N, d] -> [B, N, h' d]."""
        R = self.resolution
        q, k, v = (t.unflatten(2, (R, R)) for t in qkv)
        out = windowed_attention(self.attn.attend, q, k, v, self.window, shift, bias,
                                 self.shift_mask if shift else None)
        return rearrange(out, "b h y x d -> b (y x) (h d)")

    def forward(self, x: Tensor) -> Tensor:
        """Tokens [B, N, C] -> [B, N, C]."""
        return self.attn.proj(self.head_outputs(x))


# ----------------------------------------------------------------------------- upsampling

class TokenUpsample(nn.Module):
    """Between stages: bilinear x2, LayerNorm, Linear channel reduction, then + alpha * SPE.

    ``alpha`` is learned and starts at 0, as in StyleSwin's code. Tokens [B, r*r, dim] ->
    [B, 4 r*r, out_dim].
    """

    def __init__(self, resolution: int, dim: int, out_dim: int, spe: bool = True) -> None:
        super().__init__()
        self.resolution, self.dim, self.out_dim = resolution, dim, out_dim
        self.norm = nn.LayerNorm(dim)
        self.reduction = nn.Linear(dim, out_dim, bias=False)
        if spe:
            self.spe_gain = nn.Parameter(torch.zeros(()))
            self.register_buffer("spe", sinusoidal_position_encoding(2 * resolution, 2 * resolution, out_dim),
                                 persistent=False)
        else:
            self.spe_gain = None

    def extra_repr(self) -> str:
        return (f"{self.resolution} -> {2 * self.resolution}, {self.dim} -> {self.out_dim}, "
                f"spe={self.spe_gain is not None}")

    def forward(self, x: Tensor) -> Tensor:
        """Tokens [B, r*r, dim] -> [B, (2r)^2, out_dim]."""
        r = self.resolution
        x = rearrange(x, "b (y x) c -> b c y x", y=r)
        x = rearrange(upsample2d(x), "b c y x -> b (y x) c")
        x = self.reduction(self.norm(x))
        if self.spe_gain is not None:
            x = x + self.spe_gain * self.spe.to(x.dtype)
        return x


# ----------------------------------------------------------------------------- generator

class StyleSwinBlock(nn.Module):
    """One StyleSwin block, steered by its own w: AdaIN -> double attention, AdaIN -> MLP, both residual."""

    def __init__(self, dim: int, num_heads: int, resolution: int, window: int, w_dim: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, kernel: str = "auto",
                 adain_scale_init: float = 1.0, shift_mask: str = "exact") -> None:
        super().__init__()
        self.norm1 = TokenAdaIN(dim, w_dim, scale_init=adain_scale_init)
        self.attn = DoubleWindowAttention(dim, num_heads, resolution, window, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                          kernel=kernel, shift_mask=shift_mask)
        self.norm2 = TokenAdaIN(dim, w_dim, scale_init=adain_scale_init)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """Tokens [B, N, dim], w [B, w_dim] -> [B, N, dim]."""
        x = x + self.attn(self.norm1(x, w))
        return x + self.mlp(self.norm2(x, w))


def stage_heads(channels: int, head_dim: int, min_heads: int) -> int:
    """StyleSwin's head count max(C / head_dim, min_heads); even, so the heads split in two halves."""
    heads = max(channels // head_dim, min_heads)
    if heads % 2 or channels % heads:
        raise ConfigError(f"{channels} channels give {heads} attention heads (max(C // head_dim={head_dim}, "
                          f"min_heads={min_heads})): need an even count that divides the channels")
    return heads


class SwinStage(nn.Module):
    """Resolution r: two StyleSwin blocks, a to-RGB of the result, and the upsampling to 2r (all but the last)."""

    def __init__(self, resolution: int, dim: int, out_dim: Optional[int], num_heads: int, window: int, w_dim: int,
                 img_channels: int, depth: int = 2, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 spe: bool = True, kernel: str = "auto", adain_scale_init: float = 1.0,
                 rgb_dim: Optional[int] = None, shift_mask: str = "exact") -> None:
        super().__init__()
        self.resolution = resolution
        self.blocks = nn.ModuleList([StyleSwinBlock(dim, num_heads, resolution, window, w_dim, mlp_ratio=mlp_ratio,
                                                    qkv_bias=qkv_bias, kernel=kernel, adain_scale_init=adain_scale_init,
                                                    shift_mask=shift_mask)
                                     for _ in range(depth)])
        self.to_rgb = nn.Linear(rgb_dim or dim, img_channels)  # unmodulated, as in StyleSwin
        # StyleSwin's ToRGB has a bias of its own besides its conv's; kept with its layout so the
        # parameters (and Adam's steps on them) are the official ones.
        self.rgb_bias = nn.Parameter(torch.zeros(img_channels)) if rgb_dim is not None else None
        self.upsample = TokenUpsample(resolution, dim, out_dim, spe=spe) if out_dim is not None else None


class SwinGenerator(StyleGenerator):
    """StyleSwin generator: mapping network (nn/style.py) + style-based Swin synthesis (module docstring).

    ``G(z, c)``, ``G.mapping(z, c, truncation_psi)`` and ``G.synthesis(ws)`` follow the style
    contract, with one w per block (``num_ws = 2 log2(R) - 2``), so truncation, style mixing and
    the path-length regularizer of the generic code apply unchanged. Channels at resolution r
    are min(channel_base / r, channel_max) (StyleSwin 256: 32768 / 512); heads are
    max(C / head_dim, min_heads). ``gradient_checkpointing`` recomputes each block in backward.
    ``adain_scale_init``: initial bias of every AdaIN scale (1 here; 0 in StyleSwin's code).
    ``shift_mask``: what the shifted windows add to the logits of token pairs the cyclic roll made
    neighbours: ``exact`` -inf (never attended), ``swin`` -100 (Swin's and StyleSwin's code; with
    logits in the hundreds, such pairs are attended, so official weights need it).
    """

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, z_dim: int = 512, w_dim: int = 512,
                 mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01, w_avg_beta: float = 0.995,
                 embed_dim: Optional[int] = None, channel_base: int = 32768, channel_max: int = 512, window: int = 8,
                 head_dim: int = 32, min_heads: int = 4, depth: int = 2, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, spe: bool = True, gradient_checkpointing: bool = False,
                 attention_kernel: Optional[str] = None, adain_scale_init: float = 1.0, to_rgb: str = "stage",
                 resample: str = "bilinear", shift_mask: str = "exact") -> None:
        check_resolution(img_resolution, low=8)
        if to_rgb not in TO_RGB_PLACES or resample not in RESAMPLE_MODES:
            raise ConfigError(f"swin_gan: to_rgb must be one of {list(TO_RGB_PLACES)} and resample one of "
                              f"{list(RESAMPLE_MODES)}, got {to_rgb!r} and {resample!r}")
        if depth < 1 or window < 2 or window & (window - 1):
            raise ConfigError(f"swin_gan needs depth >= 1 and a power-of-two window >= 2, got depth={depth}, "
                              f"window={window}")
        resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = [stage_channels(r, channel_base, channel_max) for r in resolutions]
        for r, c in zip(resolutions[1:], channels[1:]):
            if c % 4 or c < 8:
                raise ConfigError(f"swin_gan: {c} channels at {r}x{r}; the positional encoding needs a multiple "
                                  "of 4, at least 8 (raise channel_base)")
        super().__init__(z_dim, w_dim, depth * len(resolutions), num_classes, img_resolution, img_channels,
                         mapping_layers=mapping_layers, mapping_lr_multiplier=mapping_lr_multiplier,
                         w_avg_beta=w_avg_beta, embed_dim=embed_dim)
        self.depth, self.gradient_checkpointing = depth, bool(gradient_checkpointing)
        self.attention_kernel = attention_kernel or "auto"  # checked by the attention layers
        self.to_rgb_place, self.resample = to_rgb, resample
        if resample == "fir":
            self.register_buffer("resample_kernel", fir_kernel(), persistent=False)
        self.const = nn.Parameter(torch.randn(16, channels[0]))  # 4 x 4 tokens
        self.stages = nn.ModuleList([
            SwinStage(r, c, channels[i + 1] if i + 1 < len(resolutions) else None,
                      stage_heads(c, head_dim, min_heads), window, w_dim, img_channels, depth=depth,
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, spe=spe, kernel=self.attention_kernel,
                      adain_scale_init=adain_scale_init, shift_mask=shift_mask,
                      rgb_dim=(channels[i + 1] if i + 1 < len(resolutions) else c) if to_rgb == "upsampled" else None)
            for i, (r, c) in enumerate(zip(resolutions, channels))])
        # StyleSwin's initialization of the synthesis layers (the mapping and AdaIN layers keep theirs).
        self.stages.apply(init_linear_like_vit)

    def synthesis(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        """ws [B, num_ws, w_dim] -> images [B, img_channels, R, R]. StyleSwin has no noise: ``noise_mode`` is unused."""
        if ws.dim() != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"swin_gan synthesis wants ws [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1)
        ws_per_block = iter(ws.unbind(dim=1))
        img = None
        for stage in self.stages:
            for block in stage.blocks:
                x = checkpointed(block, x, next(ws_per_block), enabled=self.gradient_checkpointing)
            r = stage.resolution
            if self.to_rgb_place == "upsampled" and stage.upsample is not None:
                x, r = stage.upsample(x), 2 * r
            rgb = stage.to_rgb(x) if stage.rgb_bias is None else stage.to_rgb(x) + stage.rgb_bias.to(x.dtype)
            rgb = rearrange(rgb, "b (y x) c -> b c y x", y=r)
            img = rgb if img is None else (self._upsample_image(img) if img.shape[-1] < r else img) + rgb
            if self.to_rgb_place == "stage" and stage.upsample is not None:
                x = stage.upsample(x)
        return img

    def _upsample_image(self, img: Tensor) -> Tensor:
        """x2 upsampling of the skip image: bilinear, or StyleGAN2's FIR with zero padding."""
        return upsample2d_fir(img, self.resample_kernel) if self.resample == "fir" else upsample2d(img)


# ----------------------------------------------------------------------------- discriminator

class WaveletDiscriminator(StyleGAN2Discriminator):
    """StyleGAN2's discriminator on Haar wavelet coefficients, fed at every scale (StyleSwin).

    The image [B, C, R, R] enters as its wavelet bands [B, 4C, R/2, R/2]; after each residual
    block, the bands of the image downsampled to that block's output size are added through a
    1x1 conv (StyleSwin's wavelet "from RGB" skips). Blocks, minibatch-std, epilogue,
    projection conditioning and ``spectral_norm`` are StyleGAN2Discriminator's, built for
    resolution R/2 (so channels follow ``channel_base / (R/2)``; StyleSwin 256 is 16384 / 512).
    """

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, channel_base: int = 16384,
                 channel_max: int = 512, mbstd_group_size: int = 4, mbstd_channels: int = 1,
                 cmap_dim: Optional[int] = None, cmap_layers: int = 2, spectral_norm: bool = False) -> None:
        check_resolution(img_resolution, low=32)
        super().__init__(img_resolution // 2, 4 * img_channels, num_classes, channel_base=channel_base,
                         channel_max=channel_max, mbstd_group_size=mbstd_group_size, mbstd_channels=mbstd_channels,
                         cmap_dim=cmap_dim, cmap_layers=cmap_layers, spectral_norm=spectral_norm)
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.from_wavelets = nn.ModuleList([
            EqualizedConv2d(4 * img_channels, block.conv1.out_channels, 1, activation="lrelu")
            for block in self.blocks])
        if spectral_norm:
            apply_spectral_norm(self.from_wavelets)
        # Constants on the module's device (not copied there on every forward).
        self.register_buffer("haar", _HAAR.clone(), persistent=False)
        self.register_buffer("resample_kernel", fir_kernel(), persistent=False)

    def features(self, x: Tensor) -> Tensor:
        """Images [B, C, R, R] -> the 4 x 4 feature map fed to the epilogue."""
        R, C = self.img_resolution, self.img_channels
        if x.dim() != 4 or x.shape[1:] != (C, R, R):
            raise ValueError(f"WaveletDiscriminator wants input of shape [B, {C}, {R}, {R}], got {tuple(x.shape)}")
        h = self.fromrgb(haar_dwt(x, self.haar))
        for block, from_wavelets in zip(self.blocks, self.from_wavelets):
            x = downsample2d(x, self.resample_kernel)
            h = block(h) + from_wavelets(haar_dwt(x, self.haar))
        return h


class StyleSwinDiscriminator(nn.Module):
    """StyleSwin's wavelet discriminator as its public code builds it (models/discriminator.py).

    The image enters as Haar bands at R/2. At each level (maps R/2, R/4, ..., 8) the bands of the
    image at that scale go through a 1x1 "from RGB" conv, are added to the features, and a plain
    block (conv3x3, conv3x3 /2; no residual) halves the map; at 4x4 the bands are added once more,
    then minibatch-std, conv3x3, fc, fc to one logit. Widths follow the official table
    ``channels[r] = min(channel_base / r, channel_max)`` read one level off: the first level (on
    the R/2 map) works at ``channels[R]``, and a level on an r x r map ends at ``channels[r/2]``
    (at 256: 128 -> 512 -> 512 ...).
    ``spectral_norm`` normalizes every conv and linear (StyleSwin's --D_sn); then the first fc
    also has a bias before its activation's bias, as in the official layers. Unconditional only.
    """

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, channel_base: int = 32768,
                 channel_max: int = 512, mbstd_group_size: int = 4, mbstd_channels: int = 1,
                 spectral_norm: bool = True) -> None:
        super().__init__()
        check_resolution(img_resolution, low=16)
        if num_classes:
            raise ConfigError("discriminator 'styleswin' is unconditional (StyleSwin's); use stylegan2_wavelet "
                              "for class-conditional data")
        self.img_resolution, self.img_channels, self.num_classes = img_resolution, img_channels, 0
        ch = {2 ** i: stage_channels(2 ** i, channel_base, channel_max)
              for i in range(2, int(math.log2(img_resolution)) + 1)}
        levels = [2 ** i for i in range(int(math.log2(img_resolution)) - 1, 2, -1)]  # maps R/2 ... 8
        # The first level works at channels[R] (the official table read one level off), the others
        # at their predecessor's output channels[r].
        widths = [ch[img_resolution]] + [ch[r] for r in levels[1:]]
        self.from_rgbs = nn.ModuleList([EqualizedConv2d(4 * img_channels, w, 1, activation="lrelu") for w in widths] +
                                       [EqualizedConv2d(4 * img_channels, ch[4], 1, activation="lrelu")])
        self.blocks = nn.ModuleList([nn.Sequential(EqualizedConv2d(w, w, 3, activation="lrelu"),
                                                   EqualizedConv2d(w, ch[r // 2], 3, activation="lrelu", down=True))
                                     for r, w in zip(levels, widths)])
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_channels) if mbstd_channels else None
        self.final_conv = EqualizedConv2d(ch[4] + mbstd_channels, ch[4], 3, activation="lrelu")
        self.spectral_norm = bool(spectral_norm)
        # --D_sn: nn.Linear (own bias) then FusedLeakyReLU (another bias); without it one fused layer.
        self.fc = EqualizedLinear(ch[4] * 16, ch[4], activation="linear" if spectral_norm else "lrelu")
        self.fc_act_bias = nn.Parameter(torch.zeros(ch[4])) if spectral_norm else None
        self.out = EqualizedLinear(ch[4], 1)
        if spectral_norm:
            apply_spectral_norm(self)
        self.register_buffer("haar", _HAAR.clone(), persistent=False)
        self.register_buffer("resample_kernel", fir_kernel(), persistent=False)

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """Images [B, C, R, R] -> logits [B]."""
        R, C = self.img_resolution, self.img_channels
        if x.dim() != 4 or x.shape[1:] != (C, R, R):
            raise ValueError(f"StyleSwinDiscriminator wants images [B, {C}, {R}, {R}], got {tuple(x.shape)}")
        check_class_labels(c, self.num_classes, x.shape[0], "discriminator")
        h = None
        for i, from_rgb in enumerate(self.from_rgbs):
            if i:
                # The official code rebuilds the image from its bands and blurs it down; the same as
                # downsampling the image itself, since the Haar transform inverts exactly.
                x = downsample2d(x, self.resample_kernel)
            bands = from_rgb(haar_dwt(x, self.haar))
            h = bands if h is None else h + bands
            if i < len(self.blocks):
                h = self.blocks[i](h)
        if self.mbstd is not None:
            h = self.mbstd(h)
        h = self.fc(self.final_conv(h).flatten(1))
        if self.fc_act_bias is not None:
            h = leaky_relu_gain(h + self.fc_act_bias.to(h.dtype))
        return self.out(h).squeeze(1)
