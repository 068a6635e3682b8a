"""tools/ablate.py: equal budgets across cells, refusal of unequal grids, resumable runs, the CelebA config."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.data.fixtures import make_celeba
from transgan.ablation import AblationError, compose_ablation, plan_grid, run_ablation
from transgan.ablation.grid import outside_factor
from transgan.ablation.report import COLUMNS
from transgan.runs.checkpoint import list_checkpoints, load_checkpoint
from transgan.train.config import compose_config


@pytest.fixture(autouse=True)
def _cpu_and_private_cache(tmp_path, monkeypatch):
    """Cells run on CPU and cache reference statistics under the test's folder."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TRANSGAN_CACHE_DIR", str(tmp_path / "eval-cache"))


def test_digits_preset_gives_every_cell_the_same_budget_and_setup():
    cells = plan_grid(compose_ablation(["experiment=ablation_digits"]))
    pairs = {(c.generator, c.discriminator) for c in cells}
    assert len(pairs) == 8 and len(cells) == 16  # 8 cells x seeds 0 and 1
    assert {("transgan", "cwgan_gp"), ("cwgan_gp", "transgan"), ("swin_gan", "stylegan2"),
            ("styletoken", "stylegan2"), ("stylegan2", "stylegan2")} <= pairs  # families and both hybrids
    reference = outside_factor(cells[0].cfg)
    for c in cells:
        assert outside_factor(c.cfg) == reference, c.key
        # 19200 images = 100 G steps of batch 64 with 3 D steps each, the same for every cell
        assert (c.cfg.train.max_steps, c.cfg.train.batch_size, c.cfg.train.n_critic) == (100, 64, 3)
        assert c.cfg.model.resolution == 32 and c.cfg.dataset.name == "digits"
    assert sorted(c.seed for c in cells if c.label == cells[0].label) == [0, 1]
    # What tools/train.py receives composes to exactly the planned config, in the planned run dir.
    composed, run_dir = compose_config(cells[5].overrides)
    assert OmegaConf.to_container(composed) == OmegaConf.to_container(cells[5].cfg)
    assert Path(run_dir) == cells[5].run_dir


def test_seconds_budget_sets_the_clock_for_every_cell():
    cfg = compose_ablation(["experiment=ablation_digits", "budget.kind=seconds", "budget.value=90",
                            "eval.every_steps=10"])
    cells = plan_grid(cfg)
    assert {(c.cfg.train.max_seconds, c.cfg.train.eval_every) for c in cells} == {(90.0, 10)}
    assert len({c.cfg.train.max_steps for c in cells}) == 1


def _two_cells(second_overrides: str) -> str:
    return ("cells=[{generator:cwgan_gp,discriminator:cwgan_gp},"
            f"{{generator:transgan,discriminator:cwgan_gp,overrides:[{second_overrides}]}}]")


@pytest.mark.parametrize("cell_overrides, named", [
    ("'train.batch_size=32'", "train.batch_size"),         # a different batch
    ("'model=swin_gan_64'", "model.resolution"),           # a model preset forcing another resolution
    ("'loss=hinge'", "loss.adversarial"),                  # another loss
    ("'dataset.augment.hflip=true'", "dataset.augment.hflip"),  # other augmentation
    ("'train.max_steps=5'", "train.max_steps"),            # a budget of its own
])
def test_unequal_grid_is_refused_before_anything_runs(tmp_path, cell_overrides, named):
    cfg = compose_ablation(["experiment=ablation_digits", f"out_dir={tmp_path / 'abl'}", _two_cells(cell_overrides)])
    with pytest.raises(AblationError, match=named.replace(".", r"\.")):
        plan_grid(cfg)


def test_cell_overrides_inside_the_ablated_factor_are_accepted():
    cfg = compose_ablation(["experiment=ablation_digits", "seeds=[0]", _two_cells("'model.generator.embed_dim=32'")])
    cells = plan_grid(cfg)
    assert cells[1].cfg.model.generator.embed_dim == 32


