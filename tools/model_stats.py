"""``python tools/model_stats.py ARGS`` = ``transgan-model-stats ARGS``: see transgan/commands/model_stats.py (``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transgan.commands.model_stats import *  # noqa: E402,F401,F403  (entry, main...: for callers that load this file)

if __name__ == "__main__":
    sys.exit(entry())
