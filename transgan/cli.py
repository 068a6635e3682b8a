"""Shared command-line behaviour of the commands (transgan/commands/): help text and clean errors for bad input."""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from transgan.errors import CheckpointError, ConfigError, NonFiniteError

if TYPE_CHECKING:
    import torch

EXIT_NONFINITE = 3  # training stopped: too many non-finite steps in a row (docs/reliability.md)


def resolve_device(name: str) -> "torch.device":
    """A torch device named on the command line, checked to exist here (a clear error instead of a CUDA trace)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device {name}: no such CUDA GPU here ({torch.cuda.device_count()} visible); "
                          "use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


def one_line(error: BaseException) -> str:
    """An exception's message on one line (torch's load_state_dict errors span several)."""
    return re.sub(r"\s*\n\s*", " ", str(error)).strip()


def run_cli(job: Callable[[], None], usage: str, argv: Sequence[str]) -> int:
    """Run ``job``; print usage on -h/--help; expected user errors exit 2, a diverged training run 3."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        return 0
    try:
        job()
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
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
