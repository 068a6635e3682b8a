"""Exponential moving average of the generator's weights (Karras et al., StyleGAN2-ADA)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def ema_beta(batch_size: int, images_seen: int, half_life_kimg: float, rampup: Optional[float],
             fixed: Optional[float] = None) -> float:
    """Decay per step for a half-life given in images; ramp-up shortens it early in training; ``fixed``
    (a decay per step, e.g. TransGAN's 0.995) replaces both."""
    if fixed is not None:
        return fixed
    half_life = half_life_kimg * 1000.0
    if rampup is not None:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers are copied."""
    # One multi-tensor kernel per list instead of two kernels per tensor (hundreds of launches).
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - beta)
    buffers = list(ema.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(model.buffers()))
