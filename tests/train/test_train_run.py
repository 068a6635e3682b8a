"""End-to-end runs of tools/train.py on the digits data (CPU, a few steps)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transgan.runs.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

SMALL = ["model=cwgan_gp", "dataset=digits", "train.batch_size=16", "train.n_critic=2", "train.log_every=2",
         "train.sample_every=4", "train.eval_every=4", "train.ckpt_every=4", "eval.num_samples=50",
         "dataset.num_workers=0"]


def run_train(repo_root: Path, *args: str, launcher: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """Run the training tool in a fresh process, as a user would (``check``: it must succeed)."""
    if launcher:
        cmd = [shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate"), "launch",
               "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "tools/train.py", *args]
    else:
        cmd = [sys.executable, "tools/train.py", *args]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 or not check, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def assert_same_tree(a, b, path="state"):
    """Exact equality of nested checkpoint structures (tensors bit-for-bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.slow
def test_accelerate_launch_writes_every_output(repo_root, tmp_path):
    run = tmp_path / "run"
    run_train(repo_root, *SMALL, "train.max_steps=8", f"hydra.run.dir={run}", launcher=True)
    assert (run / "config.yaml").is_file()
    assert [p.name for p in list_checkpoints(run)] == ["step-000000004.pt", "step-000000008.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000000004.png", "step-000000008.png"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss_d" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    for r in train:
        assert {"step", "images_seen", "loss_d", "loss_g", "images_per_s", "gp"} <= r.keys()
    assert train[-1]["images_seen"] == 8 * 2 * 16
    assert any("digits_class_acc" in r for r in records)


@pytest.mark.slow
def test_resume_continues_bit_for_bit(repo_root, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_train(repo_root, *SMALL, "train.max_steps=8", f"hydra.run.dir={straight}")
    run_train(repo_root, *SMALL, "train.max_steps=4", f"hydra.run.dir={split}")
    assert latest_checkpoint(split).name == "step-000000004.pt"
    run_train(repo_root, f"resume={split}", "train.max_steps=8")
    a, b = load_checkpoint(latest_checkpoint(straight)), load_checkpoint(latest_checkpoint(split))
    assert a["progress"]["step"] == b["progress"]["step"] == 8
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "loss", "rng", "model"):
        assert_same_tree(a[key], b[key], key)
    for key in ("step", "d_steps", "images_seen", "data_position"):
        assert a["progress"][key] == b["progress"][key]
