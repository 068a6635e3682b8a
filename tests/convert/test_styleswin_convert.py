"""Official StyleSwin generator weights through the converter give the official images (golden fixture)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from transgan.convert.styleswin import convert_styleswin
from transgan.convert.unpickle import ConvertError, load_official
from transgan.registry import build_discriminator, build_generator
from transgan.train.config import compose_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
SMALL = FIXTURES / "styleswin_g_small.safetensors"


def _g() -> dict[str, torch.Tensor]:
    return {k[2:]: v for k, v in load_file(SMALL).items() if k.startswith("G.")}


def _d() -> dict[str, torch.Tensor]:
    return {k[2:]: v for k, v in load_file(SMALL).items() if k.startswith("D.")}


def _io() -> dict[str, torch.Tensor]:
    return {k[3:]: v for k, v in load_file(SMALL).items() if k.startswith("io.")}


def _official_checkpoint(tmp_path: Path, **args) -> Path:
    """The fixture in train_styleswin.py's checkpoint layout, argparse.Namespace included."""
    path = tmp_path / "000100.pt"
    args = dict(dict(size=16, style_dim=32, n_mlp=2, r1=10.0, lr_mlp=0.01), **args)
    torch.save({"g": _g(), "g_ema": _g(), "d": _d(), "g_optim": {}, "d_optim": {},
                "args": argparse.Namespace(**args)}, path)
    return path


def test_converted_networks_equal_the_official_outputs(tmp_path):
    """G_ema on fixed latents and D (spectral norm) on fixed images match the official code to 1e-5."""
    conv = convert_styleswin(load_official(_official_checkpoint(tmp_path)))
    io = _io()
    with torch.no_grad():
        images = conv.G_ema(io["z"])
        logits = conv.D(io["x"])
    assert (images - io["images"]).abs().max().item() <= 1e-5
    assert (logits - io["logits"].squeeze(1)).abs().max().item() <= 1e-5
    d_official = sum(v.numel() for k, v in _d().items() if not k.endswith(("weight_u", "weight_v")))
    assert sum(p.numel() for p in conv.D.parameters()) == d_official
    official = sum(v.numel() for k, v in _g().items() if not k.endswith("upsample.kernel"))
    assert sum(p.numel() for p in conv.G_ema.parameters()) == official
    # The test can fail: this project's default to-RGB placement is another generator.
    cfg = dict(conv.generator, to_rgb="stage", resample="bilinear")
    assert sum(p.numel() for p in build_generator(cfg, 16, 3, 0).parameters()) != official


@pytest.mark.parametrize("size, overrides", [(256, []), (1024, ["model.resolution=1024",
                                                                 "model.generator.channel_base=16384"])])
def test_paper_preset_has_the_official_parameter_counts(size, overrides):
    """experiment=styleswin_paper gives the official G (multiplier 2 at 256, 1 at 1024) and D counts."""
    official = json.loads((FIXTURES / "styleswin_counts.json").read_text())[str(size)]
    cfg, _ = compose_config(["experiment=styleswin_paper", "dataset.channels=3", "dataset.conditional=false",
                             *overrides])
    with torch.device("meta"):
        G = build_generator(OmegaConf.to_container(cfg.model.generator), size, 3, 0)
        D = build_discriminator(OmegaConf.to_container(cfg.model.discriminator), size, 3, 0)
    assert sum(p.numel() for p in G.parameters()) == official["G"]
    assert sum(p.numel() for p in D.parameters()) == official["D"]


def test_convert_tool_writes_a_run_with_the_official_generator(tmp_path, repo_root):
    """The run's G_ema gives the official images, its D the official logits."""
    from tests.convert.test_transgan_convert import _tool
    from transgan.runs.load import load_source

    run = tmp_path / "run"
    overrides = ["experiment=styleswin_paper", "dataset=synthetic"]
    assert _tool(repo_root, "convert")([str(_official_checkpoint(tmp_path)), "--out", str(run), *overrides]) == 0
    with torch.no_grad():
        assert (load_source(run).G(_io()["z"]) - _io()["images"]).abs().max().item() <= 1e-5
    from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint

    D = build_discriminator(load_checkpoint(latest_checkpoint(run))["model"]["discriminator"], 16, 3, 0).eval()
    D.load_state_dict(load_checkpoint(latest_checkpoint(run))["D"])
    with torch.no_grad():
        assert (D(_io()["x"]) - _io()["logits"].squeeze(1)).abs().max().item() <= 1e-5


def test_missing_tensor_is_named():
    sd = _g()
    del sd["layers.1.upsample.reduction.weight"]
    with pytest.raises(ConvertError, match="no 'layers.1.upsample.reduction.weight'"):
        convert_styleswin({"g_ema": sd})


def test_lr_mlp_is_read_from_the_stored_args(tmp_path):
    """A checkpoint trained with --lr_mlp 0.05 gives the official images of a G built with lr_mlp 0.05
    (fixture styleswin_lr_mlp.safetensors; the same weights with 0.01 differ by 91)."""
    conv = convert_styleswin(load_official(_official_checkpoint(tmp_path, lr_mlp=0.05)))
    official = load_file(FIXTURES / "styleswin_lr_mlp.safetensors")
    with torch.no_grad():
        images = conv.G_ema(_io()["z"])
        images64 = conv.G_ema.double()(_io()["z"].double())
    assert conv.generator["mapping_lr_multiplier"] == 0.05
    # Its w and attention logits reach the hundreds: float32 agrees to ~2e-4 relative, float64 exactly.
    assert (images64 - official["io.images64"]).abs().max().item() <= 1e-6
    assert (images - official["io.images"]).abs().max().item() <= 1e-3 * official["io.images"].abs().max().item()
    assert (official["io.images"] - _io()["images"]).abs().max().item() > 1  # the test can fail
    # Logits this large attend across the shifted windows' rolled border through the official -100:
    # the exact mask (-inf) gives another image.
    exact = build_generator(dict(conv.generator, shift_mask="exact"), 16, 3, 0).double().eval()
    exact.load_state_dict(conv.G_ema.state_dict())
    with torch.no_grad():
        assert (exact(_io()["z"].double()) - official["io.images64"]).abs().max().item() > 1


@pytest.mark.parametrize("args, message", [
    (dict(attn_kind="linear"), r"args hold \['attn_kind'\].*may change the network"),
    (dict(style_dim=64), r"style_dim=64 \(the weights say 32\)"),
    (dict(size=32), r"size=32 \(the weights say 16\)")])
def test_unknown_or_contradicting_args_are_refused(tmp_path, args, message):
    with pytest.raises(ConvertError, match=message):
        convert_styleswin(load_official(_official_checkpoint(tmp_path, **args)))
