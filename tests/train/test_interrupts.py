"""Interrupted runs: SIGKILL anywhere (also mid-checkpoint-write), SIGTERM/SIGINT stop with a checkpoint.

The kill test trains in a subprocess, kills it at seeded random moments and resumes it each
time with ``resume=<run dir>``. A watcher thread loads every checkpoint the moment it appears
under its final name, so a partially written one would be caught; every resume must start from
the newest complete checkpoint; the end state must equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.train.test_train_run import assert_same_tree
from transgan.runs.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from transgan.train.config import compose_config
from transgan.train.build import build_trainer
from transgan.train.trainer import Trainer

# Tiny and fast (about 30 steps/s on one core), a checkpoint every second step.
TINY = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16", "model.discriminator.channel_max=16",
        "dataset=synthetic", "dataset.size=64", "train.batch_size=8", "train.n_critic=1", "train.ckpt_every=2",
        "train.keep_checkpoints=1000", "train.log_every=5", "train.sample_every=1000", "train.eval_every=1000",
        "train.cpu_threads=1"]
MAX_STEPS = 40
STEP = re.compile(r"step-(\d+)\.pt$")


class Watcher(threading.Thread):
    """Loads each checkpoint as soon as its final name is visible; records any that is incomplete."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.seen, self.bad = run_dir / "checkpoints", set(), []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            names = os.listdir(self.folder) if self.folder.is_dir() else []
            for path in (self.folder / n for n in names if STEP.search(n) and n not in self.seen):
                if path.name not in self.seen:
                    self.seen.add(path.name)
                    try:
                        step = load_checkpoint(path)["progress"]["step"]
                        if step != int(STEP.search(path.name).group(1)):
                            self.bad.append(f"{path.name}: holds step {step}")
                    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
                        self.bad.append(f"{path.name}: {e}")
            time.sleep(0.001)


