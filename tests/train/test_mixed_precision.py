"""bf16 training steps on CPU: the regularization passes run, in the precision the loss asks for."""

from __future__ import annotations

import pytest
import torch

from transgan.train.config import compose_config
from transgan.train.build import build_trainer
from transgan.train.trainer import Trainer

# StyleGAN2 with lazy R1 and lazy path length both due every second step (schedule period 2).
STYLE = ["model=stylegan2", "loss=ns_r1_pl", "train.n_critic=1", "loss.r1_interval=2", "loss.pl_interval=2",
         "dataset=synthetic", "dataset.channels=3", "train.batch_size=4", "train.mixed_precision=bf16",
         "train.device=cpu", "train.cpu_threads=1"]


def _trainer(tmp_path, *overrides: str) -> Trainer:
    cfg, _ = compose_config([*STYLE, *overrides])
    return build_trainer(cfg, str(tmp_path / "run"))


@pytest.mark.parametrize("reg_precision", ["float32", "bf16"])
def test_bf16_steps_run_every_regularizer(tmp_path, reg_precision):
    trainer = _trainer(tmp_path, f"loss.reg_precision={reg_precision}")
    assert trainer.schedule_period == 2
    stats = {}
    for _ in range(trainer.schedule_period):
        stats.update(trainer.train_step())
    # Path length differentiates G's images by the ws G returns: they must be the ws that made them.
    for key in ("loss_d", "r1", "loss_g", "pl_length", "loss_g_reg"):
        assert torch.isfinite(stats[key]), key
    assert not (tmp_path / "run").exists()  # building and stepping a trainer writes nothing


def _activation_dtypes(net: torch.nn.Module, x: torch.Tensor) -> set[torch.dtype]:
    """dtypes of every leaf module's output in one forward of ``net``."""
    seen: set[torch.dtype] = set()
    leaves = [m for m in net.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype) if isinstance(o, torch.Tensor) else None)
             for m in leaves]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_networks_follow_the_phase_autocast_only(tmp_path):
    trainer = _trainer(tmp_path)
    x = torch.zeros(4, 3, 32, 32)
    # Inside a phase's autocast D computes in bf16; with autocast off (a float32 penalty pass) in
    # float32 throughout: Accelerate's own autocast wrapper around forward must not turn it back on.
    with trainer.accelerator.autocast():
        assert torch.bfloat16 in _activation_dtypes(trainer.D, x)
    with torch.autocast("cpu", enabled=False):
        assert _activation_dtypes(trainer.D, x) == {torch.float32}
