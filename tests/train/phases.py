"""Test helper: wrap one row of a Trainer's phase table (to spy on it or poison it)."""

from __future__ import annotations

import dataclasses
from typing import Callable


def wrap_phase(trainer, name: str, wrapper: Callable[[Callable], Callable]) -> None:
    """Replace phase ``name``'s run with ``wrapper(run)`` in the trainer's table."""
    for table in (trainer.phases_d, trainer.phases_g):
        for i, phase in enumerate(table):
            if phase.spec.name == name:
                spec = dataclasses.replace(phase.spec, run=wrapper(phase.spec.run))
                table[i] = dataclasses.replace(phase, spec=spec)
                return
    raise KeyError(f"no phase {name!r} in the table")
