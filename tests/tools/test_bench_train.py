"""tools/bench_train.py on CPU: every column of every case is produced, and finite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from omegaconf import OmegaConf

from tools.bench_train import KEYS, PEAK_BF16_FLOPS, baseline_args, case_overrides, peak_bf16_flops


def test_tiny_cpu_run_produces_every_column(repo_root, tmp_path):
    """Also --baseline-dir, with this checkout as its own baseline: each case runs from both trees' code."""
    out = tmp_path / "bench.json"
    # A fresh process, as a user runs it: each case forks from its own forkserver.
    cmd = [sys.executable, "tools/bench_train.py", "--tiny", "--models", "swin_gan", "--json", str(out),
           "--baseline-dir", str(repo_root)]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["precision"], r["compile"]) for r in records] == [("fp32", False), ("bf16", False)]
    for r in records:
        assert set(KEYS) <= r.keys()
        assert r["error"] is None, r["error"]
        assert r["model"] == "swin_gan" and r["resolution"] == 32 and r["batch"] == 4 and r["device"] == "cpu"
        # CPU MFU: the step's FLOPs per second over the float32 GEMM rate measured in the same process
        assert r["cpu_gemm_flops"] > 1e8 and r["peak_flops"] == r["cpu_gemm_flops"] and r["threads"] == 1
        assert r["mfu"] == r["flops_per_step"] / r["step_time_s"] / r["cpu_gemm_flops"] and 0 < r["mfu"] < 1
        # The same code as baseline: both ran, the ratio is that of the two medians (one run each here)
        assert r["baseline_images_per_s"] > 0 and r["vs_baseline"] == r["images_per_s"] / r["baseline_images_per_s"]
        for key in ("images_per_s", "peak_mem_bytes", "flops_per_step", "ops_per_step", "us_per_op"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, key
        # The step never makes the host wait for the device (.item(), bool(), nonzero): losses
        # and the skip-on-non-finite verdict stay on the device (fused Adam's found_inf).
        assert r["host_syncs_per_step"] == 0
        # lazy R1 every 2 D steps (--tiny): one schedule period is two steps, timed whole
        assert r["schedule_period"] == 2 and r["timed_steps"] % 2 == 0
    assert records[0]["flops_per_step"] == records[1]["flops_per_step"]  # FLOPs do not depend on precision
    assert records[1]["ops_per_step"] > records[0]["ops_per_step"]  # autocast adds its casts
    assert "swin_gan" in run.stdout and "images/s" in run.stdout and "us/op" in run.stdout  # the printed table
    assert "x baseline" in run.stdout


def test_peak_table_prefers_specific_names():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA L40S") == 362e12 and peak_bf16_flops("NVIDIA L4") == 121e12
    assert peak_bf16_flops("NVIDIA GH200 480GB") == 989e12 and peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("Some Future GPU") is None
    assert all(peak > 0 for _, peak in PEAK_BF16_FLOPS)


def test_sized_presets_and_recipes(repo_root):
    base = dict(precision="bf16", compile=True, batch=8, device="cuda", threads=None, reg_precision="bf16",
                overrides=["train.channels_last=false"])
    overrides, preset = case_overrides({**base, "model": "swin_gan", "resolution": 256})
    assert preset == "swin_gan_256" and "model=swin_gan_256" in overrides
    # The family's recipe is configs/recipes/swin_gan.yaml, less the keys the case sets (the batch).
    lines = OmegaConf.load(repo_root / "configs" / "recipes" / "swin_gan.yaml").overrides
    assert [o for o in lines if not o.startswith("train.batch_size=")] == overrides[:len(lines) - 1]
    assert "train.batch_size=8" in overrides and "recipe=none" in overrides and "loss.reg_precision=bf16" in overrides
    assert overrides[-1] == "train.channels_last=false" and "train.compile=true" in overrides
    overrides, preset = case_overrides({**base, "model": "cwgan_gp", "resolution": 128})
    assert preset == "cwgan_gp" and "model.resolution=128" in overrides
    overrides, _ = case_overrides({**base, "model": "transgan", "resolution": 64,
                                   "overrides": ["experiment=transgan_paper"]})
    assert overrides[0] == "model=transgan_64" and "experiment=transgan_paper" in overrides  # no recipe: the paper's


def test_the_baseline_runs_a_case_as_this_tree_does(tmp_path):
    """--baseline-dir forwards what decides the case: a counted case is counted there too (not timed at 256 px
    for minutes), and the regularization precision and peak FLOP/s are the same."""
    case = dict(model="swin_gan", resolution=256, precision="fp32", compile=False, batch=2, steps=16, warmup=4,
                device="cpu", threads=2, reg_precision="float32", peak_flops=1e12, count_only=True,
                overrides=["train.channels_last=true"])
    args = baseline_args(case, tmp_path / "b.json")
    assert "--count-only" in args and args[args.index("--reg-precision") + 1] == "float32"
    assert args[args.index("--peak-flops") + 1] == "1000000000000.0"
    assert args[args.index("--resolutions") + 1] == "256" and args[-2:] == ["--override", "train.channels_last=true"]
    assert "--count-only" not in baseline_args({**case, "count_only": False}, tmp_path / "b.json")
