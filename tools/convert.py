"""Convert an official checkpoint (TransGAN .pth, stylegan2-ada .pkl, StyleSwin .pt) into a transgan run directory.

    python tools/convert.py <checkpoint> out=<run dir> [overrides ...]

See ``python tools/convert.py --help``; the logic lives in transgan/convert/.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transgan.convert.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
