"""Numerical faults: a non-finite loss or gradient skips its optimizer step; too many in a row stop the run."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch

from tests.train.test_train_run import assert_same_tree
from transgan.runs.checkpoint import list_checkpoints
from transgan.train.batches import BatchSource
from transgan.train.config import compose_config
from transgan.train.faults import step_if_finite
from tests.train.phases import wrap_phase
from transgan.train.build import build_trainer
from transgan.train.trainer import Trainer

TINY = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16", "model.discriminator.channel_max=16",
        "dataset=synthetic", "dataset.size=32", "train.batch_size=8", "train.n_critic=1", "train.device=cpu",
        "train.cpu_threads=1", "train.sample_every=1000", "train.eval_every=1000"]


# ----------------------------------------------------------------------------- the optimizer step


def _adam_with_state(kind: str) -> tuple[torch.nn.Parameter, torch.optim.Adam]:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6))
    opt = torch.optim.Adam([p], lr=0.1, fused=kind == "fused")
    p.grad = torch.randn(6)
    opt.step()  # state exists (a skip must leave it, not just the parameter, untouched)
    return p, opt


@pytest.mark.parametrize("kind", ["plain", "fused", "scaler"])
def test_step_if_finite_skips_exactly_and_steps_like_adam(kind):
    p, opt = _adam_with_state(kind)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0) if kind == "scaler" else None
    reference = copy.deepcopy(opt.state_dict()), p.detach().clone()

    def backward(g: torch.Tensor) -> None:
        p.grad = None
        loss = (p * g).sum()  # d loss / d p = g
        (scaler.scale(loss) if scaler else loss).backward()

    def step() -> None:
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    # A finite gradient, but the loss was not: nothing may change.
    backward(torch.randn(6))
    step_if_finite(opt, step, torch.tensor(False), [p.grad], scaler)
    assert torch.equal(p.detach(), reference[1])
    assert_same_tree(opt.state_dict(), reference[0])
    if scaler:
        assert scaler.get_scale() == 2.0  # the scaler backs off as for any overflow

    # A finite step matches a plain Adam step from the same state (an independent reference).
    twin = torch.nn.Parameter(reference[1].clone())
    twin_opt = torch.optim.Adam([twin], lr=0.1)
    twin_opt.load_state_dict(reference[0])
    g = torch.randn(6)
    twin.grad = g.clone()
    twin_opt.step()
    backward(g)
    step_if_finite(opt, step, torch.tensor(True), [p.grad], scaler)
    torch.testing.assert_close(p.detach(), twin.detach(), rtol=0, atol=1e-6)
    assert not torch.equal(p.detach(), reference[1])


# ----------------------------------------------------------------------------- the trainer


def _trainer(tmp_path, *overrides: str) -> Trainer:
    cfg, _ = compose_config([*TINY, *overrides])
    return build_trainer(cfg, str(tmp_path / "run"))


def _nan_batches(monkeypatch, bad: callable) -> None:
    """Real batches (the stream advances as usual), replaced by NaNs on the calls ``bad(call)`` picks."""
    real_next, calls = BatchSource.next, [0]

    def next_batch(self):
        x, c = real_next(self)
        calls[0] += 1
        return (torch.full_like(x, float("nan")), c) if bad(calls[0]) else (x, c)

    monkeypatch.setattr(BatchSource, "next", next_batch)


def _snapshot(trainer: Trainer, net: str) -> dict:
    """Parameters and optimizer state of ``net`` (buffers such as BatchNorm statistics move in every forward)."""
    params = {k: v.detach() for k, v in getattr(trainer, net).named_parameters()}
    return copy.deepcopy({"params": params, "opt": getattr(trainer, f"opt_{net}").optimizer.state_dict()})


def _moved(trainer: Trainer, net: str, before: dict) -> bool:
    """Whether any parameter of ``net`` differs from the snapshot."""
    now = dict(getattr(trainer, net).named_parameters())
    return any(not torch.equal(now[k], v) for k, v in before["params"].items())


def test_nan_data_skips_the_d_step_only(tmp_path, monkeypatch):
    _nan_batches(monkeypatch, lambda call: call == 2)
    trainer = _trainer(tmp_path)
    trainer.train_step()
    D0, G0 = _snapshot(trainer, "D"), _snapshot(trainer, "G")
    stats = trainer.train_step()  # D sees NaN reals: its loss is NaN
    assert not torch.isfinite(stats["loss_d"])
    assert_same_tree(_snapshot(trainer, "D"), D0)  # neither weights nor Adam moments moved
    assert _moved(trainer, "G", G0)  # G trained against the unchanged D
    assert (int(trainer._skipped), int(trainer._in_row)) == (1, 1)
    trainer.train_step()
    assert int(trainer._in_row) == 0 and int(trainer._skipped) == 1
    assert all(torch.isfinite(p).all() for p in trainer.D.parameters())


def test_nan_generator_loss_skips_the_g_step_only(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    trainer.train_step()
    def poisoned(run):
        def nan_g_main(*args):
            loss, stats = run(*args)
            return loss * float("nan"), stats
        return nan_g_main

    wrap_phase(trainer, "g_main", poisoned)
    D0, G0 = _snapshot(trainer, "D"), _snapshot(trainer, "G")
    trainer.train_step()
    assert_same_tree(_snapshot(trainer, "G"), G0)
    assert _moved(trainer, "D", D0)
    assert int(trainer._skipped) == 1


def test_too_many_in_a_row_stop_with_the_good_checkpoints_kept(tmp_path, monkeypatch, repo_root, capsys, caplog):
    # Steps 1-2 are fine, from step 3 on every batch is NaN; the limit is 3 steps in a row.
    _nan_batches(monkeypatch, lambda call: call >= 3)
    spec = importlib.util.spec_from_file_location("train_tool", repo_root / "tools" / "train.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    run = tmp_path / "run"
    code = tool.main([*TINY, "train.max_steps=10", "train.ckpt_every=1", "train.log_every=1",
                      "train.max_nonfinite_in_row=3", f"hydra.run.dir={run}"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "3 training steps in a row" in err and "max_nonfinite_in_row=3" in err and "step-000000002.pt" in err
    # Checkpoints during the streak wait for a good step: only steps 1 and 2 were written.
    assert [p.name for p in list_checkpoints(run)] == ["step-000000001.pt", "step-000000002.pt"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"]) for r in records] == [(1, 0), (2, 0), (3, 1), (4, 2)]
    assert caplog.text.count("optimizer step(s) skipped for a non-finite loss or gradient") == 3


def test_isolated_faults_do_not_stop_the_run(tmp_path, monkeypatch):
    _nan_batches(monkeypatch, lambda call: call in (2, 4, 5))
    trainer = _trainer(tmp_path, "train.max_steps=6", "train.ckpt_every=2", "train.max_nonfinite_in_row=3")
    trainer.train()
    assert (trainer.progress.skipped_steps, trainer.progress.nonfinite_in_row) == (3, 0)
    # Checkpoints due at skipped steps wait for the next good one: 2 -> 3, 4 -> 6 (5 was skipped too).
    assert [p.name for p in list_checkpoints(trainer.run_dir)] == ["step-000000003.pt", "step-000000006.pt"]


def _running(trainer: Trainer) -> dict:
    """G's and D's running statistics (BatchNorm, w_avg) and the loss's pl_mean, copied."""
    out = {f"{net}.{k}": v.detach().clone() for net in ("G", "D")
           for k, v in getattr(trainer, net).named_buffers() if k.rpartition(".")[2] in
           ("running_mean", "running_var", "num_batches_tracked", "w_avg")}
    return out | {f"loss.{k}": v.detach().clone() for k, v in trainer.loss.running_state().items()}


