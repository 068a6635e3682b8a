"""train.grad_clip_d_main clips only D's main step (StyleSwin); train.grad_clip the other phases."""

from __future__ import annotations

import pytest

from transgan.errors import ConfigError
from transgan.train.config import compose_config
from transgan.train.build import build_trainer

SMALL = ["model=stylegan2", "loss=ns_r1", "train.n_critic=1", "loss.r1_interval=2", "dataset=synthetic",
         "dataset.channels=3", "train.batch_size=4", "train.device=cpu", "train.cpu_threads=1"]


def _clips(tmp_path, *overrides: str) -> list[float]:
    """max_norm of every clip_grad_norm_ call in the phases of one schedule period (D main, D reg, G main)."""
    cfg, _ = compose_config([*SMALL, *overrides])
    trainer = build_trainer(cfg, str(tmp_path / "run"))
    calls: list[float] = []
    real = trainer.accelerator.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return real(parameters, max_norm, *args, **kwargs)

    trainer.accelerator.clip_grad_norm_ = recording
    for _ in range(trainer.schedule_period):
        trainer.train_step()
    return calls


def test_d_main_clip_applies_to_that_phase_only(tmp_path):
    assert _clips(tmp_path, "train.grad_clip_d_main=5") == [5.0, 5.0]  # two D main steps, nothing else
    # d_main, g_main, d_main, d_reg, g_main: grad_clip for every phase but D's main steps.
    assert _clips(tmp_path, "train.grad_clip_d_main=5", "train.grad_clip=1") == [5.0, 1.0, 5.0, 1.0, 1.0]


def test_non_positive_clip_is_refused():
    with pytest.raises(ConfigError, match="grad_clip_d_main must be > 0"):
        compose_config([*SMALL, "train.grad_clip_d_main=0"])
