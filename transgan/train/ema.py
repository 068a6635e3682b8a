"""Exponential moving average of the generator's weights (Karras et al., StyleGAN2-ADA).

G_ema's parameters average G's; its buffers are G's (w_avg, fixed filters) except the running
statistics of normalization layers: those describe G's activations, not G_ema's, so G_ema gets its
own from :func:`transgan.models.common.recompute_norm_statistics` before anything reads it
(``train.ema_norm_stats=recompute``; ``copy`` keeps the live G's, as code before this did).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from transgan.models.common import running_norm_layers

EMA_NORM_STATS = ("recompute", "copy")


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


def copied_buffers(ema: nn.Module, model: nn.Module, norm_stats: str = "recompute") -> tuple[list, list]:
    """(ema's, model's) buffers that :func:`update_ema` copies: all but norm statistics unless ``copy``."""
    if norm_stats not in EMA_NORM_STATS:
        raise ValueError(f"norm_stats must be one of {EMA_NORM_STATS}, got {norm_stats!r}")
    own = set()
    if norm_stats == "recompute":
        own = {id(b) for m in running_norm_layers(ema) for b in m.buffers(recurse=False)}
    pairs = [(e, b) for e, b in zip(ema.buffers(), model.buffers()) if id(e) not in own]
    return [e for e, _ in pairs], [b for _, b in pairs]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float,
               buffers: Optional[tuple[list, list]] = None) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; ``buffers`` (:func:`copied_buffers`,
    default: all but norm statistics) are copied."""
    # One multi-tensor kernel per list instead of two kernels per tensor (hundreds of launches).
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - beta)
    to, source = buffers if buffers is not None else copied_buffers(ema, model)
    if to:
        torch._foreach_copy_(to, source)
