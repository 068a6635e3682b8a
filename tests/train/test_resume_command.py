"""Resuming with the original command: its own choices are accepted, a differing one is refused."""

from __future__ import annotations

import importlib.util

import pytest

from transgan.runs.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

ORIGINAL = ["model=cwgan_gp", "dataset=digits", "loss=wgan_gp", "seed=0", "train.batch_size=8", "train.log_every=1",
            "train.sample_every=100", "train.eval_every=100", "train.ckpt_every=1", "dataset.num_workers=0"]


@pytest.fixture(scope="module")
def train_main(repo_root):
    spec = importlib.util.spec_from_file_location("train_tool", repo_root / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture()
def one_step_run(train_main, tmp_path):
    run = tmp_path / "run"
    assert train_main([*ORIGINAL, "train.max_steps=1", f"hydra.run.dir={run}"]) == 0
    assert latest_checkpoint(run).name == "step-000000001.pt"
    return run


def test_the_original_command_plus_resume_continues_the_run(train_main, one_step_run):
    run = one_step_run
    assert train_main([*ORIGINAL, "train.max_steps=2", f"hydra.run.dir={run}", f"resume={run}"]) == 0
    assert load_checkpoint(latest_checkpoint(run))["progress"]["step"] == 2


@pytest.mark.parametrize("choice, run_choice", [("model=transgan", "model=cwgan_gp"), ("loss=hinge", "loss=wgan_gp"),
                                                ("seed=3", "seed=0")])
def test_a_differing_choice_is_refused_naming_both_values(train_main, one_step_run, capsys, choice, run_choice):
    run = one_step_run
    before = list_checkpoints(run)
    command = [o for o in ORIGINAL if o.split("=")[0] != choice.split("=")[0]] + [choice]
    assert train_main([*command, "train.max_steps=2", f"resume={run}"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and choice in err and run_choice in err, err
    assert "Traceback" not in err
    assert list_checkpoints(run) == before


def test_another_run_directory_is_refused_naming_both(train_main, one_step_run, capsys, tmp_path):
    run = one_step_run
    assert train_main([*ORIGINAL, f"hydra.run.dir={tmp_path / 'other'}", f"resume={run}"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "other") in err and str(run) in err
