"""``python tools/generate.py ARGS`` = ``transgan-generate ARGS``: see transgan/commands/generate.py (``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transgan.commands.generate import *  # noqa: E402,F401,F403  (entry, main...: for callers that load this file)

if __name__ == "__main__":
    sys.exit(entry())
