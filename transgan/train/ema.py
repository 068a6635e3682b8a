"""Exponential moving average of the generator's weights (Karras et al., StyleGAN2-ADA)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def ema_beta(batch_size: int, images_seen: int, half_life_kimg: float, rampup: Optional[float]) -> float:
    """Decay per step for a half-life given in images; ramp-up shortens it early in training."""
    half_life = half_life_kimg * 1000.0
    if rampup is not None:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
