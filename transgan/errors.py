"""Exception types shared across the package; the bottom layer, importing nothing of transgan.

A command turns them into one ``error:`` line and exit status 2 (3 for :class:`NonFiniteError`);
see ``transgan.cli.run_cli``.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any output is written."""


class ConvertError(ConfigError):
    """An official checkpoint that cannot be converted: unsafe, truncated, over the reading budget, or not
    the expected kind."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, partial, unsafe, or from another model."""


class NonFiniteError(RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradient; the run stopped."""


class OutputError(RuntimeError):
    """A run's output (checkpoint, metrics line, sample grid, export) could not be written, e.g. a full disk;
    what was written before is intact."""
