"""Ablations: a grid of generator x discriminator families x seeds under one equal budget.

``grid`` composes the grid and refuses unequal cells, ``run`` trains every cell in its own
``tools/train.py`` process (resumable), ``tuning`` gives every cell the same Optuna tuning
budget before the final runs, ``report`` writes ablation.csv, ablation.md and the
plots. See docs/ablation.md.
"""

from transgan.ablation.grid import AblationError, compose_ablation, plan_grid  # noqa: F401
from transgan.ablation.run import run_ablation  # noqa: F401
