"""``python tools/train.py ARGS`` = ``transgan-train ARGS``: see transgan/commands/train.py (``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transgan.commands.train import *  # noqa: E402,F401,F403  (entry, main...: for callers that load this file)

if __name__ == "__main__":
    sys.exit(entry())
