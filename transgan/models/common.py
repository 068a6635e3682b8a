"""Checks and schedules shared by the backbones: the image side and the channels per resolution."""

from __future__ import annotations

from transgan.errors import ConfigError

__all__ = ["check_resolution", "stage_channels"]


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