def test_a_skipped_step_leaves_batchnorm_statistics_untouched(tmp_path):
    trainer = _trainer(tmp_path)
    assert isinstance(trainer.G.fc_norm, torch.nn.BatchNorm2d)  # the baseline G normalizes by batch
    poisoned = [False]
    # While poisoned, every G forward feeds NaN features to G's first BatchNorm (as an fp16 overflow would).
    trainer.G.fc_norm.register_forward_pre_hook(lambda m, args: (args[0] * float("nan"),) if poisoned[0] else None)
    trainer.train_step()
    before = _running(trainer)
    assert len(before) >= 3 and all(torch.isfinite(v.float()).all() for v in before.values())
    poisoned[0] = True
    trainer.train_step()  # D sees NaN fakes, G's loss is NaN: both phases are skipped
    assert int(trainer._skipped) == 2
    assert_same_tree(_running(trainer), before)  # the skipped forwards' statistics were rolled back
    poisoned[0] = False
    trainer.train_step()
    after = _running(trainer)
    assert not torch.equal(after["G.fc_norm.running_mean"], before["G.fc_norm.running_mean"])  # good steps move them
    # G_ema runs on G's running statistics: it still draws finite images.
    z, c = trainer._sample_z(4)
    assert torch.isfinite(trainer.G_ema(z, c)).all()


def test_a_skipped_path_length_step_keeps_pl_mean(tmp_path, monkeypatch):
    import transgan.losses as losses

    cfg, _ = compose_config(["model=stylegan2", "loss=ns_r1_pl", "train.n_critic=1", "loss.r1_interval=2",
                             "loss.pl_interval=2", "dataset=synthetic", "dataset.channels=3", "train.batch_size=4",
                             "train.device=cpu", "train.cpu_threads=1"])
    trainer = build_trainer(cfg, str(tmp_path / "run"))
    for _ in range(2):  # one schedule period: pl_mean has left zero
        trainer.train_step()
    before = _running(trainer)
    assert float(before["loss.pl_mean"]) != 0.0
    real_lengths = losses.path_lengths
    monkeypatch.setattr(losses, "path_lengths", lambda *a, **k: real_lengths(*a, **k) * float("nan"))
    for _ in range(2):  # the second step's lazy path-length phase is NaN and skipped
        stats = trainer.train_step()
    assert not torch.isfinite(stats["pl_length"]) and int(trainer._skipped) == 1
    assert torch.equal(trainer.loss.pl_mean, before["loss.pl_mean"])  # not lerped toward NaN
    monkeypatch.setattr(losses, "path_lengths", real_lengths)
    for _ in range(2):
        stats = trainer.train_step()
    assert torch.isfinite(stats["pl_length"]) and torch.isfinite(trainer.loss.pl_mean)
    assert int(trainer._skipped) == 1
