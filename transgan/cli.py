"""The one command-line style of every command (transgan/commands/), help text and clean errors.

Every command takes config keys as Hydra-style ``key=value`` overrides with the names the run
configs use (``model.attention=math`` in train, eval, generate and serve alike) and process-level
options as ``--flags``. :class:`CommandLine` parses both; ``--help`` lists the keys and the flags.
A bad argument is one ``error:`` line and exit status 2 (:func:`run_cli`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import textwrap
from typing import TYPE_CHECKING, Callable, Mapping, NoReturn, Optional, Sequence

from transgan.errors import CheckpointError, ConfigError, NonFiniteError, OutputError

if TYPE_CHECKING:
    import torch

EXIT_INTERRUPTED = 130  # Ctrl-C: the shell's convention (128 + SIGINT)
# key=value, key a dotted config path (optionally +key / ~key, Hydra's add and delete)
_OVERRIDE = re.compile(r"^[+~]?[A-Za-z_][\w.]*(/[\w.]+)*=")


def _check_attention(value: str) -> str:
    """model.attention's one check (transgan.nn.attention.check_kernel)."""
    # Deferred, like every torch import of this module: --help and argument errors answer without torch.
    from transgan.nn.attention import check_kernel

    return check_kernel(value, "model.attention")


# Value checks of keys several commands take: each setting is checked in one place.
VALUE_CHECKS: dict[str, Callable[[str], object]] = {"model.attention": _check_attention}
ATTENTION_KEY = {"model.attention": "attention kernel instead of the run's (auto, sdpa, xformers, math, chunked)"}


def is_override(argument: str) -> bool:
    """Whether a command-line argument is a ``key=value`` override (not a path or a --flag)."""
    return bool(_OVERRIDE.match(argument))


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a ConfigError (one ``error:`` line, exit 2) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


class CommandLine:
    """A command's arguments: positionals and ``--flags`` (argparse, in ``parser``) and config keys.

    ``keys`` maps each key the command takes to its help; ``"group.*"`` takes every key under
    ``group``, and a key also takes ``key=option`` (a config group's choice). ``any_key``: the
    overrides go to Hydra, which checks them against the configs (``keys`` is then what --help shows).
    """

    def __init__(self, prog: str, description: str, keys: Mapping[str, str] = (), any_key: bool = False,
                 epilog: str = "") -> None:
        self.prog, self.keys, self.any_key = prog, dict(keys), any_key
        self.parser = _Parser(prog=prog, description=description, epilog=epilog, add_help=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        self.parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")

    def takes(self, key: str) -> bool:
        """Whether ``key`` (of ``key=value``) is one of this command's config keys."""
        key = key.lstrip("+~")
        return self.any_key or key in self.keys or any(
            k.endswith(".*") and key.startswith(k[:-1]) for k in self.keys)

    def parse(self, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
        """(the flags and positionals, the ``key=value`` overrides in order); a bad one is a ConfigError."""
        overrides = [a for a in argv if is_override(a)]
        for override in overrides:
            key, value = override.split("=", 1)
            if not self.takes(key):
                raise ConfigError(f"{self.prog} takes no config key {key!r}; it takes "
                                  f"{', '.join(sorted(self.keys)) or 'none'} (see --help)")
            if key in VALUE_CHECKS:
                VALUE_CHECKS[key](value)
        args = self.parser.parse_args([a for a in argv if not is_override(a)])
        return args, overrides

    def help(self) -> str:
        """The usage, the flags, and the config keys with their help."""
        text = self.parser.format_help().rstrip()
        if self.keys:
            width = min(max(len(k) for k in self.keys) + 2, 24)
            lines = [textwrap.fill(v, 100, initial_indent=f"  {k + '=':<{width}} ",
                                   subsequent_indent=" " * (width + 3)) for k, v in self.keys.items()]
            text += "\n\nconfig keys (key=value):\n" + "\n".join(lines)
        return text + "\n"


def overrides_as_dict(overrides: Sequence[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}`` (the last one wins, as in Hydra)."""
    return dict(o.split("=", 1) for o in overrides)


EXIT_NONFINITE = 3  # training stopped: too many non-finite steps in a row (docs/reliability.md)


def resolve_device(name: str) -> "torch.device":
    """A torch device named on the command line, checked to exist here (a clear error instead of a CUDA trace)."""
    import torch  # deferred: --help and argument errors answer without torch (2 s to import)

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


def run_cli(job: Callable[[], None], usage: str | CommandLine, argv: Sequence[str]) -> int:
    """Run ``job``; print the help on -h/--help; expected user errors exit 2, a diverged training run 3,
    Ctrl-C 130 (no traceback)."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.help() if isinstance(usage, CommandLine) else usage.strip())
        return 0
    try:
        job()
    except (ConfigError, CheckpointError, FileNotFoundError, OutputError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def console_entry(main: Callable[[list[str]], int], log_level: Optional[int] = logging.INFO) -> Callable[[], int]:
    """A command's console-script function: log to stderr at ``log_level`` (None: as is), run ``main(argv)``."""
    def entry() -> int:
        if log_level is not None:
            logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
        return main(sys.argv[1:])

    return entry
