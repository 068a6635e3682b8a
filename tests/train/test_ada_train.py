"""train.augment=ada in the trainer: p adapts and resumes exactly, fixed-p mode, R1 through the pipeline,
and the overfitting monitor (r_t, D on training vs held-out reals)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.train.test_train_run import assert_same_tree
from transgan.augment import ADAPipeline
from transgan.losses import GANLoss, PhaseInputs
from transgan.errors import ConfigError
from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint
from transgan.train.build import build_trainer
from transgan.train.config import compose_config, resolve_run
from transgan.train.trainer import Trainer

# WGAN-GP (the penalty pass differentiates through the pipeline) on tiny synthetic images. The target
# is low and the speed high, so p rises within a few steps; interval 3 leaves a partly accumulated
# interval at the split (4 steps x 2 D steps = 8 D steps).
TINY = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16", "model.discriminator.channel_max=16",
        "dataset=synthetic", "dataset.size=32", "train.batch_size=8", "train.n_critic=2", "train.device=cpu",
        "train.cpu_threads=1", "train.sample_every=1000", "train.eval_every=1000", "train.log_every=2",
        "train.ckpt_every=4", "dataset.num_workers=0"]
ADA = ["train.augment=ada", "train.ada_target=-0.9", "train.ada_kimg=0.2", "train.ada_interval=3"]


def _train(run, *overrides: str) -> Trainer:
    cfg, pattern, resume = resolve_run([*overrides, f"hydra.run.dir={run}"] if not any(
        o.startswith("resume=") for o in overrides) else list(overrides))
    trainer = build_trainer(cfg, pattern, resume)
    trainer.train()
    return trainer


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_ada_p_adapts_is_logged_and_resumes_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    full = _train(straight, *TINY, *ADA, "train.max_steps=8")
    _reset_accelerate()
    _train(split, *TINY, *ADA, "train.max_steps=4")
    _reset_accelerate()
    resumed = _train(split, f"resume={split}", "train.max_steps=8")
    a, b = load_checkpoint(latest_checkpoint(straight)), load_checkpoint(latest_checkpoint(split))
    assert a["progress"]["step"] == b["progress"]["step"] == 8
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "augment", "rng"):
        assert_same_tree(a[key], b[key], key)
    # 16 D steps of 8 images in intervals of 3: 5 updates of 24 images, each +24/200 while r_t > -0.9
    assert a["augment"]["p"] > 0 and a["augment"]["batches"] == 16 % 3
    assert full.state.ada.p == resumed.state.ada.p == a["augment"]["p"] == resumed.loss.augment.p
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss_d" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert all({"ada_p", "r_t"} <= r.keys() and -1 <= r["r_t"] <= 1 for r in train)
    assert train[-1]["ada_p"] == a["augment"]["p"] and train[0]["ada_p"] < train[-1]["ada_p"]


def test_fixed_p_mode_and_bad_settings(tmp_path):
    trainer = build_trainer(compose_config([*TINY, "train.augment=ada", "train.ada_target=null", "train.ada_p=0.3"])[0],
                      str(tmp_path / "run"))
    assert isinstance(trainer.loss.augment, ADAPipeline)
    for _ in range(3):
        stats = trainer.train_step()
    assert trainer.state.ada.p == trainer.loss.augment.p == 0.3 and trainer.state.ada.r_t is None
    assert -1 <= stats["r_t"].item() <= 1
    none = build_trainer(compose_config([*TINY])[0], str(tmp_path / "none"))
    assert none.state.ada is None and isinstance(none.loss.augment, torch.nn.Identity)
    for bad in ("train.augment=adaptive", "train.ada_p=1.5", "train.ada_target=1.0", "train.ada_kimg=0"):
        with pytest.raises(ConfigError):
            compose_config([*TINY, "train.augment=ada", bad])
    with pytest.raises(ConfigError, match="policy"):
        compose_config([*TINY, "train.augment=diffaugment", "train.diffaugment="])


def test_r1_runs_on_augmented_reals_with_double_backward():
    """GANLoss.d_reg with ADA: R1 = ||d D(T(x)) / dx||^2, T the same draw; its gradient reaches D's weights."""
    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Softplus(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 16 * 16, 1))
    disc = lambda x, c: D(x).squeeze(1)  # noqa: E731
    loss = GANLoss(adversarial="ns", r1_gamma=2.0, r1_interval=4, augment=ADAPipeline(1.0))
    real = torch.randn(4, 3, 16, 16)
    torch.manual_seed(1)
    value, stats = loss.d_reg(None, disc, PhaseInputs(real=real))
    value.backward()
    # every weight but the last bias (which no input gradient depends on) gets a gradient
    grads = [None if p.grad is None else p.grad.clone() for p in D.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:-1]) and grads[0].abs().sum() > 0
    # the reference, written out: the same augmentation draw, gradient with respect to the un-augmented reals
    D.zero_grad()
    torch.manual_seed(1)
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(ADAPipeline(1.0)(x)).sum(), x, create_graph=True)
    r1 = g.square().flatten(1).sum(1)
    torch.testing.assert_close(stats["r1"], r1.mean().detach())
    torch.testing.assert_close(value.detach(), r1.mean().detach() * (2.0 / 2) * 4)
    (r1.mean() * 4).backward()
    for got, want in zip(grads[:-1], (p.grad for p in D.parameters())):
        torch.testing.assert_close(got, want)
    # and the augmentation is really in the path: R1 on the plain reals differs
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x)
    assert not torch.allclose(g.square().flatten(1).sum(1).mean(), r1.mean())


