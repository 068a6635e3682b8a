"""Shared command-line behaviour of tools/: help text and clean errors for bad input."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from transgan.errors import CheckpointError, ConfigError

EXIT_NONFINITE = 3  # training stopped: too many non-finite steps in a row (docs/reliability.md)


def run_cli(job: Callable[[], None], usage: str, argv: Sequence[str]) -> int:
    """Run ``job``; print usage on -h/--help; expected user errors exit 2, a diverged training run 3."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        return 0
    from transgan.train.faults import NonFiniteError

    try:
        job()
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    return 0
