"""Bad input is refused with a clear message before anything is written."""

from __future__ import annotations

import importlib.util

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def train_main(repo_root):
    spec = importlib.util.spec_from_file_location("train_tool", repo_root / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _refused(train_main, capsys, run_dir, *args) -> str:
    code = train_main([*args, f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not run_dir.exists(), "nothing may be written for a refused config"
    return err


def test_unknown_key(train_main, capsys, tmp_path):
    err = _refused(train_main, capsys, tmp_path / "run", "train.not_a_key=3")
    assert "not_a_key" in err


def test_unknown_group_option(train_main, capsys, tmp_path):
    err = _refused(train_main, capsys, tmp_path / "run", "model=no_such_model")
    assert "no_such_model" in err


def test_wrong_type(train_main, capsys, tmp_path):
    err = _refused(train_main, capsys, tmp_path / "run", "train.batch_size=lots")
    assert "batch_size" in err


def test_missing_dataset_root(train_main, capsys, tmp_path):
    err = _refused(train_main, capsys, tmp_path / "run", "dataset=imagefolder", f"dataset.root={tmp_path / 'nowhere'}")
    assert "nowhere" in err


def test_resolution_not_power_of_two(train_main, capsys, tmp_path):
    err = _refused(train_main, capsys, tmp_path / "run", "model.resolution=48")
    assert "48" in err and "power of two" in err


def test_unreadable_image_is_named(train_main, capsys, tmp_path):
    root = tmp_path / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (16, 16), (i, 0, 0)).save(root / cls / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    err = _refused(train_main, capsys, tmp_path / "run", "dataset=imagefolder", f"dataset.root={root}",
                   "dataset.bad_images=fail")
    assert "broken.png" in err


def test_resume_without_checkpoint(train_main, capsys, tmp_path):
    run = tmp_path / "empty_run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    code = train_main([f"resume={run}"])
    err = capsys.readouterr().err
    assert code == 2 and "no checkpoint" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_resume_from_a_folder_that_is_not_a_run(train_main, capsys, tmp_path):
    code = train_main([f"resume={tmp_path}"])
    assert code == 2 and "config.yaml" in capsys.readouterr().err
