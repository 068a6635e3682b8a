"""``python tools/convert.py ARGS`` = ``transgan-convert ARGS``: see transgan/commands/convert.py (``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transgan.commands.convert import *  # noqa: E402,F401,F403  (entry, main...: for callers that load this file)

if __name__ == "__main__":
    sys.exit(entry())