def _start(repo_root: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    with open(out.with_suffix(".out"), "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
        return subprocess.Popen([sys.executable, "tools/train.py", *args], cwd=repo_root, env=env,
                                stdout=stdout, stderr=stderr)


def _newest_step(run: Path) -> int:
    found = list_checkpoints(run)
    return int(STEP.search(found[-1].name).group(1)) if found else 0


def _wait(condition, proc: subprocess.Popen, log: Path, poll_s: float, timeout: float = 120.0) -> bool:
    """Poll ``condition`` until true (True) or the process exits (False); fail on a timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, log.with_suffix(".err").read_text()[-3000:]
        time.sleep(poll_s)
    return True


@pytest.mark.slow
def test_kill_anywhere_then_resume_equals_an_uninterrupted_run(repo_root, tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    reference = _start(repo_root, tmp_path / "straight", *TINY, f"train.max_steps={MAX_STEPS}",
                       f"hydra.run.dir={straight}")
    watcher = Watcher(run)
    watcher.start()
    rng = random.Random(10)
    # random: SIGKILL a random moment after the first new checkpoint; write: SIGKILL while a
    # checkpoint is being written (its temporary file exists); term: SIGTERM, a clean stop.
    plan = ["random", "write", "term", "write", "random"]
    args = [*TINY, f"train.max_steps={MAX_STEPS}", f"hydra.run.dir={run}"]
    mid_write, resumed_from = 0, []
    for i, how in enumerate([*plan, "finish"]):
        log = tmp_path / f"segment{i}"
        start_step = _newest_step(run)
        proc = _start(repo_root, log, *args)
        args = [f"resume={run}"]
        if how != "finish":
            if not _wait(lambda: _newest_step(run) > start_step, proc, log, poll_s=0.005):
                break  # the run finished before the planned interruption: nothing left to interrupt
            if how == "random":
                time.sleep(rng.uniform(0.0, 0.08))  # about two steps
                proc.send_signal(signal.SIGKILL)
            elif how == "write":
                folder = run / "checkpoints"
                # A write lasts about a millisecond: poll fast, but only for the next one.
                assert _wait(lambda: any(n.endswith(".tmp") for n in os.listdir(folder)), proc, log, poll_s=0.0001), \
                    "the run ended without a checkpoint write through a temporary file"
                proc.send_signal(signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        err, out = log.with_suffix(".err").read_text(), log.with_suffix(".out").read_text()
        if how == "write" and code == -signal.SIGKILL and any((run / "checkpoints").glob(".step-*.tmp")):
            mid_write += 1
        if how in ("term", "finish") or code != -signal.SIGKILL:
            assert code == 0, err[-3000:]
        if how == "term":
            stopped = int(re.search(r"stopped by SIGTERM at step (\d+), checkpoint saved", out).group(1))
            assert stopped == _newest_step(run) > start_step
        if i > 0:
            match = re.search(r"resuming from (\S+) \(step (\d+)\)", err)
            assert match, err[-3000:]
            resumed_from.append((Path(match.group(1)).name, int(match.group(2))))
            # The newest complete checkpoint when the previous process died, nothing older.
            assert int(match.group(2)) == start_step and match.group(1) == str(checkpoint_path(run, start_step))
    watcher.done.set()
    watcher.join()
    assert reference.wait(timeout=120) == 0, (tmp_path / "straight.err").read_text()[-3000:]

    assert not watcher.bad, watcher.bad
    assert len(resumed_from) >= 4, resumed_from
    assert mid_write >= 1, "no kill landed inside a checkpoint write"
    assert not list((run / "checkpoints").glob(".step-*.tmp")), "partial writes are cleaned up on resume"
    assert {p.name for p in list_checkpoints(run)} <= watcher.seen
    for path in list_checkpoints(run):  # every file under a final name is complete
        assert load_checkpoint(path)["progress"]["step"] == int(STEP.search(path.name).group(1))
    a = load_checkpoint(checkpoint_path(straight, MAX_STEPS))
    b = load_checkpoint(checkpoint_path(run, MAX_STEPS))
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "loss", "rng", "model"):
        assert_same_tree(a[key], b[key], key)
    for key in ("step", "d_steps", "images_seen", "data_position", "skipped_steps"):
        assert a["progress"][key] == b["progress"][key], key


def _in_process_trainer(tmp_path, *overrides: str) -> Trainer:
    cfg, _ = compose_config([*TINY, "train.device=cpu", "train.ckpt_every=1000", *overrides])
    return build_trainer(cfg, str(tmp_path / "run"))


def _signal_at(trainer: Trainer, step: int, signals: list[int]) -> None:
    """Deliver real signals to this process while training step ``step`` runs."""
    real_step = trainer.train_step

    def train_step():
        if trainer.progress.step + 1 == step:
            for s in signals:
                os.kill(os.getpid(), s)
        return real_step()

    trainer.train_step = train_step


def test_sigint_stops_at_the_step_boundary_with_a_checkpoint(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    trainer = _in_process_trainer(tmp_path, "train.max_steps=20")
    _signal_at(trainer, 3, [signal.SIGINT])
    trainer.train()
    assert trainer.stopped_by == "SIGINT" and trainer.progress.step == 3
    assert [p.name for p in list_checkpoints(trainer.run_dir)] == ["step-000000003.pt"]
    state = load_checkpoint(checkpoint_path(trainer.run_dir, 3))
    assert torch.equal(state["G"][next(iter(state["G"]))], next(iter(trainer.G.state_dict().values())))
    assert signal.getsignal(signal.SIGINT) is before  # handlers are the caller's again


def test_second_sigint_stops_at_once(tmp_path):
    # The second signal gets the caller's handler back; make that Python's own Ctrl-C handler,
    # whatever an earlier test (or library) of this process installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    trainer = _in_process_trainer(tmp_path, "train.max_steps=20")
    _signal_at(trainer, 2, [signal.SIGINT, signal.SIGINT])
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list_checkpoints(trainer.run_dir) == []
