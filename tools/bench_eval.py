"""What an in-training evaluation costs against the training steps between two evaluations.

    python tools/bench_eval.py [--steps 3] [--samples 10000] [--json out.json] [train overrides ...]

Builds the run the overrides describe (default: the default run, on CPU unless
``train.device=auto`` is given) and its training evaluator, times ``--steps`` training steps
after one warm-up and the evaluator's second call (the first also computes the reference
statistics, which are cached), and prints seconds per step, seconds per ``train.eval_every``
steps and seconds per evaluation of ``--samples`` G_ema samples. Nothing is written to a run
directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str]) -> int:
    """Time the steps and the evaluation; print (and write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args, overrides = parser.parse_known_args(argv)

    from transgan.eval.training import training_evaluator
    from transgan.train.config import compose_config
    from transgan.train.build import build_trainer

    device = [] if any(o.startswith("train.device=") for o in overrides) else ["train.device=cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg, _ = compose_config([*device, f"eval.num_samples={args.samples}", *overrides, f"hydra.run.dir={tmp}"])
        evaluator = training_evaluator(cfg)
        if evaluator is None:
            parser.error("eval.metrics=[]: nothing to time")
        trainer = build_trainer(cfg, tmp, build_evaluator=lambda _: evaluator)
        trainer.train_step()  # warm-up
        t = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        per_step = (time.perf_counter() - t) / args.steps
        evaluator(trainer.G_ema, 0)  # also computes the reference statistics (cached afterwards)
        t = time.perf_counter()
        values = evaluator(trainer.G_ema, 0)
        eval_s = time.perf_counter() - t
    figures = {"model": str(cfg.model.generator.name), "resolution": int(cfg.model.resolution),
               "batch_size": int(cfg.train.batch_size), "device": str(trainer.accelerator.device),
               "protocol": evaluator.describe(), "seconds_per_step": per_step, "eval_every": int(cfg.train.eval_every),
               "seconds_between_evaluations": per_step * cfg.train.eval_every, "samples": args.samples,
               "seconds_per_evaluation": eval_s, "values": values}
    print(f"{figures['model']} {figures['resolution']}px batch {figures['batch_size']} on {figures['device']}: "
          f"{per_step:.3f} s/step, {cfg.train.eval_every} steps = {per_step * cfg.train.eval_every:.1f} s; "
          f"evaluation of {args.samples} samples = {eval_s:.1f} s "
          f"({100 * eval_s / (per_step * cfg.train.eval_every):.1f}% of the interval)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
