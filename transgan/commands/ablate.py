"""Attention versus convolution under an equal budget: ``python tools/ablate.py experiment=<preset> [key=value ...]``.

    python tools/ablate.py experiment=ablation_digits                 # CPU, digits 32x32, FD-digits
    python tools/ablate.py experiment=ablation_celeba64 train_args='[dataset.root=/data/celeba]'
    python tools/ablate.py experiment=ablation_digits seeds=[0] out_dir=/tmp/abl --dry-run
    python tools/ablate.py experiment=ablation_digits_tuned          # equal Optuna tuning per cell, 3 seeds

Arguments are Hydra overrides of configs/ablation/config.yaml (presets in configs/ablation/
experiment/): out_dir=, seeds=, budget.kind=images|steps|seconds, budget.value=, eval.*=,
train_args=[...] (tools/train.py overrides shared by every cell), cells=[...] or
generators=[...] discriminators=[...], tuning.*= (trials per cell, trial seeds and budget,
the search space), contrasts=[...]. --dry-run composes and checks the grid (equal budget,
every pairing buildable, evaluation weights present), prints the plan and runs nothing.
--cost measures every cell's training speed for a few seconds and prints what the grid will
cost in core-hours (--parts N: and in wall-clock hours as N parts side by side).

Every cell is a ``tools/train.py`` run under out_dir/runs/; rerunning the same command skips
finished cells and resumes interrupted ones. Writes out_dir/ablation.csv, curves.csv,
ablation.md, quality_vs_images.png and quality_vs_time.png. See docs/ablation.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transgan.cli import CommandLine, console_entry, run_cli


ABLATION_KEYS = {
    "experiment": "a preset of configs/ablation/experiment/ (ablation_digits, ablation_digits_tuned, ...)",
    "out_dir": "where the cells' runs and the report go",
    "seeds": "final seeds, e.g. [0,1,2]",
    "budget.*": "budget.kind=images|steps|seconds, budget.value=",
    "eval.*": "eval.source, eval.metric, eval.points, eval.every_steps, eval.preset, eval.overrides",
    "train_args": "tools/train.py overrides shared by every cell, e.g. '[dataset.root=/data/celeba]'",
    "extra_args": "more shared overrides, appended to train_args",
    "data_root": "dataset.root of every cell",
    "cells": "an explicit list of cells {generator, discriminator, label, overrides}",
    "generators": "generator families of the grid", "discriminators": "discriminator families of the grid",
    "tuning.*": "tuning.trials, tuning.seeds, tuning.budget, tuning.sampler_seed, tuning.space",
    "contrasts": "the headline contrasts [{name, a, b}]",
    "only": "run only these cells (by label)", "launcher": "the command that runs tools/train.py",
    "plots": "write the plots", "name": "the grid's name", "description": "one line for the report",
}


def command_line() -> CommandLine:
    """tools/ablate.py's arguments: Hydra overrides of configs/ablation/config.yaml and --dry-run."""
    cli = CommandLine("tools/ablate.py", __doc__, ABLATION_KEYS, any_key=True)
    cli.parser.add_argument("--dry-run", action="store_true", help="compose, check and print the plan; run nothing")
    cli.parser.add_argument("--cost", action="store_true",
                            help="train every cell a few seconds at the light and heavy corners of the tuning space "
                                 "and print the grid's core-hours (images budgets); run nothing else")
    cli.parser.add_argument("--cost-seconds", type=float, default=12.0, help="timed seconds per cell and corner")
    cli.parser.add_argument("--parts", type=int, default=None,
                            help="with --cost: the grid runs as this many one-thread parts side by side")
    cli.parser.add_argument("--cost-out", default=None, help="with --cost: also write the numbers to this JSON file")
    return cli


def main(argv: list[str]) -> int:
    """Run (or with --dry-run only plan) the ablation the overrides describe; return the exit status."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.ablation import run_ablation

    cli = command_line()

    def job() -> None:
        flags, overrides = cli.parse(argv)
        if flags.cost:
            from transgan.ablation import compose_ablation
            from transgan.ablation.cost import estimate_cost
            from transgan.runs.files import atomic_write_text

            report = estimate_cost(compose_ablation(overrides), flags.cost_seconds, flags.parts)
            if flags.cost_out:
                atomic_write_text(Path(flags.cost_out), json.dumps(report, indent=1) + "\n")
            return
        out = run_ablation(overrides, dry_run=flags.dry_run)
        print(f"dry run: nothing ran; would write to {out}" if flags.dry_run else f"done: {out}")

    return run_cli(job, usage=cli, argv=argv)


entry = console_entry(main)  # the ``transgan-ablate`` console script; tools/ablate.py runs it too


if __name__ == "__main__":
    sys.exit(entry())