def test_cli_refuses_an_unequal_grid_with_status_2(repo_root, tmp_path):
    out = tmp_path / "abl"
    proc = subprocess.run([sys.executable, "tools/ablate.py", "experiment=ablation_digits", f"out_dir={out}",
                           _two_cells("'train.batch_size=32'")], cwd=repo_root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unequal grid" in proc.stderr and "train.batch_size: 64" in proc.stderr
    assert not out.exists()  # refused before anything was written


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "ablation.csv") as f:
        return list(csv.DictReader(f))


def _attempts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "ablation_attempts.jsonl").read_text().splitlines()]


def test_rerun_skips_finished_cells_and_resumes_an_interrupted_one(tmp_path):
    out = tmp_path / "abl"
    args = ["experiment=ablation_digits", f"out_dir={out}", "seeds=[0]", "budget.kind=steps", "budget.value=2",
            "eval.points=2", "launcher=[python]",
            "extra_args=['train.batch_size=8','eval.num_samples=30','train.log_every=1']",
            # two cheap cells: the conv pair and the same pair with a narrower D (a change inside the factor)
            "cells=[{generator:cwgan_gp,discriminator:cwgan_gp},"
            "{label:narrow_d,generator:cwgan_gp,discriminator:cwgan_gp,overrides:['model.discriminator.channel_max=32']}]"]
    said: list[str] = []
    run_ablation(args, echo=said.append)
    rows = _rows(out)
    assert [(r["cell"], r["generator"], r["discriminator"]) for r in rows] == [
        ("cwgan_gp+cwgan_gp", "cwgan_gp", "cwgan_gp"), ("narrow_d", "cwgan_gp", "cwgan_gp")]
    assert list(rows[0]) == COLUMNS
    for r in rows:
        assert (r["budget_kind"], r["budget"], r["steps"], r["images_seen"]) == ("steps", "2", "2", str(2 * 8 * 3))
        assert r["metric"] == "fd_digits" and math.isfinite(float(r["metric_value"]))
        assert 0 <= float(r["class_acc"]) <= 1
        assert int(r["flops_per_image"]) == int(r["flops_g"]) + int(r["flops_d"]) > 0
        assert int(r["params_g"]) > 0 and int(r["params_d"]) > 0 and float(r["images_per_s"]) > 0
        assert r["peak_mem_kind"] == "cpu_peak_rss" and int(r["peak_mem_bytes"]) > 100 * 2 ** 20
        assert float(r["wall_s"]) >= float(r["train_s"]) > 0
    assert int(rows[0]["params_d"]) > int(rows[1]["params_d"])  # the narrower D is measured as such
    for name in ("quality_vs_images.png", "quality_vs_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| narrow_d | cwgan_gp | cwgan_gp | 1 |" in (out / "ablation.md").read_text()

    a, b = (out / "runs" / "cwgan_gp+cwgan_gp__seed0"), (out / "runs" / "narrow_d__seed0")
    mtimes = {p: p.stat().st_mtime_ns for p in list_checkpoints(a) + list_checkpoints(b)}
    said.clear()
    run_ablation(args, echo=said.append)  # everything finished: nothing trains
    assert sum("finished earlier, not rerun" in s for s in said) == 2
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert len(_attempts(a)) == len(_attempts(b)) == 1

    # Interrupt b after its first checkpoint: no result marker, the final checkpoint never written.
    (b / "ablation_cell.json").unlink()
    list_checkpoints(b)[-1].unlink()
    said.clear()
    run_ablation(args, echo=said.append)
    assert any("resuming from step-000000001.pt" in s for s in said)
    assert [x["resumed"] for x in _attempts(b)] == [False, True] and len(_attempts(a)) == 1
    assert [r["steps"] for r in _rows(out)] == ["2", "2"]

    # A smaller budget, or another configuration, in the same folder belongs to another grid: refused
    # before training anything.
    for other in ("budget.value=1", "extra_args=['train.batch_size=8','eval.num_samples=31','train.log_every=1']"):
        with pytest.raises(AblationError, match="another configuration"):
            run_ablation([*args, other], echo=said.append)
    assert len(_attempts(b)) == 2

    # A larger budget continues the finished runs (a plateau check that failed asks for this): each
    # continues from its last checkpoint and ends where a run of the larger budget from the start ends.
    said.clear()
    run_ablation([*args, "budget.value=3"], echo=said.append)
    assert sum("continuing to the larger budget from step-000000002.pt" in s for s in said) == 2
    assert [r["steps"] for r in _rows(out)] == ["3", "3"] and len(_attempts(a)) == 2
    fresh = tmp_path / "fresh"
    run_ablation([*args[:1], f"out_dir={fresh}", *args[2:], "budget.value=3"], echo=said.append)
    for run in (a, b):
        extended = load_checkpoint(list_checkpoints(run)[-1])
        straight = load_checkpoint(list_checkpoints(fresh / "runs" / run.name)[-1])
        assert extended["progress"]["step"] == straight["progress"]["step"] == 3
        for net in ("G", "D", "G_ema"):
            for k, v in straight[net].items():
                assert torch.equal(extended[net][k], v), (run.name, net, k)


def test_celeba64_config_runs_its_first_steps_on_a_celeba_layout_fixture(tmp_path):
    root = make_celeba(tmp_path / "celeba", n=12)
    first = compose_ablation(["experiment=ablation_celeba64"]).cells[0]
    out = tmp_path / "abl"
    run_ablation(["experiment=ablation_celeba64", f"data_root={root}", f"out_dir={out}", "seeds=[0]",
                  "budget.kind=steps", "budget.value=1", "eval.points=1",
                  f"cells=[{{generator:{first.generator},discriminator:{first.discriminator}}}]",
                  # tiny: batch 2 on CPU in fp32, a 2x2 sample grid, FID-style distance on 8 samples with the
                  # shipped digits judge (Inception weights are not part of the test suite)
                  "extra_args=['train.batch_size=2','train.mixed_precision=no','train.device=cpu',"
                  "'train.sample_grid_cols=2','dataset.num_workers=0']",
                  "eval.overrides.num_samples=8", "+eval.overrides.batch_size=8", "+eval.overrides.extractor=fd-digits",
                  "+eval.overrides.reference_workers=false"], echo=print)
    (row,) = _rows(out)
    run_dir = Path(row["run_dir"])
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert (cfg.dataset.name, cfg.model.resolution, cfg.loss.name, cfg.train.n_critic) == ("celeba", 64, "ns_r1", 1)
    assert (row["steps"], row["images_seen"], row["metric"]) == ("1", "2", "fid")
    assert math.isfinite(float(row["metric_value"])) and row["class_acc"] == ""
    protocol = json.loads((run_dir / "ablation_eval" / "step-000000001.json").read_text())["protocol"]
    assert (protocol["dataset"], protocol["resolution"], protocol["num_samples"]) == ("celeba", 64, 8)


def test_a_budget_that_rounds_to_the_same_steps_keeps_the_finished_run(tmp_path):
    # Successive halving grows a trial's budget; at a larger batch x n_critic the larger budget can round to
    # the very same steps: that run is finished, not "another configuration".
    out = tmp_path / "abl"
    args = ["experiment=ablation_digits", f"out_dir={out}", "seeds=[0]", "budget.kind=images", "eval.points=1",
            "launcher=[python]", "extra_args=['train.batch_size=8','eval.num_samples=30','train.log_every=1']",
            "cells=[{generator:cwgan_gp,discriminator:cwgan_gp}]"]
    run_ablation([*args, "budget.value=17"], echo=lambda m: None)  # 8 x 3 images per step: 1 step
    said: list[str] = []
    run_ablation([*args, "budget.value=24"], echo=said.append)      # still 1 step
    assert any("finished earlier, not rerun" in s for s in said) and not any("training" in s for s in said)
    (row,) = _rows(out)
    assert (row["budget"], row["steps"]) == ("24", "1")
    assert len(_attempts(out / "runs" / "cwgan_gp+cwgan_gp__seed0")) == 1
