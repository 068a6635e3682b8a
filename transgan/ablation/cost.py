"""What a grid costs before it runs: the images it plans per cell, times each cell's measured speed.

Each cell trains a few seconds in this process at two recipes that bracket what the tuning can
choose (the light corner: smallest batch and n_critic; the heavy one: largest of both, with
WGAN-GP's every-step penalty where the space offers it), at the thread count the cells run with.
The images come from the grid's own plan: the tuning rungs (or trials) and the final seeds.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from transgan.ablation.grid import AblationError, cell_specs, plan_grid, spec_label
from transgan.ablation.tuning import LOSS_KEY, rung_plan, tuned_keys
from transgan.train.build import build_trainer
from transgan.train.config import validate_config

LIGHT_LOSSES = ("ns_r1", "rpgan_r1r2")  # lazy or shared penalties: the cheaper families of the presets' space
HEAVY_LOSSES = ("wgan_gp",)             # a gradient penalty on every D step


def planned_images(cfg: DictConfig) -> dict[str, float]:
    """Real images one cell trains on: its tuning (rungs or trials, every tuning seed) and its final runs."""
    t = cfg.tuning
    if cfg.budget.kind != "images" or (t.trials and t.budget.kind != "images"):
        raise AblationError("the cost estimate needs images budgets (steps and seconds depend on the recipe)")
    tuning = 0.0
    if t.trials and t.method == "halving":
        plan = rung_plan(int(t.trials), int(t.eta), int(t.survivors), float(t.budget.value), float(cfg.budget.value))
        tuning = plan[0][0] * plan[0][1] + sum(n * (b - plan[r - 1][1]) for r, (n, b) in enumerate(plan[1:], 1))
        tuning += plan[-1][0] * plan[-1][1] * (len(t.seeds) - 1)  # the survivors' runs at the other tuning seeds
    elif t.trials:
        tuning = float(t.trials * len(t.seeds) * t.budget.value)
    return {"tuning": tuning, "final": float(len(cfg.seeds) * cfg.budget.value)}


def corner_recipes(cfg: DictConfig) -> dict[str, list[str]]:
    """The light and heavy corners of the tuning space (one empty recipe for an untuned grid)."""
    space = cfg.tuning.space if cfg.tuning.trials else {}
    if not space:
        return {"shared recipe": []}
    corners: dict[str, list[str]] = {"light": [], "heavy": []}
    for key, dom in space.items():
        if key == LOSS_KEY:
            families = list(dom.keys())
            for name, prefer in (("light", LIGHT_LOSSES), ("heavy", HEAVY_LOSSES)):
                family = next((f for f in prefer if f in families), families[0])
                corners[name].append(f"loss={family}")
        elif all(isinstance(v, int) for v in dom):  # batch, n_critic: a categorical of counts (rates are floats)
            corners["light"].append(f"{key}={min(dom)}")
            corners["heavy"].append(f"{key}={max(dom)}")
    return corners


def measure_speed(cfg: DictConfig, seconds: float = 12.0,
                  echo: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Per cell and corner recipe, the real images per second of training steps (after two warm-up steps)."""
    speeds: dict[str, dict[str, float]] = {}
    labels = [spec_label(s) for s in cell_specs(cfg)]
    for name, recipe in corner_recipes(cfg).items():
        cells = plan_grid(cfg, {label: recipe for label in labels}, tuned_keys(cfg) if recipe else ())
        for cell in {c.label: c for c in cells}.values():
            tree = OmegaConf.to_container(cell.cfg)
            tree["eval"]["metrics"] = []  # training steps only
            with tempfile.TemporaryDirectory() as tmp:
                trainer = build_trainer(validate_config(OmegaConf.create(tree)), str(Path(tmp) / "run"))
                for _ in range(2):
                    trainer.train_step()
                steps, start = 0, time.perf_counter()
                while steps < 3 or time.perf_counter() - start < seconds:
                    trainer.train_step()
                    steps += 1
                per_step = (time.perf_counter() - start) / steps
            t = cell.cfg.train
            speeds.setdefault(cell.label, {})[name] = t.batch_size * t.n_critic / per_step
            echo(f"{cell.label} at the {name} recipe: {speeds[cell.label][name]:.1f} images/s "
                 f"({' '.join(recipe) or 'shared'})")
    return speeds


