"""Two "machines" on this host: ``accelerate launch --num_machines 2 --machine_rank 0/1``, one CPU
process each (gloo), as docs/distributed.md runs them across nodes: a few steps, an evaluation
spread over both, a checkpoint, then a resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.eval.test_distributed_eval import accelerate_command
from transgan.runs.checkpoint import list_checkpoints, load_checkpoint

TINY = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16", "model.discriminator.channel_max=16",
        "dataset=synthetic", "dataset.size=64", "train.batch_size=8", "train.n_critic=1", "train.log_every=2",
        "train.eval_every=2", "train.sample_every=100", "train.ckpt_every=2", "train.cpu_threads=1",
        "train.device=cpu", "eval.num_samples=40", "eval.batch_size=8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(repo_root: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """Start machine 0 and machine 1 (one process each) against one main address; wait for both."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    procs = []
    for rank in (0, 1):
        # --multi_gpu selects the torchrun launcher (several nodes); with no GPU visible and
        # train.device=cpu each node's one process trains on CPU over gloo.
        cmd = [accelerate_command(), "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
               "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               "--mixed_precision", "no", "--dynamo_backend", "no", "tools/train.py", *args]
        procs.append(subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    for d in done:
        assert d.returncode == 0, d.stdout[-3000:] + d.stderr[-5000:]
    return done


@pytest.mark.slow
def test_two_machines_train_evaluate_and_resume(repo_root, tmp_path):
    run = tmp_path / "run"
    two_machines(repo_root, *TINY, "train.max_steps=4", f"hydra.run.dir={run}")
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["progress"]["step"] == 4 and len(state["rng"]) == 2  # both machines' processes in it
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "fd_digits" in r] == [2, 4]
    assert (run / "checkpoints" / "best.pt").is_file()

    # Resume on both machines (a shared file system: each reads the run's config and checkpoint).
    two_machines(repo_root, f"resume={run}", "train.max_steps=6")
    assert load_checkpoint(list_checkpoints(run)[-1])["progress"]["step"] == 6
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "fd_digits" in r] == [2, 4, 6]
