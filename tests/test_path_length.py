"""Path-length regularization, style mixing by the loss, and their state, against closed forms.

The toy generator's synthesis is linear, images = A ws, so its Jacobian is A and the path
length has the closed form ||A^T y|| written out below (no autograd in the reference).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from omegaconf import OmegaConf

from transgan.losses import (GANLoss, PhaseInputs, build_loss, lazy_regularization_hparams, path_length_penalty,
                             path_lengths)
from transgan.nn.style import StyleGenerator

NUM_WS, W_DIM, C, H, W = 3, 4, 2, 3, 5


class LinearSynthesis(nn.Module):
    """images[b] = A @ ws[b].flatten(), reshaped to [C, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(C * H * W, NUM_WS * W_DIM, dtype=torch.float64) * 0.3)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        return (ws.double().flatten(1) @ self.A.t()).reshape(-1, C, H, W)


class ToyStyleGenerator(StyleGenerator):
    """A style generator (the StyleGenerator base, as every style backbone) with linear synthesis."""

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__(z_dim=6, w_dim=W_DIM, num_ws=NUM_WS, num_classes=num_classes, img_resolution=H,
                         img_channels=C, mapping_layers=1)
        self.synthesis = LinearSynthesis()
        self.calls: list[dict] = []

    def forward(self, z, c=None, **kwargs):
        self.calls.append(kwargs)
        return super().forward(z, c, **kwargs)


class PlainGenerator(nn.Module):
    z_dim = 6

    def forward(self, z, c=None):
        return z[:, :1, None, None].expand(-1, C, H, W)


class ConstantCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.ones(()))

    def forward(self, x, c=None):
        return self.v * x.flatten(1).mean(1).float()