def cost_report(cfg: DictConfig, speeds: dict[str, dict[str, float]], parts: Optional[int] = None) -> dict[str, Any]:
    """Core-hours per cell and in all at each corner, and the wall-clock hours as ``parts`` one-thread parts."""
    images = planned_images(cfg)
    total = images["tuning"] + images["final"]
    rows = {label: {"images_per_s": s, "core_hours": {k: total / v / 3600 for k, v in s.items()}}
            for label, s in speeds.items()}
    corners = list(next(iter(speeds.values())))
    sums = {k: sum(r["core_hours"][k] for r in rows.values()) for k in corners}
    parts = parts or 1
    split = [{"cells": part, "core_hours": {k: sum(rows[c]["core_hours"][k] for c in part) for k in corners}}
             for part in balanced_parts({label: r["core_hours"][corners[-1]] for label, r in rows.items()}, parts)]
    # Parts side by side share the machine's memory bandwidth: lower bounds on the wall clock.
    return {"images_per_cell": images, "cells": rows, "core_hours": sums, "parts": parts,
            "wall_hours_at_least": {k: v / parts for k, v in sums.items()}, "split": split,
            "wall_hours_split": {k: max(part["core_hours"][k] for part in split) for k in corners}}


def balanced_parts(hours: dict[str, float], parts: int) -> list[list[str]]:
    """Cells in ``parts`` groups of near-equal summed hours: the longest first, each to the lightest group (LPT)."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(parts, len(hours))))]
    load = [0.0] * len(groups)
    for label in sorted(hours, key=lambda c: -hours[c]):
        i = load.index(min(load))
        groups[i].append(label)
        load[i] += hours[label]
    return groups


def format_cost(report: dict[str, Any], name: str = "<preset>") -> str:
    """The cost as a Markdown table, and the commands of the parts for the preset ``name``."""
    corners = list(report["core_hours"])
    img = report["images_per_cell"]
    lines = [f"images per cell: {img['tuning']:,.0f} tuning + {img['final']:,.0f} final", "",
             "| cell | " + " | ".join(f"images/s ({k})" for k in corners) + " | "
             + " | ".join(f"core-hours ({k})" for k in corners) + " |",
             "|---|" + "---:|" * (2 * len(corners))]
    for label, r in report["cells"].items():
        lines.append(f"| {label} | " + " | ".join(f"{r['images_per_s'][k]:.1f}" for k in corners) + " | "
                     + " | ".join(f"{r['core_hours'][k]:.2f}" for k in corners) + " |")
    lines.append("| **all cells** | " + " | " * (len(corners) - 1) + " | "
                 + " | ".join(f"**{report['core_hours'][k]:.1f}**" for k in corners) + " |")
    wall = ", ".join(f"{v:.1f} h ({k})" for k, v in report["wall_hours_at_least"].items())
    lines += ["", f"as {report['parts']} one-thread part(s) side by side: at least {wall} of wall clock"]
    if len(report["split"]) > 1:
        split = ", ".join(f"{v:.1f} h ({k})" for k, v in report["wall_hours_split"].items())
        lines += [f"split by the {corners[-1]} corner's hours, the longest part takes {split}; the parts "
                  f"(each with your other overrides; then the whole grid once more for the report):"]
        for part in report["split"]:
            hours = ", ".join(f"{v:.1f} h ({k})" for k, v in part["core_hours"].items())
            lines.append(f"  python tools/ablate.py experiment={name} 'only=[{','.join(part['cells'])}]'   # {hours}")
    return "\n".join(lines)


def estimate_cost(cfg: DictConfig, seconds: float, parts: Optional[int],
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every cell's speed and return (and print) the grid's cost."""
    report = cost_report(cfg, measure_speed(cfg, seconds, echo), parts)
    echo(format_cost(report, str(cfg.get("name") or "<preset>")))
    return report
