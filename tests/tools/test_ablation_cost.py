"""tools/ablate.py --cost: the images a grid plans, the recipes that bracket its cost, the core-hours."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from transgan.ablation import compose_ablation
from transgan.ablation.cost import balanced_parts, corner_recipes, cost_report, format_cost, planned_images


def test_the_tuned_preset_plans_its_rungs_and_final_seeds():
    cfg = compose_ablation(["experiment=ablation_digits_tuned"])
    # 12 x 4,800 at seed 100; 4 of them on to 14,400; 2 on to 48,000; those 2 again at seed 101
    tuning = 12 * 4800 + 4 * (14400 - 4800) + 2 * (48000 - 14400) + 2 * 48000
    assert planned_images(cfg) == {"tuning": tuning, "final": 5 * 48000}
    tpe = compose_ablation(["experiment=ablation_digits_tuned", "tuning.method=tpe", "tuning.trials=3"])
    assert planned_images(tpe)["tuning"] == 3 * 2 * 4800  # every trial at both tuning seeds
    assert corner_recipes(cfg) == {"light": ["loss=ns_r1", "train.n_critic=1", "train.batch_size=32"],
                                   "heavy": ["loss=wgan_gp", "train.n_critic=3", "train.batch_size=64"]}


def test_core_hours_are_the_planned_images_over_the_measured_speed():
    cfg = compose_ablation(["experiment=ablation_digits_tuned"])
    per_cell = sum(planned_images(cfg).values())
    report = cost_report(cfg, {"a": {"light": 100.0, "heavy": 50.0}, "b": {"light": 200.0, "heavy": 100.0}}, parts=2)
    assert report["cells"]["a"]["core_hours"]["heavy"] == pytest.approx(per_cell / 50 / 3600)
    assert report["core_hours"]["light"] == pytest.approx(per_cell * (1 / 100 + 1 / 200) / 3600)
    assert report["wall_hours_at_least"]["heavy"] == pytest.approx(report["core_hours"]["heavy"] / 2)
    # Two cells, two parts: one each, and the longest part is the slower cell.
    assert sorted(map(tuple, (p["cells"] for p in report["split"]))) == [("a",), ("b",)]
    assert report["wall_hours_split"]["heavy"] == pytest.approx(report["cells"]["a"]["core_hours"]["heavy"])
    text = format_cost(report, "ablation_digits_tuned")
    assert "python tools/ablate.py experiment=ablation_digits_tuned 'only=[a]'" in text


def _best_two_way(values: list) -> float:
    """The smallest longest part over every split in two (enumeration)."""
    return min(max(sum(h for j, h in enumerate(values) if mask >> j & 1),
                   sum(h for j, h in enumerate(values) if not mask >> j & 1)) for mask in range(2 ** len(values)))


def test_the_parts_split_is_within_grahams_bound_of_the_enumerated_best():
    # Longest-first to the lightest part (LPT) is within 4/3 - 1/(3m) = 7/6 of the best for m = 2 parts.
    rng = random.Random(0)
    for _ in range(50):
        hours = {f"c{i}": rng.uniform(0.2, 5.0) for i in range(rng.randint(2, 10))}
        groups = balanced_parts(hours, 2)
        assert sorted(sum(groups, [])) == sorted(hours)  # every cell in exactly one part
        longest = max(sum(hours[c] for c in g) for g in groups)
        assert longest <= 7 / 6 * _best_two_way(list(hours.values())) + 1e-9
    hours = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 3.0, "e": 1.0, "f": 2.5}
    assert max(sum(hours[c] for c in g) for g in balanced_parts(hours, 2)) == _best_two_way(list(hours.values()))
    assert balanced_parts(hours, 10) == [[c] for c in sorted(hours, key=lambda c: -hours[c])]  # no empty parts


def test_cost_flag_measures_each_cell_and_trains_nothing_else(repo_root, tmp_path):
    out = tmp_path / "cost.json"
    abl = tmp_path / "abl"
    proc = subprocess.run(
        [sys.executable, "tools/ablate.py", "experiment=ablation_digits_tuned", f"out_dir={abl}",
         "cells=[{generator:cwgan_gp,discriminator:cwgan_gp}]", "contrasts=[]",
         "tuning.space={loss:{ns_r1:{r1_gamma:[0.1,1.0]}},train.n_critic:[1,2],train.batch_size:[8,16]}",
         "--cost", "--cost-seconds", "0", "--parts", "2", "--cost-out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    speeds = report["cells"]["cwgan_gp+cwgan_gp"]["images_per_s"]
    assert set(speeds) == {"light", "heavy"} and all(v > 0 for v in speeds.values())
    assert "core-hours (light)" in proc.stdout and "as 2 one-thread part(s)" in proc.stdout
    assert not abl.exists()  # nothing written where the grid would run
