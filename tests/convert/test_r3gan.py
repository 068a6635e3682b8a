"""R3GAN: networks, loss and gradients equal to the official code (golden fixture), presets, the converter."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from transgan.convert.common import Tracked
from transgan.convert.r3gan import convert_r3gan, map_discriminator, map_generator
from transgan.convert.unpickle import ConvertError, load_official
from transgan.losses import GANLoss, PhaseInputs
from transgan.registry import build_discriminator, build_generator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
SMALL, PICKLE = FIXTURES / "r3gan_small.safetensors", FIXTURES / "r3gan_small.pkl"


def _io() -> dict[str, torch.Tensor]:
    return {k[3:]: v for k, v in load_file(SMALL).items() if k.startswith("io.")}


def _gamma() -> float:
    with safe_open(str(SMALL), "pt") as f:
        return float(f.metadata()["gamma"])


@pytest.fixture(scope="module")
def converted():
    return convert_r3gan(load_official(PICKLE))


def test_converted_networks_equal_the_official_outputs(converted):
    io = _io()
    c = io["c"].argmax(1)
    with torch.no_grad():
        assert (converted.G_ema(io["z"], c) - io["images"]).abs().max().item() <= 1e-5
        assert (converted.D(io["x"], c) - io["logits"]).abs().max().item() <= 1e-5
    assert converted.num_classes == 5 and converted.resolution == 16
    assert converted.generator["widths"] == [32, 24, 16] and converted.generator["blocks"] == [2, 1, 1]
    assert converted.discriminator["class_embed_dim"] == 32


def _official_grads(prefix: str, mapping, cfg: dict) -> dict[str, torch.Tensor]:
    grads = {k[len(prefix):]: v for k, v in load_file(SMALL).items() if k.startswith(prefix)}
    return mapping(Tracked(grads), cfg)


@pytest.mark.parametrize("penalty_pass", ["shared", "separate"])
def test_rpgan_r1_r2_losses_and_gradients_equal_the_official_trainer(converted, penalty_pass):
    """One D step and one G step of R3GAN/Trainer.py (gamma 0.5, no augmentation), term by term and gradient
    by gradient; the penalty from the adversarial term's own logits (shared) or a pass of its own (separate)."""
    official = {k[5:]: v for k, v in load_file(SMALL).items() if k.startswith("loss.")}
    io, gamma = _io(), _gamma()
    c = io["c"].argmax(1)
    loss = GANLoss("rpgan", r1_gamma=gamma, r1_interval=1, r2_gamma=gamma, penalty_pass=penalty_pass)
    G, D = converted.G, converted.D
    inputs = PhaseInputs(real=io["x"], c_real=c, z=io["z"], c_fake=torch.zeros_like(c))  # fakes take the reals' classes
    D.requires_grad_(True).zero_grad(set_to_none=True)
    total, stats = loss.d_main(G, D, inputs)
    total.backward()
    torch.testing.assert_close(stats["loss_d_adv"], official["d_adv"].mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["r1"], official["r1"].mean(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(stats["r2"], official["r2"].mean(), rtol=1e-4, atol=1e-7)
    want_total = (official["d_adv"] + gamma / 2 * (official["r1"] + official["r2"])).mean()
    torch.testing.assert_close(total.detach(), want_total, rtol=1e-5, atol=1e-6)
    want = _official_grads("grad_D.", map_discriminator, converted.discriminator)
    for name, p in D.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-4, atol=1e-6, msg=name)
    D.requires_grad_(False)
    G.requires_grad_(True).zero_grad(set_to_none=True)
    g_total, g_stats = loss.g_main(G, D, inputs)
    g_total.backward()
    torch.testing.assert_close(g_stats["loss_g"], official["g_adv"].mean(), rtol=1e-5, atol=1e-6)
    want = _official_grads("grad_G.", map_generator, converted.generator)
    for name, p in G.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("preset, official", [("r3gan_cifar10", "cifar10"), ("r3gan_ffhq256", "ffhq256")])
def test_presets_have_the_official_parameter_counts(preset, official):
    from transgan.train.config import compose_config

    counts = json.loads((FIXTURES / "r3gan_counts.json").read_text())["params"][official]
    cfg, _ = compose_config([f"experiment={preset}"])
    classes = 10 if cfg.dataset.conditional else 0
    res, channels = int(cfg.model.resolution), int(cfg.dataset.channels)
    with torch.device("meta"):
        G = build_generator(OmegaConf.to_container(cfg.model.generator), res, channels, classes)
        D = build_discriminator(OmegaConf.to_container(cfg.model.discriminator), res, channels, classes)
    assert (sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters())) == (counts["G"],
                                                                                               counts["D"])


def test_convert_tool_writes_a_run_that_generates_evaluates_and_resumes(tmp_path, repo_root):
    """tools/convert.py on the pickle the official save path wrote: eval, generate, serve's loader, resume=."""
    from tests.conftest import load_tool
    from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint
    from transgan.runs.load import load_source

    run = tmp_path / "run"
    small = ["model=r3gan", "loss=rpgan_r1r2", "recipe=none", "dataset=synthetic", "dataset.channels=3",
             "dataset.conditional=true", "dataset.num_classes=5", "dataset.size=8", "train.batch_size=4",
             "train.n_critic=1", "train.cpu_threads=1", "eval.metrics=[]"]
    assert load_tool("convert").main([str(PICKLE), "--out", str(run), *small]) == 0
    loaded = load_source(run)  # what eval, generate and serve load
    io = _io()
    with torch.no_grad():
        assert (loaded.G(io["z"], io["c"].argmax(1)) - io["images"]).abs().max().item() <= 1e-5
    assert load_tool("generate").main(["images", str(run), "--seeds", "0-1", "--out", str(tmp_path / "g.png")]) == 0
    assert load_tool("train").main([f"resume={run}", "train.max_steps=1"]) == 0
    assert load_checkpoint(latest_checkpoint(run))["progress"]["step"] == 1


def test_a_pickle_that_calls_an_allowed_class_with_arguments_or_anything_else_runs_nothing(tmp_path):
    class Sneaky:
        def __reduce__(self):
            import os
            return os.system, ("echo pwned > " + str(tmp_path / "pwned"),)

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"G": Sneaky()}))
    with pytest.raises(ConvertError, match="os.system|posix.system"):
        load_official(bad)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ConvertError, match="not an R3GAN snapshot"):
        convert_r3gan({"G_ema": {"w": torch.zeros(1)}})
