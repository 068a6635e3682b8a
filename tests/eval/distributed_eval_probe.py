"""Test-only entry point: one evaluation spread over the processes of ``accelerate launch``.

``accelerate launch ... tests/eval/distributed_eval_probe.py <out prefix> <cache dir>`` evaluates
:func:`probe_generator` under :data:`PROTOCOL` with every process; each writes its numbers to
``<out prefix>.rank<r>.json`` (tests/eval/test_distributed_eval.py compares them with one process's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DIGITS = {"name": "digits", "channels": 1}
# 100 samples in batches of 16: 7 batches, the last one partial, 4 for process 0 and 3 for process 1.
PROTOCOL = dict(extractor="fd-digits", metrics=["fid", "kid", "isc", "prc", "class_acc"], num_samples=100,
                batch_size=16, reference_samples=200, kid_subset_size=50, kid_subsets=10, seed=3, device="cpu",
                reference_workers=False)
# 12 samples: one batch, so process 1 generates nothing and still takes part in the gathering.
ONE_BATCH = {**PROTOCOL, "num_samples": 12, "metrics": ["fid", "class_acc"]}


def probe_generator():
    """A small StyleGAN2 conditioned on the ten digits, 16x16 gray (random weights, fixed seed)."""
    from tests.eval.run_fixtures import tiny_style_generator

    return tiny_style_generator(num_classes=10, resolution=16, channels=1)


def numbers(results: dict) -> dict:
    """The float results of an evaluation (the protocol left out)."""
    return {k: v for k, v in results.items() if isinstance(v, float)}


def main() -> int:
    """Evaluate on every process; write this process's numbers."""
    import torch
    from accelerate import PartialState

    from transgan.eval.metrics import evaluate

    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    try:
        out = evaluate(probe_generator(), DIGITS, cache_dir=sys.argv[2], **PROTOCOL)
        small = evaluate(probe_generator(), DIGITS, cache_dir=sys.argv[2], **ONE_BATCH)
        Path(f"{sys.argv[1]}.rank{state.process_index}.json").write_text(json.dumps(
            {"numbers": numbers(out), "one_batch": numbers(small), "processes": state.num_processes}))
    finally:
        # A gloo group left to interpreter teardown can abort the process ("terminate called without
        # an active exception", SIGABRT): it failed CI once that way (pytorch/pytorch#190489).
        state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
