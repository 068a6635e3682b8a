"""Exception types shared across the package; the bottom layer, importing nothing of transgan.

A tool maps these to exit status 2 with one ``error:`` line (``transgan.cli.run_cli``).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any output is written."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, partial, unsafe, or from another model."""
