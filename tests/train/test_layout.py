"""The memory layout a run trains in: NHWC on CPU where the networks are faster so, and the same numbers.

Why NHWC on CPU: oneDNN's channels-last convolutions; measured per cell in docs/performance.md.
R3GAN's discriminator opts out (its grouped convolutions' double backward is slower in NHWC).
"""

from __future__ import annotations

import pytest
import torch

from transgan.registry import build_discriminator, channels_last_on_cpu
from transgan.runs.state import saved_channels_last
from transgan.train.build import build_trainer
from transgan.train.config import compose_config

TINY = ["dataset=digits", "model.resolution=16", "train.batch_size=4", "train.cpu_threads=1", "eval.metrics=[]",
        "dataset.num_workers=0"]


def _nhwc(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("model, expected", [
    (["model=cwgan_gp"], True), (["model=stylegan2"], True), (["model=swin_gan"], True),
    (["model=r3gan"], False), (["model=transgan", "model/discriminator=r3gan"], False)])
def test_the_cpu_default_layout_follows_the_networks(model, expected, tmp_path):
    cfg, _ = compose_config([*model, *TINY, f"hydra.run.dir={tmp_path}"])
    assert channels_last_on_cpu(cfg.model) is expected
    if model == ["model=cwgan_gp"]:  # the trainer builds in it, and an explicit setting wins
        trainer = build_trainer(cfg, str(tmp_path / "a"))
        assert saved_channels_last(trainer.state.state_dict(rng=[])) is True
        convs = [p for p in trainer.state.D.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2:] != (1, 1)]
        assert convs and all(_nhwc(p) for p in convs)
        cfg, _ = compose_config([*model, *TINY, "train.channels_last=false", f"hydra.run.dir={tmp_path / 'b'}"])
        trainer = build_trainer(cfg, str(tmp_path / "b"))
        assert saved_channels_last(trainer.state.state_dict(rng=[])) is False


@pytest.mark.parametrize("name", ["cwgan_gp", "stylegan2", "r3gan"])
def test_nhwc_computes_the_same_critic_value_gradients_and_r1_penalty(name):
    """D's output, its R1 penalty (a double backward) and every parameter gradient, NCHW against NHWC."""
    cfg, _ = compose_config([f"model={name}", "dataset=digits"])
    r = int(cfg.model.resolution)
    torch.manual_seed(0)
    D = build_discriminator(cfg.model.discriminator, img_resolution=r, img_channels=1, num_classes=10)
    x, c = torch.randn(4, 1, r, r), torch.randint(0, 10, (4,))
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        D.to(memory_format=layout).zero_grad()
        xx = x.contiguous(memory_format=layout).requires_grad_(True)
        out = D(xx, c)
        (g,) = torch.autograd.grad(out.sum(), xx, create_graph=True)
        penalty = g.square().sum(dim=(1, 2, 3)).mean()
        (out.mean() + penalty).backward()
        results.append((out.detach(), penalty.detach(), [p.grad.clone() for p in D.parameters()]))
    (out_a, pen_a, grads_a), (out_b, pen_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pen_b, pen_a, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
