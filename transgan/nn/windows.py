"""Token layouts for attention: windows (Swin), shifted windows, relative position bias, grids (TransGAN).

:func:`windowed_attention` is the one implementation of (shifted-)window attention: cyclic roll,
partition into windows, Swin's mask against tokens the roll made neighbours, attention through a
given core, and back. :class:`WindowAttention` (W-MSA / SW-MSA, TransGAN's grid cells) and
StyleSwin's double attention (``transgan.models.swin``) both call it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
from einops import rearrange
from timm.models.swin_transformer import get_relative_position_index
from timm.models.swin_transformer import window_partition as _timm_window_partition
from timm.models.swin_transformer import window_reverse as _timm_window_reverse
from torch import Tensor

from transgan.nn.attention import Attention

__all__ = [
    "window_partition", "window_reverse", "shifted_window_mask", "RelativePositionBias", "windowed_attention",
    "WindowAttention", "GridAttention", "grid_attention",
]


def window_partition(x: Tensor, window: int) -> Tensor:
    """[B, H, W, C] -> [B * nW, window * window, C], windows in row-major order."""
    B, H, W, C = x.shape
    if H % window or W % window:
        raise ValueError(f"feature map {H}x{W} is not divisible into {window}x{window} windows")
    return _timm_window_partition(x, (window, window)).reshape(-1, window * window, C)


def window_reverse(windows: Tensor, window: int, H: int, W: int) -> Tensor:
    """[B * nW, window * window, C] -> [B, H, W, C]; inverse of :func:`window_partition`."""
    C = windows.shape[-1]
    return _timm_window_reverse(windows.reshape(-1, window, window, C), (window, window), H, W)


def shifted_window_mask(H: int, W: int, window: int, shift: int, device: torch.device | str | None = None,
                        fill: float = -math.inf) -> Tensor:
    """Swin's additive mask [nW, w*w, w*w]: 0 where two tokens of a shifted window came from the
    same image region before the cyclic shift, ``fill`` where the roll made them neighbours (-inf:
    never attended; Swin's and StyleSwin's code use -100, which large logits can outweigh)."""
    if not 0 < shift < window:
        raise ValueError(f"shift must be in (0, window={window}), got {shift}")
    region = torch.zeros(1, H, W, 1, device=device)
    label = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            region[:, hs, ws, :] = label
            label += 1
    labels = window_partition(region, window).squeeze(-1)  # [nW, w*w]
    same = labels.unsqueeze(1) == labels.unsqueeze(2)
    return torch.zeros(same.shape, device=device).masked_fill_(~same, fill)


class RelativePositionBias(nn.Module):
    """Learned bias per head for each relative offset inside a window (Swin, TransGAN)."""

    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", get_relative_position_index(window, window), persistent=False)

    def forward(self) -> Tensor:
        """The bias [heads, w*w, w*w] to add to the attention scores."""
        n = self.window * self.window
        return self.table[self.index.reshape(-1)].reshape(n, n, self.num_heads).permute(2, 0, 1)


def windowed_attention(attend: Callable[..., Tensor], q: Tensor, k: Tensor, v: Tensor, window: int, shift: int = 0,
                       bias: Tensor | None = None, shift_mask: Tensor | None = None) -> Tensor:
    """Heads q, k, v [B, h, H, W, d] attend inside ``window`` x ``window`` windows of the map, cyclically
    shifted by ``shift`` when it is > 0 (Swin's SW-MSA); returns [B, h, H, W, d].

    ``attend(q, k, v, bias=...)`` is the attention core (e.g. ``Attention.attend``); ``bias``
    [h, n, n] (n = window^2) is added in every window; ``shift_mask`` is
    :func:`shifted_window_mask` for this map, made here if not given (modules keep theirs).
    """
    B, h, H, W, d = q.shape
    w, n = window, window * window
    if H % w or W % w:
        raise ValueError(f"feature map {H}x{W} is not divisible into {w}x{w} windows")
    if shift:
        q, k, v = (torch.roll(t, shifts=(-shift, -shift), dims=(2, 3)) for t in (q, k, v))
    q, k, v = (rearrange(t, "b h (y wy) (x wx) d -> (b y x) h (wy wx) d", wy=w, wx=w) for t in (q, k, v))
    if shift:
        # The mask differs per window: fold the windows into the heads so the [nW * h, n, n]
        # bias broadcasts over the batch instead of being copied B times.
        mask = shifted_window_mask(H, W, w, shift, q.device) if shift_mask is None else shift_mask
        n_w = mask.shape[0]
        bias = (mask[:, None] if bias is None else mask[:, None] + bias).reshape(n_w * h, n, n)
        q, k, v = (t.reshape(B, n_w * h, n, d) for t in (q, k, v))
        out = attend(q, k, v, bias=bias).reshape(B * n_w, h, n, d)
    else:
        out = attend(q, k, v, bias=bias)
    out = rearrange(out, "(b y x) h (wy wx) d -> b h (y wy) (x wx) d", b=B, y=H // w, wy=w)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(2, 3))
    return out


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (optionally cyclically shifted) windows, with a
    relative position bias: the W-MSA / SW-MSA of Swin. x [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int = 0, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 rel_pos: bool = True, kernel: str = "auto", similarity: str = "dot") -> None:
        super().__init__()
        if window < 1 or not 0 <= shift < window:
            raise ValueError(f"need window >= 1 and 0 <= shift < window, got window={window}, shift={shift}")
        self.window, self.shift = window, shift
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=proj_drop, kernel=kernel, similarity=similarity)
        self.rel_pos = RelativePositionBias(window, num_heads) if rel_pos else None
        self._masks: dict[tuple, Tensor] = {}

    def _mask(self, H: int, W: int, device: torch.device) -> Tensor | None:
        if not self.shift:
            return None
        key = (H, W, str(device))
        if key not in self._masks:
            self._masks[key] = shifted_window_mask(H, W, self.window, self.shift, device)
        return self._masks[key]

    def forward(self, x: Tensor) -> Tensor:
        """Attend within windows of the [B, H, W, C] map and return a map of the same shape."""
        if x.dim() != 4:
            raise ValueError(f"WindowAttention wants x as [B, H, W, C], got {tuple(x.shape)}")
        B, H, W, C = x.shape
        q, k, v = (t.unflatten(2, (H, W)) for t in self.attn.project_qkv(x.reshape(B, H * W, C)))
        bias = None if self.rel_pos is None else self.rel_pos()
        out = windowed_attention(self.attn.attend, q, k, v, self.window, self.shift, bias, self._mask(H, W, x.device))
        return self.attn.project_out(out.flatten(2, 3)).reshape(B, H, W, C)


class GridAttention(WindowAttention):
    """TransGAN grid self-attention: the map is cut into non-overlapping ``grid`` x ``grid``
    cells and tokens attend only inside their cell. x [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim: int, num_heads: int, grid: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, rel_pos: bool = True,
                 kernel: str = "auto", similarity: str = "dot") -> None:
        super().__init__(dim, num_heads, window=grid, shift=0, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         attn_drop=attn_drop, proj_drop=proj_drop, rel_pos=rel_pos, kernel=kernel,
                         similarity=similarity)


def grid_attention(x: Tensor, attn: Attention, grid: int, bias: Tensor | None = None) -> Tensor:
    """Apply ``attn`` inside each ``grid`` x ``grid`` cell of x [B, H, W, C] (bias: [heads, g*g, g*g])."""
    if x.dim() != 4:
        raise ValueError(f"grid_attention wants x as [B, H, W, C], got {tuple(x.shape)}")
    B, H, W, C = x.shape
    return window_reverse(attn(window_partition(x, grid), bias=bias), grid, H, W)