def closed_form_lengths(A: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_b = sqrt(mean_i sum_j (A^T y_b)[i, j]^2) for images = A ws."""
    grads = (y.flatten(1) @ A).reshape(-1, NUM_WS, W_DIM)
    return grads.pow(2).sum(dim=2).mean(dim=1).sqrt()


def test_path_lengths_match_closed_form_for_a_linear_synthesis():
    G = ToyStyleGenerator()
    ws = G.mapping(torch.randn(5, 6), None).double()
    images = G.synthesis(ws)
    y = torch.randn(5, C, H, W, dtype=torch.float64)
    assert torch.allclose(path_lengths(images, ws, y), closed_form_lengths(G.synthesis.A, y))
    assert torch.equal(path_length_penalty(torch.tensor([1.0, 3.0]), torch.tensor(2.0)), torch.tensor([1.0, 1.0]))


def test_g_reg_penalty_equals_direct_computation_on_a_shrunk_batch():
    torch.manual_seed(0)  # not the suite's leftover RNG state: one draw left an entry near 0 failing rtol alone
    G = ToyStyleGenerator()
    loss = GANLoss("ns", pl_weight=2.0, pl_interval=4, pl_batch_shrink=2, pl_decay=0.01)
    z = torch.randn(6, 6)
    torch.manual_seed(1)
    total, stats = loss.g_reg(G, None, PhaseInputs(z=z, c_fake=None))
    total.backward()
    got_grad = G.synthesis.A.grad.clone()

    # Direct: the first 6 // 2 samples, noise y ~ N(0, I) / sqrt(H W) drawn after the same seed.
    A = G.synthesis.A.detach().clone().requires_grad_(True)
    torch.manual_seed(1)
    y = torch.randn(3, C, H, W).double() / math.sqrt(H * W)   # drawn like the images: float32
    L = closed_form_lengths(A, y)
    pl_mean = 0.0 + 0.01 * (L.detach().mean() - 0.0)          # lerp(0, mean L, decay)
    expected = 2.0 * ((L - pl_mean) ** 2).mean() * 4           # pl_weight x penalty x interval
    expected.backward()
    assert torch.allclose(total.double(), expected, rtol=1e-5)
    assert torch.allclose(loss.pl_mean.double(), pl_mean, rtol=1e-5)
    assert torch.allclose(stats["pl_length"].double(), L.mean(), rtol=1e-5)
    # float32 against float64: relative to the gradient's scale, not only per entry
    torch.testing.assert_close(got_grad, A.grad, rtol=1e-4, atol=1e-5 * float(A.grad.abs().max()))

    # The running mean continues from its state: pl_mean <- pl_mean + decay (mean L - pl_mean).
    torch.manual_seed(2)
    loss.g_reg(G, None, PhaseInputs(z=z, c_fake=None))
    torch.manual_seed(2)
    L2 = closed_form_lengths(A.detach(), torch.randn(3, C, H, W).double() / math.sqrt(H * W))
    assert torch.allclose(loss.pl_mean.double(), pl_mean + 0.01 * (L2.mean() - pl_mean), rtol=1e-5)


def test_path_length_every_step_is_part_of_g_main_unscaled():
    G, D = ToyStyleGenerator(), ConstantCritic()
    loss = GANLoss("ns", pl_weight=2.0, pl_interval=1)
    assert loss.g_reg_interval is None and "g_reg" not in [p.name for p in loss.phases()]
    z = torch.randn(4, 6)
    torch.manual_seed(3)
    total, stats = loss.g_main(G, D, PhaseInputs(z=z, c_fake=None))
    assert {"loss_g", "loss_g_adv", "pl_penalty", "pl_mean"} <= set(stats)
    assert torch.allclose(total, stats["loss_g_adv"] + 2.0 * stats["pl_penalty"])


def test_loss_mixes_styles_of_style_generators_in_every_generation():
    G, D = ToyStyleGenerator(num_classes=3), ConstantCritic()
    z, c = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    loss = GANLoss("ns", style_mixing_prob=0.9, pl_weight=1.0)
    loss.g_main(G, D, PhaseInputs(z=z, c_fake=c))
    loss.d_main(G, D, PhaseInputs(torch.randn(4, C, H, W), c, z, c))
    loss.g_reg(G, None, PhaseInputs(z=z, c_fake=c))
    assert [call["style_mixing_prob"] for call in G.calls] == [0.9, 0.9, 0.9]
    assert [call["return_ws"] for call in G.calls] == [False, False, True]


def test_mixing_with_probability_one_changes_the_ws_after_the_crossover():
    G = ToyStyleGenerator().eval()
    z = torch.randn(4, 6)
    _, ws = G(z, style_mixing_prob=1.0, style_mixing_crossover=1, return_ws=True)
    first = G.mapping(z, None)
    assert torch.equal(ws[:, :1], first[:, :1])
    assert not torch.allclose(ws[:, 1:], first[:, 1:]) and torch.equal(ws[:, 1], ws[:, 2])


def test_path_length_needs_a_style_generator():
    loss = GANLoss("ns", pl_weight=2.0)
    with pytest.raises(TypeError, match="style-based generator"):
        loss.g_reg(PlainGenerator(), None, PhaseInputs(z=torch.randn(4, 6), c_fake=None))
    # Non-style generators are simply not mixed.
    G, D = PlainGenerator(), ConstantCritic()
    GANLoss("ns", style_mixing_prob=0.9).g_main(G, D, PhaseInputs(z=torch.randn(4, 6), c_fake=None))


def test_pl_mean_survives_a_checkpoint_round_trip():
    G, z = ToyStyleGenerator(), torch.randn(6, 6)
    straight = GANLoss("ns", pl_weight=2.0)
    split = GANLoss("ns", pl_weight=2.0)
    torch.manual_seed(4)
    straight.g_reg(G, None, PhaseInputs(z=z, c_fake=None))
    torch.manual_seed(4)
    split.g_reg(G, None, PhaseInputs(z=z, c_fake=None))
    assert straight.pl_mean != 0

    buffer = io.BytesIO()
    torch.save({"loss": split.state_dict()}, buffer)
    buffer.seek(0)
    resumed = GANLoss("ns", pl_weight=2.0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["loss"])
    assert torch.equal(resumed.pl_mean, split.pl_mean)

    torch.manual_seed(5)
    straight.g_reg(G, None, PhaseInputs(z=z, c_fake=None))
    torch.manual_seed(5)
    resumed.g_reg(G, None, PhaseInputs(z=z, c_fake=None))
    assert torch.equal(resumed.pl_mean, straight.pl_mean)


def test_loss_state_is_refused_where_it_does_not_belong():
    with pytest.raises(ValueError, match="pl_mean"):
        GANLoss("ns").load_state_dict({"pl_mean": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="scalar"):
        GANLoss("ns", pl_weight=1.0).load_state_dict({"pl_mean": torch.zeros(2)})
    assert GANLoss("ns").state_dict() == {}


@pytest.mark.parametrize("bad", [{"pl_weight": -1.0}, {"pl_interval": 0}, {"pl_batch_shrink": 1.5},
                                 {"style_mixing_prob": 1.5}, {"pl_decay": -0.1}, {"pl_wieght": 2.0}])
def test_bad_path_length_options_are_refused(bad):
    from transgan.errors import ConfigError

    with pytest.raises(ConfigError, match=next(iter(bad))):
        GANLoss("ns", **bad)


# ----------------------------------------------------------------------------- configs and lazy schedule

def test_ns_r1_pl_config_has_the_stylegan2_defaults(repo_root: Path):
    loss = build_loss(OmegaConf.load(repo_root / "configs" / "loss" / "ns_r1_pl.yaml"))
    assert loss.adversarial == "ns"
    assert (loss.r1_gamma, loss.r1_interval, loss.style_mixing_prob) == (10.0, 16, 0.9)
    assert (loss.pl_weight, loss.pl_interval, loss.pl_batch_shrink, loss.pl_decay) == (2.0, 4, 2, 0.01)
    assert (loss.d_reg_interval, loss.g_reg_interval) == (16, 4)


def test_every_loss_config_lists_every_option(repo_root: Path):
    for path in sorted((repo_root / "configs" / "loss").glob("*.yaml")):
        keys = set(OmegaConf.load(path).keys())
        assert keys == {"name", *GANLoss.OPTIONS}, path.name


def test_lazy_regularization_corrections_for_the_stylegan2_intervals():
    # G regularized every 4 steps: c = 4/5; D every 16: c = 16/17 (Karras et al. 2020, appendix B).
    lr, betas = lazy_regularization_hparams(0.0025, (0.0, 0.99), GANLoss("ns", pl_weight=2.0).g_reg_interval)
    assert lr == pytest.approx(0.002)
    assert betas == pytest.approx((0.0, 0.99 ** 0.8))
    assert betas[1] == pytest.approx(0.991992, abs=1e-6)
    lr, betas = lazy_regularization_hparams(0.0025, (0.0, 0.99), GANLoss("ns", r1_gamma=1.0).d_reg_interval)
    assert lr == pytest.approx(0.0025 * 16 / 17)
    assert betas[1] == pytest.approx(0.990585, abs=1e-6)


# ----------------------------------------------------------------------------- across processes

def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(10 + rank)                # each process: its own generator and batch
        G, loss = ToyStyleGenerator(), GANLoss("ns", pl_weight=2.0)
        _, stats = loss.g_reg(G, None, PhaseInputs(z=torch.randn(4, 6), c_fake=None))
        torch.save({"pl_length": stats["pl_length"], "pl_mean": loss.pl_mean}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes start and import torch: tens of seconds on a busy 2-core machine
def test_pl_mean_is_averaged_over_processes(tmp_path: Path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.allclose(r0["pl_length"], r1["pl_length"])
    expected = 0.01 * (r0["pl_length"] + r1["pl_length"]) / 2
    assert torch.allclose(r0["pl_mean"], expected) and torch.allclose(r1["pl_mean"], expected)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_training_run_saves_pl_mean_and_resume_continues_from_it(repo_root: Path, tmp_path: Path):
    import json
    import subprocess
    import sys

    from transgan.runs.checkpoint import load_checkpoint

    run = tmp_path / "run"
    common = ["model=stylegan2", "loss=ns_r1_pl", "train.n_critic=1", "train.batch_size=8", "train.ckpt_every=2",
              "train.log_every=1", "eval.num_samples=20", "dataset.num_workers=0",
              "loss.pl_interval=2", "loss.r1_interval=2", "train.lr_g=2e-4", "train.betas_g=[0,0.9]"]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    for args in ([*common, "train.max_steps=2", f"hydra.run.dir={run}"], [f"resume={run}", "train.max_steps=4"]):
        out = subprocess.run([sys.executable, "tools/train.py", *args], cwd=repo_root, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
    saved = load_checkpoint(run / "checkpoints" / "step-000000002.pt")["loss"]["pl_mean"]
    final = load_checkpoint(run / "checkpoints" / "step-000000004.pt")["loss"]["pl_mean"]
    assert saved > 0
    # The resumed run's path-length pass at step 4 continued from the saved mean: lerp(saved, L, 0.01).
    record = next(r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                  if r.get("step") == 4 and "pl_length" in r)
    assert float(final) == pytest.approx(float(saved) + 0.01 * (record["pl_length"] - float(saved)), rel=1e-5)
    state = load_checkpoint(run / "checkpoints" / "step-000000004.pt")
    # lazy-regularization correction of the lr/betas set above (2e-4, (0, 0.9)): G every 2 steps, D every 2.
    assert state["opt_G"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 2 / 3)
    assert state["opt_G"]["param_groups"][0]["betas"][1] == pytest.approx(0.9 ** (2 / 3))
