"""tools/ablate.py --cost: the images a grid plans, the recipes that bracket its cost, the core-hours."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from transgan.ablation import compose_ablation
from transgan.ablation.cost import corner_recipes, cost_report, planned_images


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
