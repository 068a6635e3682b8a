"""Resuming from a checkpoint that cannot be used is refused with a message naming the problem.

Each case starts from a real run directory (a two-step tiny run) and damages it the way it
happens in practice: a checkpoint copied in from another model, an override that changes the
resolution or the networks' shapes, a file cut short, a pickle that would run code.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

from tests.train.test_checkpoint import _Evil
from transgan.runs.checkpoint import checkpoint_path

TINY = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16", "model.discriminator.channel_max=16",
        "dataset=synthetic", "dataset.size=16", "train.batch_size=8", "train.n_critic=1", "train.device=cpu",
        "train.cpu_threads=1", "train.sample_every=1000", "train.eval_every=1000", "train.ckpt_every=1",
        "train.max_steps=2"]


@pytest.fixture(scope="module")
def train_main(repo_root):
    spec = importlib.util.spec_from_file_location("train_tool", repo_root / "tools" / "train.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main


@pytest.fixture(scope="module")
def runs(train_main, tmp_path_factory):
    """Two finished tiny runs: ``ours`` and ``other`` (narrower networks)."""
    base = tmp_path_factory.mktemp("runs")
    assert train_main([*TINY, f"hydra.run.dir={base / 'ours'}"]) == 0
    assert train_main([*TINY, "model.generator.channel_max=8", f"hydra.run.dir={base / 'other'}"]) == 0
    return base


@pytest.fixture
def run(runs, tmp_path):
    """A fresh copy of ``ours`` to damage."""
    return shutil.copytree(runs / "ours", tmp_path / "run")


def _refused(train_main, capsys, *argv: str) -> str:
    code = train_main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_checkpoint_of_another_model_is_refused(train_main, capsys, runs, run):
    shutil.copy(checkpoint_path(runs / "other", 2), checkpoint_path(run, 3))
    err = _refused(train_main, capsys, f"resume={run}", "train.max_steps=4")
    assert "step-000000003.pt was written for other networks" in err
    assert "generator.channel_max: 8 in the checkpoint, 16 in this run" in err


def test_checkpoint_of_another_resolution_is_refused(train_main, capsys, run):
    err = _refused(train_main, capsys, f"resume={run}", "model.resolution=32", "train.max_steps=4")
    assert "resolution: 16 in the checkpoint, 32 in this run" in err


def test_checkpoint_with_other_classes_is_refused(train_main, capsys, run):
    err = _refused(train_main, capsys, f"resume={run}", "dataset.conditional=true", "train.max_steps=4")
    assert "num_classes: 0 in the checkpoint, 10 in this run" in err


def test_checkpoint_that_does_not_fit_the_networks_is_refused(train_main, capsys, run):
    # The signature agrees, but the weights do not (written by other code, or edited).
    path = checkpoint_path(run, 2)
    state = torch.load(path, weights_only=True)
    name = next(iter(state["G"]))
    state["G"][name] = torch.zeros(3, 1, 7)
    torch.save(state, path)
    err = _refused(train_main, capsys, f"resume={run}", "train.max_steps=4")
    assert "step-000000002.pt does not fit this run's networks" in err and "size mismatch" in err


def test_truncated_checkpoint_is_refused_naming_the_older_one(train_main, capsys, run):
    newest = checkpoint_path(run, 2)
    newest.write_bytes(newest.read_bytes()[:5000])
    err = _refused(train_main, capsys, f"resume={run}", "train.max_steps=4")
    assert f"cannot load checkpoint {newest}: not a complete torch.save file" in err and "truncated" in err
    assert "move this file away (the newest older one is step-000000001.pt)" in err


def test_code_executing_checkpoint_is_refused_and_not_run(train_main, capsys, run, tmp_path):
    # Written by torch.save like a real checkpoint; unpickling it would call os.system.
    marker = tmp_path / "pwned"
    torch.save({"format": "transgan-checkpoint-v1", "G": _Evil(marker)}, checkpoint_path(run, 3))
    err = _refused(train_main, capsys, f"resume={run}", "train.max_steps=4")
    assert "cannot load checkpoint" in err and "step-000000003.pt" in err and "Weights only load failed" in err
    assert "system" in err  # the global it refused to call
    assert not marker.exists()
