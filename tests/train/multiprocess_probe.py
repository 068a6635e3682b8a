"""Test-only entry point: tools/train.py with spies recording what each process does.

``accelerate launch ... tests/train/multiprocess_probe.py <probe dir> <train overrides...>``
runs the real training tool; each process appends JSON lines to ``<probe dir>/rank<r>.jsonl``:
a digest of G, D, G_ema parameters and both optimizers' state after every training step, and
one line per call of anything that writes to the run directory or evaluates. The spies call
through to the real functions (tests/train/test_multiprocess.py reads the records).
``PROBE_SIGTERM=<rank>:<step>`` sends SIGTERM to that one process while it trains that step.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _optimizer_tensors(opt):
    state = opt.optimizer.state_dict()["state"]
    return [v for i in sorted(state) for _, v in sorted(state[i].items()) if hasattr(v, "numpy")]


def main() -> int:
    """Install the spies, then run tools/train.py with the remaining arguments."""
    from transgan.runs import checkpoint
    from transgan.train import outputs
    from transgan.train.trainer import Trainer

    probe_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    records = open(probe_dir / f"rank{rank}.jsonl", "a", buffering=1)

    def note(**fields) -> None:
        records.write(json.dumps({"rank": rank, **fields}) + "\n")

    def spy(owner, name: str) -> None:
        real = getattr(owner, name)

        @functools.wraps(real)
        def wrapper(*args, **kwargs):
            note(event=name)
            return real(*args, **kwargs)

        setattr(owner, name, wrapper)

    real_step = Trainer.train_step
    term_rank, term_step = map(int, os.environ.get("PROBE_SIGTERM", "-1:-1").split(":"))

    def train_step(self):
        if rank == term_rank and self.progress.step + 1 == term_step:
            os.kill(os.getpid(), signal.SIGTERM)
        stats = real_step(self)
        plain = self.accelerator.unwrap_model
        note(event="step", step=self.progress.step,
             G=_digest(plain(self.G).parameters()), D=_digest(plain(self.D).parameters()),
             G_ema=_digest(self.G_ema.parameters()),
             opt_G=_digest(_optimizer_tensors(self.opt_G)), opt_D=_digest(_optimizer_tensors(self.opt_D)))
        return stats

    Trainer.train_step = train_step
    for owner, name in ((checkpoint, "save_atomic"), (outputs.RunWriter, "__init__"), (outputs.RunWriter, "scalars"),
                        (outputs.RunWriter, "samples"), (Trainer, "evaluate"), (Trainer, "save_samples")):
        spy(owner, name)

    spec = importlib.util.spec_from_file_location("train_tool", ROOT / "tools" / "train.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(argv)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