DIGITS = ["model=cwgan_gp", "model.generator.channel_max=16", "model.discriminator.channel_max=16",
          "dataset=digits", "dataset.max_images=100", "train.batch_size=8", "train.device=cpu", "train.cpu_threads=1",
          "train.heldout_images=16"]


def test_overfitting_monitor_compares_training_and_heldout_reals(tmp_path):
    from transgan.data import build_dataset

    trainer = build_trainer(compose_config(DIGITS)[0], str(tmp_path / "run"))
    out = trainer.overfitting_monitor()
    x_train, c_train = trainer._monitor_batches["train"]
    x_held, c_held = trainer._monitor_batches["heldout"]
    assert x_train.shape == x_held.shape == (16, 1, 32, 32)
    # the held-out images are the digits test split's, none of them among the training images
    test_split = build_dataset({**trainer.cfg.dataset, "split": "test", "max_images": None}, 32)
    test_images = torch.stack([test_split[i][0] for i in range(len(test_split))]).flatten(1)
    dataset = trainer.data.dataset
    train_images = torch.stack([dataset[i][0] for i in range(len(dataset))]).flatten(1)
    assert all((test_images == row).all(1).any() for row in x_held.flatten(1))
    assert not any((train_images == row).all(1).any() for row in x_held.flatten(1))
    assert all((train_images == row).all(1).any() for row in x_train.flatten(1))
    D = trainer.accelerator.unwrap_model(trainer.D)
    with torch.no_grad():
        want_train, want_held = D(x_train, c_train).mean().item(), D(x_held, c_held).mean().item()
    assert out["d_train_real"] == pytest.approx(want_train, abs=1e-6)
    assert out["d_heldout_real"] == pytest.approx(want_held, abs=1e-6)
    assert out["d_overfit_gap"] == pytest.approx(want_train - want_held, abs=1e-6)
    _reset_accelerate()
    off = build_trainer(compose_config([*DIGITS, "train.heldout_images=0"])[0], str(tmp_path / "off"))
    assert off.overfitting_monitor() == {}
    _reset_accelerate()
    synthetic = build_trainer(compose_config(TINY)[0], str(tmp_path / "synthetic"))  # no held-out split
    assert synthetic.overfitting_monitor() == {}
