"""Two processes on CPU (gloo) through ``accelerate launch``: one run, identical replicas, one writer.

The spies of tests/train/multiprocess_probe.py record, per process, a digest of the parameters
and optimizer state after every step and every call that writes to the run directory or
evaluates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.test_train_run import assert_same_tree
from transgan.runs.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint

TINY = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16", "model.discriminator.channel_max=16",
        "dataset=synthetic", "dataset.size=64", "train.batch_size=8", "train.n_critic=1", "train.ckpt_every=1",
        "train.keep_checkpoints=10",
        "train.log_every=2", "train.sample_every=3", "train.eval_every=3", "train.cpu_threads=1", "train.device=cpu",
        "eval.num_samples=40", "eval.batch_size=8"]


def launch_two(repo_root: Path, probe_dir: Path, *args: str, sigterm: str = "") -> subprocess.CompletedProcess:
    """Two CPU processes (gloo) through ``accelerate launch`` of the probe (the real training tool, spied on)."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).parent / "accelerate"  # this interpreter's, not whichever is on PATH
    accelerate = str(beside) if beside.exists() else shutil.which("accelerate")
    # `--cpu --num_processes 2` starts ONE process in accelerate 1.x (its simple launcher; several CPU
    # processes need mpirun); the torchrun launcher behind --multi_gpu starts two, and with no GPU
    # visible and train.device=cpu they train on CPU over gloo.
    # --main_process_port 0: a free port, so concurrent runs on one machine do not collide on 29500.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
           "0", "--mixed_precision", "no", "--dynamo_backend", "no", "tests/train/multiprocess_probe.py",
           str(probe_dir), *args]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": "", "PROBE_SIGTERM": sigterm or "-1:-1"}
    out = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def records(probe_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (probe_dir / f"rank{rank}.jsonl").read_text().splitlines()]


def steps(recs: list[dict]) -> list[dict]:
    return [r for r in recs if r["event"] == "step"]


def digests(step_record: dict) -> dict:
    """The parameter and optimizer-state digests of one step record."""
    return {k: step_record[k] for k in ("G", "D", "G_ema", "opt_G", "opt_D")}


@pytest.mark.slow
def test_two_processes_train_one_run_stop_together_and_resume(repo_root, tmp_path):
    runs = tmp_path / "runs"
    # ${now:...} with microseconds: were each process to name the run itself, two folders would appear.
    launch_two(repo_root, tmp_path / "probe", *TINY, "train.max_steps=6", f"hydra.run.dir={runs}/${{now:%H-%M-%S-%f}}")
    (run,) = runs.iterdir()
    rank0, rank1 = records(tmp_path / "probe", 0), records(tmp_path / "probe", 1)

    # Replicas: the same parameters and optimizer state after every step, and they do change.
    s0, s1 = steps(rank0), steps(rank1)
    assert [r["step"] for r in s0] == [r["step"] for r in s1] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(s0, s1):
        assert digests(a) == digests(b), a["step"]
    assert len({r["G"] for r in s0}) == len({r["D"] for r in s0}) == 6

    # One writer, the main process; evaluation is spread over both processes.
    writes = {(r["rank"], r["event"]) for r in rank0 + rank1 if r["event"] != "step"}
    assert writes == {(0, "save_atomic"), (0, "__init__"), (0, "scalars"), (0, "samples"), (0, "evaluate"),
                      (1, "evaluate"), (0, "save_samples")}
    assert [p.name for p in list_checkpoints(run)] == [f"step-00000000{i}.pt" for i in range(1, 7)]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "images_per_s" in r] == [2, 4, 6]  # one per log step, not per process
    assert [r["step"] for r in logged if "fd_digits" in r] == [3, 6]  # one per evaluation, not per process
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000000003.png", "step-000000006.png"]
    straight = load_checkpoint(checkpoint_path(run, 5))
    assert len(straight["rng"]) == 2  # each process's generators, restored to their owners on resume

    # Resume with two processes from step 4; SIGTERM reaches process 1 alone during step 5: both
    # stop after step 5 with one checkpoint, equal bit for bit to the uninterrupted run's.
    for step in (5, 6):
        checkpoint_path(run, step).unlink()
    out = launch_two(repo_root, tmp_path / "probe_resumed", f"resume={run}", sigterm="1:5")
    assert "stopped by a stop signal (on another process) at step 5, checkpoint saved" in out.stdout
    r0, r1 = steps(records(tmp_path / "probe_resumed", 0)), steps(records(tmp_path / "probe_resumed", 1))
    assert [r["step"] for r in r0] == [r["step"] for r in r1] == [5]
    assert digests(r0[0]) == digests(r1[0]) == digests(s0[4])
    assert [p.name for p in list_checkpoints(run)][-1] == "step-000000005.pt"
    assert {r["rank"] for r in records(tmp_path / "probe_resumed", 0) + records(tmp_path / "probe_resumed", 1)
            if r["event"] == "save_atomic"} == {0}
    resumed = load_checkpoint(checkpoint_path(run, 5))
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "loss", "rng", "model"):
        assert_same_tree(straight[key], resumed[key], key)
    for key in ("step", "d_steps", "images_seen", "data_position", "skipped_steps"):
        assert straight["progress"][key] == resumed["progress"][key], key
