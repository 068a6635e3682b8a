"""Differentiable augmentation: DiffAugment (Zhao et al., "Differentiable Augmentation for
Data-Efficient GAN Training", NeurIPS 2020).

Every image the discriminator sees, real or generated, goes through the same random
transformation T, and T is differentiable so the generator is trained through it:
``D(T(x))`` for reals, ``D(T(G(z)))`` for fakes. The three families of the paper:

- ``color``: brightness (add U(-0.5, 0.5)), saturation (scale the deviation from the
  channel mean by U(0, 2)), contrast (scale the deviation from the image mean by U(0.5, 1.5));
- ``translation``: shift by up to 1/8 of the image size in each axis, zero padding;
- ``cutout``: zero a random square of half the image size.

All randomness comes from torch's global RNG of the input's device, so a run that
checkpoints and restores the RNG state resumes bit-for-bit. Every operation is built from
differentiable tensor ops (arithmetic, ``gather``, masking), so gradients of gradients
flow through it, as the gradient penalty and R1 passes need.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from transgan.registry import ConfigError

__all__ = ["DiffAugment", "brightness", "saturation", "contrast", "translation", "cutout", "POLICY_OPS"]


def _per_sample_uniform(x: Tensor) -> Tensor:
    """U(0, 1) of shape [B, 1, 1, 1], one draw per image."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def brightness(x: Tensor) -> Tensor:
    """Add one U(-0.5, 0.5) offset per image."""
    return x + (_per_sample_uniform(x) - 0.5)


def saturation(x: Tensor) -> Tensor:
    """Scale each pixel's deviation from its channel mean by one U(0, 2) factor per image."""
    if x.shape[1] == 1:
        # A one-channel pixel equals its channel mean: saturation is the identity, and
        # skipping it keeps grayscale runs from drawing a random number that does nothing.
        return x
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_per_sample_uniform(x) * 2) + mean


def contrast(x: Tensor) -> Tensor:
    """Scale each image's deviation from its mean by one U(0.5, 1.5) factor."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_sample_uniform(x) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by integer offsets in [-ratio*size, ratio*size] per axis; zeros fill in."""
    B, C, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (B,), device=x.device)
    tx = torch.randint(-sw, sw + 1, (B,), device=x.device)
    # out[i, j] = x[i - ty, j - tx], read from a zero-padded copy; gather keeps it twice
    # differentiable (its backward is a scatter-add, whose backward is a gather).
    padded = F.pad(x, (sw, sw, sh, sh))
    rows = torch.arange(H, device=x.device)[None, :] - ty[:, None] + sh   # [B, H]
    cols = torch.arange(W, device=x.device)[None, :] - tx[:, None] + sw   # [B, W]
    out = padded.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * sw))
    return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero one random (ratio*H) x (ratio*W) square per image, the same in every channel.

    The square lies wholly inside the image, so every image loses exactly ratio^2 of its
    pixels (Zhao et al.'s code lets the square cross the border and clips it).
    """
    B, _, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    top = torch.randint(0, H - sh + 1, (B, 1, 1), device=x.device)
    left = torch.randint(0, W - sw + 1, (B, 1, 1), device=x.device)
    rows = torch.arange(H, device=x.device)[None, :, None]
    cols = torch.arange(W, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)  # [B, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICY_OPS: dict[str, tuple[Callable[[Tensor], Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


class DiffAugment(nn.Module):
    """DiffAugment with a policy such as ``"color,translation,cutout"`` (applied in that order)."""

    def __init__(self, policy: str = "color,translation,cutout") -> None:
        super().__init__()
        if not isinstance(policy, str):
            raise ConfigError(f"DiffAugment policy must be a string like 'color,translation,cutout', got {policy!r}")
        self.policy = [op.strip() for op in policy.split(",") if op.strip()]
        unknown = [op for op in self.policy if op not in POLICY_OPS]
        if unknown:
            raise ConfigError(f"unknown DiffAugment op(s) {unknown} in policy {policy!r}; "
                              f"valid ops: {sorted(POLICY_OPS)}")

    def forward(self, x: Tensor) -> Tensor:
        """Augment a batch [B, C, H, W]; each image draws its own transformation."""
        if x.ndim != 4:
            raise ValueError(f"DiffAugment expects images [B, C, H, W], got shape {tuple(x.shape)}")
        for op in self.policy:
            for f in POLICY_OPS[op]:
                x = f(x)
        return x

    def extra_repr(self) -> str:
        return f"policy={','.join(self.policy)!r}"
