"""tools/limited_data.py: the summary over seeds (interval, steps every seed reached) and the shared overrides."""

from __future__ import annotations

import json
import math

import pytest

from tools.limited_data import DEFAULT_ARGS, interval, markdown, run_dir, shared_overrides, summarize
from transgan.errors import ConfigError


def test_interval_is_the_student_t_interval_of_the_mean():
    got = interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} (tables), sample std 1
    assert got["mean"] == 2.0 and got["std"] == pytest.approx(1.0) and got["n"] == 3
    assert got["ci95"] == pytest.approx([2.0 - half, 2.0 + half])


def _write(folder, records):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_summary_keeps_steps_every_seed_reached_and_the_last_record_of_a_step(tmp_path):
    _write(run_dir(tmp_path, "none", 0), [{"step": 10, "fd_digits": 9.0}, {"step": 20, "fd_digits": 5.0},
                                          {"step": 20, "fd_digits": 4.0},  # logged again after a resume
                                          {"step": 20, "loss_d": 1.0, "r_t": 0.5}])
    _write(run_dir(tmp_path, "none", 1), [{"step": 10, "fd_digits": 7.0}, {"step": 20, "fd_digits": 6.0},
                                          {"step": 30, "fd_digits": 1.0}, {"step": 20, "loss_d": 1.0, "r_t": 0.7}])
    summary = summarize(tmp_path, ["none"], [0, 1])["none"]
    assert [p["step"] for p in summary["fd_digits"]] == [10, 20]
    assert [p["values"] for p in summary["fd_digits"]] == [[9.0, 7.0], [4.0, 6.0]]
    assert summary["r_t"][0]["mean"] == pytest.approx(0.6)
    assert "| 20 | 5.000 ± 1.414" in markdown({"none": summary})


def test_command_line_replaces_default_keys_and_may_not_set_the_grid_keys():
    shared = shared_overrides(["dataset.max_images=300", "model.resolution=32"])
    assert "dataset.max_images=300" in shared and "dataset.max_images=200" not in shared
    assert sum(a.startswith("model.resolution=") for a in shared) == 1
    assert len(shared) == len(DEFAULT_ARGS)
    with pytest.raises(ConfigError, match="train.augment"):
        shared_overrides(["train.augment=ada"])
