"""Evaluation spread over two CPU processes (gloo) equals the one-process evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.distributed_eval_probe import DIGITS, ONE_BATCH, PROTOCOL, numbers, probe_generator
from transgan.eval.metrics import evaluate


def accelerate_command() -> str:
    """This interpreter's ``accelerate``, not whichever is on PATH."""
    beside = Path(sys.executable).parent / "accelerate"
    return str(beside) if beside.exists() else shutil.which("accelerate")


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(repo_root, tmp_path):
    one = numbers(evaluate(probe_generator(), DIGITS, cache_dir=str(tmp_path / "cache1"), **PROTOCOL))
    assert set(one) == {"fid", "kid_mean", "kid_std", "isc_mean", "isc_std", "precision", "recall", "f_score",
                        "digits_class_acc"}

    # Two processes through the torchrun launcher (--multi_gpu with no GPU visible: CPU over gloo),
    # a cache of their own: the reference statistics are computed there too.
    cmd = [accelerate_command(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
           "tests/eval/distributed_eval_probe.py", str(tmp_path / "out"), str(tmp_path / "cache2")]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    ranks = [json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    assert ranks[0]["numbers"] == ranks[1]["numbers"]  # every process gets the main process's numbers
    two = ranks[0]["numbers"]
    assert set(two) == set(one)
    for key, value in one.items():
        assert abs(two[key] - value) <= 1e-6 * max(abs(value), 1e-12), (key, two[key], value)
    assert one["fid"] > 1.0  # random weights are far from the digits: not a comparison of zeros
    small = numbers(evaluate(probe_generator(), DIGITS, cache_dir=str(tmp_path / "cache1"), **ONE_BATCH))
    assert ranks[0]["one_batch"] == ranks[1]["one_batch"]
    for key, value in small.items():
        assert abs(ranks[0]["one_batch"][key] - value) <= 1e-6 * max(abs(value), 1e-12), key
