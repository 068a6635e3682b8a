"""Checks and schedules shared by the backbones: the image side, the channels per resolution, and a
generator's own normalization statistics."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from transgan.errors import CheckpointError, ConfigError

__all__ = ["check_finite", "check_resolution", "stage_channels", "running_norm_layers", "recompute_norm_statistics",
           "NORM_STATS_BATCHES", "NORM_STATS_BATCH_SIZE"]

NORM_STATS_BATCHES = 40      # BigGAN's "standing statistics": a cumulative average over many batches
NORM_STATS_BATCH_SIZE = 64   # where the training batch size is unknown (an export)


def check_resolution(resolution: int, low: int = 16, high: int = 1024) -> int:
    """The image side, a power of two in [low, high]; a ConfigError otherwise."""
    if not isinstance(resolution, int) or resolution < low or resolution > high or resolution & (resolution - 1):
        raise ConfigError(f"resolution must be a power of two in [{low}, {high}], got {resolution!r}")
    return resolution


def stage_channels(resolution: int, channel_base: int, channel_max: int, floor: int = 0) -> int:
    """Feature channels at a resolution: min(channel_base / resolution, channel_max) (StyleGAN2's schedule),
    raised to ``floor``; a ConfigError if that leaves none."""
    channels = max(min(channel_base // resolution, channel_max), floor)
    if channels < 1:
        raise ConfigError(f"channel_base={channel_base} leaves no channels at resolution {resolution}")
    return channels


def running_norm_layers(module: nn.Module) -> list[_NormBase]:
    """The normalization layers of ``module`` that keep running statistics (BatchNorm, tracked InstanceNorm)."""
    return [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]


@torch.no_grad()
def recompute_norm_statistics(G: nn.Module, num_batches: int = NORM_STATS_BATCHES,
                              batch_size: int = NORM_STATS_BATCH_SIZE, seed: int = 0) -> bool:
    """Set G's running normalization statistics from G's own forward passes; False if it keeps none.

    BigGAN's standing statistics: every running mean/variance is reset and replaced by the
    cumulative average over ``num_batches`` batches of z ~ N(0, I) with classes drawn uniformly
    (as the trainer draws them for G), the norm layers in train mode and everything else as it
    was. Deterministic for ``seed``; no global random number generator moves.
    """
    layers = running_norm_layers(G)
    if not layers:
        return False
    device = next(G.parameters()).device
    g = torch.Generator().manual_seed(seed)
    modes = {m: m.training for m in G.modules()}
    momenta = [m.momentum for m in layers]
    G.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
        m.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for _ in range(num_batches):
                z = torch.randn(batch_size, G.z_dim, generator=g).to(device)
                c = (torch.randint(0, G.num_classes, (batch_size,), generator=g).to(device)
                     if G.num_classes else None)
                G(z, c)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return True


def check_finite(module: nn.Module, what: str) -> None:
    """Refuse weights holding NaN or inf, naming the first such tensor of ``module``'s state dict (damaged
    weights would otherwise be served as black images without a word)."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{what}: {name} holds {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}; "
                                  f"these weights are damaged and are not used")
