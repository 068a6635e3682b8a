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

Every cell is a ``tools/train.py`` run under out_dir/runs/; rerunning the same command skips
finished cells and resumes interrupted ones. Writes out_dir/ablation.csv, curves.csv,
ablation.md, quality_vs_images.png and quality_vs_time.png. See docs/ablation.md.
"""

from __future__ import annotations

import sys

from transgan.cli import console_entry, run_cli


def main(argv: list[str]) -> int:
    """Run (or with --dry-run only plan) the ablation the overrides describe; return the exit status."""
    from transgan.ablation import run_ablation

    dry_run = "--dry-run" in argv
    overrides = [a for a in argv if a != "--dry-run"]
    def job() -> None:
        out = run_ablation(overrides, dry_run=dry_run)
        print(f"dry run: nothing ran; would write to {out}" if dry_run else f"done: {out}")

    return run_cli(job, usage=__doc__, argv=argv)


entry = console_entry(main)  # the ``transgan-ablate`` console script; tools/ablate.py runs it too


if __name__ == "__main__":
    sys.exit(entry())
