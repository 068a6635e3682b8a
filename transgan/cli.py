"""Shared command-line behaviour of tools/: help text and clean errors for bad input."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from transgan.registry import ConfigError


def run_cli(job: Callable[[], None], usage: str, argv: Sequence[str]) -> int:
    """Run ``job``; print usage on -h/--help; turn expected user errors into exit status 2."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        return 0
    from transgan.train.checkpoint import CheckpointError

    try:
        job()
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
