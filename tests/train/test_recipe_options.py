"""train.batch_size_g (G's own batch) and train.ema_beta (a fixed G_ema decay): TransGAN's public recipes."""

from __future__ import annotations

import copy

import pytest
import torch

from transgan.errors import ConfigError
from tests.train.phases import wrap_phase
from transgan.train.config import compose_config
from transgan.train.build import build_trainer
from transgan.train.trainer import Trainer

SMALL = ["model=cwgan_gp", "dataset=synthetic", "dataset.channels=3", "train.batch_size=4", "train.n_critic=2",
         "train.device=cpu", "train.cpu_threads=1"]


def _trainer(tmp_path, *overrides: str) -> Trainer:
    cfg, _ = compose_config([*SMALL, *overrides])
    return build_trainer(cfg, str(tmp_path / "run"))


def test_generator_steps_use_their_own_batch_in_accumulated_micro_batches(tmp_path):
    trainer = _trainer(tmp_path, "train.batch_size_g=8", "train.grad_accum=2")
    seen: dict[str, list[int]] = {"d_main": [], "g_main": []}
    for phase in seen:
        def spy(run, _phase=phase):
            def counted(G, D, inputs):
                seen[_phase].append(inputs.z.shape[0])
                return run(G, D, inputs)
            return counted

        wrap_phase(trainer, phase, spy)
    trainer.train_step()
    assert seen == {"d_main": [2, 2, 2, 2], "g_main": [4, 4]}  # D: 2 steps x 2 micro-batches of 4/2; G: 8/2 x 2
    assert trainer.progress.images_seen == 8  # real images shown to D: n_critic x batch_size


def test_a_fixed_ema_decay_replaces_the_half_life(tmp_path):
    trainer = _trainer(tmp_path, "train.ema_beta=0.9")
    before = [p.clone() for p in trainer.G_ema.parameters()]
    trainer.train_step()
    G = trainer.accelerator.unwrap_model(trainer.G)
    for e, b, p in zip(trainer.G_ema.parameters(), before, G.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach(), rtol=0, atol=1e-6)
    # without it: the half-life formula (ema_kimg with its ramp-up), a different decay
    other = _trainer(tmp_path / "b", "train.ema_kimg=0.001", "train.ema_rampup=null")
    start = copy.deepcopy(other.G_ema)
    other.train_step()
    G = other.accelerator.unwrap_model(other.G)
    beta = 0.5 ** (4 / 1.0)
    for e, b, p in zip(other.G_ema.parameters(), start.parameters(), G.parameters()):
        torch.testing.assert_close(e, beta * b + (1 - beta) * p.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("train.batch_size_g=6", "train.batch_size_g=6 must be divisible by processes x grad_accum = 1 x 4"),
    ("train.ema_beta=1.0", "train.ema_beta must be in"),
    ("train.batch_size_g=0", "train.batch_size_g must be >= 1"),
])
def test_impossible_values_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _trainer(tmp_path, "train.grad_accum=4", override)
