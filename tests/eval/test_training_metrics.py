"""Metrics during training on an image folder: FID and KID at every evaluation point, the best
checkpoint kept through pruning and resume, and the logged FID equal to tools/eval.py on it.

The extractor is the digits judge's architecture with random weights written here (a stand-in
for a published network that the test cannot download), allowed explicitly as unverified. A run
records FID in the judge's feature space under the name ``fd_digits`` (tools/eval.py: ``fid``).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tests.data.fixtures import make_imagefolder
from tests.train.test_train_run import run_train
from transgan.eval.metric_registry import training_key
from transgan.runs.checkpoint import list_checkpoints, load_checkpoint

FID = training_key("fid", "fd-digits")  # "fd_digits"


def random_judge(path: Path) -> Path:
    """A digits-judge weights file with random (seeded) weights: not the published file."""
    from safetensors.torch import save_file

    from transgan.eval.digits_judge import DigitsJudge

    torch.manual_seed(5)
    save_file(DigitsJudge().state_dict(), str(path))
    return path


def test_auto_preset_follows_the_dataset_and_resolution():
    from transgan.eval.training import auto_preset

    assert auto_preset("celeba", 64) == "celeba64" and auto_preset("flowers102", 128) == "flowers102_128"
    assert auto_preset("cifar10", 32) == "cifar10_32" and auto_preset("digits", 32) == "digits"
    assert auto_preset("celeba", 128) is None and auto_preset("imagefolder", 64) is None  # plain defaults


def eval_tool():
    spec = importlib.util.spec_from_file_location("eval_tool", Path(__file__).resolve().parents[2] / "tools" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_imagefolder_run_logs_fid_and_kid_keeps_the_best_and_matches_the_eval_tool(repo_root, tmp_path):
    data = make_imagefolder(tmp_path / "flowers", {"dandelion": 150, "marigold": 150}, size=(20, 16))
    judge = random_judge(tmp_path / "random_judge.safetensors")
    run = tmp_path / "run"
    args = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16",
            "model.discriminator.channel_max=16", "dataset=imagefolder", f"dataset.root={data}",
            "dataset.num_workers=0", "train.batch_size=16", "train.n_critic=1", "train.log_every=2",
            "train.eval_every=2", "train.sample_every=100", "train.ckpt_every=2", "train.keep_checkpoints=1",
            "train.cpu_threads=1", "train.device=cpu", "eval.extractor=fd-digits", f"eval.extractor_weights={judge}",
            "eval.allow_unverified_weights=true", "eval.num_samples=64", "eval.batch_size=32",
            f"eval.cache_dir={tmp_path / 'cache'}"]

    # Without the explicit allowance the random weights are refused at start, before the run exists.
    refused = run_train(repo_root, *[a for a in args if "allow_unverified" not in a], "train.max_steps=2",
                        f"hydra.run.dir={run}", check=False)
    assert refused.returncode == 2 and "eval.allow_unverified_weights=true" in refused.stderr and not run.exists()

    run_train(repo_root, *args, "train.max_steps=6", f"hydra.run.dir={run}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if FID in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert all(math.isfinite(r[FID]) and math.isfinite(r["kid_mean"]) and "kid_std" in r for r in evals)

    best = json.loads((run / "checkpoints" / "best.json").read_text())
    winner = min(evals, key=lambda r: r[FID])
    assert (best["step"], best["metric"], best["value"]) == (winner["step"], FID, winner[FID])
    # Each number names the sample count it comes from: the rows, best.json and the TensorBoard tags.
    assert all(r["num_samples"] == 64 for r in evals) and best["num_samples"] == 64
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run / "tensorboard")).Reload().Tags()["scalars"]
    assert f"eval@64/{FID}" in tags and f"eval/{FID}" not in tags
    assert load_checkpoint(run / "checkpoints" / "best.pt")["progress"]["step"] == winner["step"]
    assert [p.name for p in list_checkpoints(run)] == ["step-000000006.pt"]  # pruned to 1; best.pt kept

    # tools/eval.py on best.pt with the run's own protocol: the very number the run logged.
    out = eval_tool().run([str(run / "checkpoints" / "best.pt"), "eval=run", "--out", str(tmp_path / 'eval.json')])
    assert out["fid"] == winner[FID] and out["kid_mean"] == winner["kid_mean"]
    assert out["protocol"]["allow_unverified_weights"] is True
    assert out["protocol"]["weights"]["fd-digits"]["verified"] is False

    # Resume: the best record survives and is only replaced by a better value.
    run_train(repo_root, f"resume={run}", "train.max_steps=10")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if FID in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8, 10]
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["value"] == min(r[FID] for r in evals)
    assert (run / "checkpoints" / "best.pt").is_file()
