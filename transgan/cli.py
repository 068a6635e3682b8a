"""Shared command-line behaviour of the commands (transgan/commands/): help text and clean errors for bad input."""

from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Sequence

from transgan.errors import CheckpointError, ConfigError, NonFiniteError

EXIT_NONFINITE = 3  # training stopped: too many non-finite steps in a row (docs/reliability.md)


def run_cli(job: Callable[[], None], usage: str, argv: Sequence[str]) -> int:
    """Run ``job``; print usage on -h/--help; expected user errors exit 2, a diverged training run 3."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        return 0
    try:
        job()
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


def console_entry(main: Callable[[list[str]], int], log_level: Optional[int] = logging.INFO) -> Callable[[], int]:
    """A command's console-script function: log to stderr at ``log_level`` (None: as is), run ``main(argv)``."""
    def entry() -> int:
        if log_level is not None:
            logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
        return main(sys.argv[1:])

    return entry
