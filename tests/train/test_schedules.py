"""train.cosine (R3GAN's schedules) and the relativistic G step's own reals, in the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from tests.train.test_train_run import assert_same_tree
from transgan.errors import ConfigError
from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint
from transgan.train.build import build_trainer
from transgan.train.config import compose_config, resolve_run
from transgan.train.schedules import cosine_value

TINY = ["model=r3gan", "loss=rpgan_r1r2", "recipe=none", "dataset=synthetic", "dataset.channels=1", "dataset.size=64",
        "model.resolution=16", "model.generator.widths=[16,16,16]", "model.discriminator.widths=[16,16,16]",
        "model.generator.cardinalities=[4,4,4]", "model.discriminator.cardinalities=[4,4,4]",
        "model.generator.blocks=[1,1,1]", "model.discriminator.blocks=[1,1,1]", "train.batch_size=8",
        "train.n_critic=1", "train.cpu_threads=1", "dataset.num_workers=0", "eval.metrics=[]",
        "train.log_every=1", "train.sample_every=1000", "train.eval_every=1000", "train.ckpt_every=2"]
COSINE = ["train.cosine.images=48", "train.cosine.lr_g_end=1e-5", "train.cosine.lr_d_end=2e-5",
          "train.cosine.beta2_end=0.99", "train.cosine.gamma_end=0.01", "train.cosine.ema_kimg_end=5",
          "train.lr_g=2e-4", "train.lr_d=3e-4", "train.betas_g=[0.0,0.9]", "train.betas_d=[0.0,0.9]",
          "loss.r1_gamma=0.5", "loss.r2_gamma=0.5", "train.ema_kimg=0"]


def _official(n: float, base: float, final: float, total: float) -> float:
    """R3GAN's training_loop.cosine_decay_with_warmup without warm-up or hold, written out."""
    decay = 0.5 * (1 + math.cos(math.pi * n / total))
    return final if n > total else base + (1 - decay) * (final - base)


@pytest.mark.parametrize("n", [0, 1, 7.5, 24, 47, 48, 100])
def test_cosine_value_is_r3gans_schedule(n):
    assert cosine_value(n, 0.05, 0.005, 48) == pytest.approx(_official(n, 0.05, 0.005, 48), abs=1e-15)
    assert cosine_value(24, 2.0, 4.0, 48) == pytest.approx(3.0)  # halfway at half the images


def test_the_trainer_follows_every_schedule_from_the_images_before_each_step(tmp_path):
    cfg, _ = compose_config([*TINY, *COSINE, f"hydra.run.dir={tmp_path / 'run'}"])
    trainer = build_trainer(cfg, str(tmp_path / "run"))
    for step in range(7):
        before = trainer.progress.images_seen
        trainer.train_step()
        want = lambda a, b: _official(before, a, b, 48)  # noqa: E731
        assert trainer.opt_G.param_groups[0]["lr"] == pytest.approx(want(2e-4, 1e-5), rel=1e-12)
        assert trainer.opt_D.param_groups[0]["lr"] == pytest.approx(want(3e-4, 2e-5), rel=1e-12)
        assert trainer.opt_D.param_groups[0]["betas"] == pytest.approx((0.0, want(0.9, 0.99)))
        assert (trainer.loss.r1_gamma, trainer.loss.r2_gamma) == pytest.approx((want(0.5, 0.01),) * 2)
        assert trainer._ema_kimg == pytest.approx(want(0.0, 5.0))
        # the relativistic G step read reals of its own: two batches of data, one counted as shown to D
        assert trainer.progress.images_seen == 8 * (step + 1)
        assert trainer.data.position == 16 * (step + 1)


def test_a_scheduled_run_resumes_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    threads = torch.get_num_threads()
    try:
        for run, steps in ((straight, 4), (split, 2)):
            cfg, pattern, _ = resolve_run([*TINY, *COSINE, f"train.max_steps={steps}", f"hydra.run.dir={run}"])
            build_trainer(cfg, pattern).train()
        cfg, pattern, resume = resolve_run([f"resume={split}", "train.max_steps=4"])
        build_trainer(cfg, pattern, resume).train()
    finally:
        torch.set_num_threads(threads)
    a, b = load_checkpoint(latest_checkpoint(straight)), load_checkpoint(latest_checkpoint(split))
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "loss"):
        assert_same_tree(a[key], b[key], key)


@pytest.mark.parametrize("override, message", [
    ("train.cosine.lr_g_end=1e-5", "needs train.cosine.images"),
    ("train.cosine.ada_p_end=0.5", "needs train.augment=ada"),
])
def test_bad_schedules_are_refused(override, message):
    extra = [] if "needs train.cosine.images" in message else ["train.cosine.images=100"]
    with pytest.raises(ConfigError, match=message):
        compose_config([*TINY, override, *extra])


def test_a_relativistic_loss_refuses_a_g_batch_that_is_not_whole_d_batches(tmp_path):
    cfg, _ = compose_config([*TINY, "train.batch_size=8", "train.batch_size_g=12", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="batch_size_g=12 must be null or a multiple of train.batch_size=8"):
        build_trainer(cfg, str(tmp_path / "run"))


def test_a_relativistic_g_step_of_two_d_batches_pairs_each_fake_with_its_own_real(tmp_path):
    # batch_size_g = 2 x batch_size (the ablation's equal G images at n_critic 2): the G step draws two
    # loader batches, so every generated image has a real partner and the data moves on by two batches.
    cfg, _ = compose_config([*TINY, "train.batch_size=8", "train.batch_size_g=16", "train.n_critic=2",
                             f"hydra.run.dir={tmp_path / 'run'}"])
    trainer = build_trainer(cfg, str(tmp_path / "run"))
    seen = []
    real_batch = trainer._real_batch

    def counting() -> tuple:
        out = real_batch()
        seen.append(out[0].shape[0])
        return out
    latents = []
    sample_z = trainer._sample_z

    def sampling(n: int) -> tuple:
        latents.append(n)
        return sample_z(n)
    trainer._real_batch, trainer._sample_z = counting, sampling
    stats = trainer.train_step()
    assert seen == [8, 8, 8, 8]  # two D steps of one batch each, then the G step's two
    assert latents[-1] == 16  # the G step's fakes: one per real
    assert all(torch.isfinite(v).all() for v in stats.values())
