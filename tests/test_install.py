"""A non-editable install composes configs and runs the console commands away from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

COMMANDS = ["transgan-train", "transgan-eval", "transgan-generate", "transgan-serve", "transgan-ablate",
            "transgan-model-stats", "transgan-load-test"]


@pytest.mark.slow
def test_pip_install_then_transgan_train_from_another_directory(repo_root, tmp_path):
    # What `pip install .` reads: the project files and the package (its configs link is kept as a link,
    # as in a checkout); a copy, so the build leaves nothing in the source tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(repo_root / name, src / name)
    shutil.copytree(repo_root / "configs", src / "configs")
    shutil.copytree(repo_root / "transgan", src / "transgan", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))

    # A fresh environment whose only transgan is the installed one; the dependencies (torch...) come
    # from this interpreter's site-packages through a .pth line rather than a second download.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    Path(purelib, "dependencies.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    install = subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--no-index", str(src)], env=env, capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    shutil.rmtree(src)  # nothing may be read from the source tree from here on

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([py, "-c", "import transgan.train.config as c; print(c.CONFIG_DIR)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(purelib) and (Path(where) / "config.yaml").is_file()
    for command in COMMANDS:
        assert (venv / "bin" / command).is_file(), command

    run = subprocess.run([venv / "bin" / "transgan-train", "model=cwgan_gp", "train.max_steps=2"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (run_dir,) = (elsewhere / "runs").glob("*/*")
    assert (run_dir / "checkpoints" / "step-000000002.pt").is_file()
    assert "digits_class_acc" in (run_dir / "metrics.jsonl").read_text()  # the judge (package data) loaded
