"""Official stylegan2-ada-pytorch snapshots through the converter give the official outputs (golden fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.convert.official_pickle import BUFFERS, nets_from_state_dict, write_snapshot
from transgan.convert.stylegan2_ada import convert_stylegan2_ada
from transgan.convert.unpickle import ConvertError, load_official
from transgan.registry import build_generator

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "stylegan2_ada_small.safetensors"


def _part(prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in load_file(FIXTURE).items() if k.startswith(prefix)}


def _snapshot(tmp_path: Path, name: str) -> Path:
    """The fixture's networks as a snapshot pickle in the official format (with placeholder source)."""
    c_dim = 5 if name == "cond" else 0
    G = nets_from_state_dict("Generator", _part(f"{name}.G."), z_dim=16, c_dim=c_dim, img_channels=3)
    D = nets_from_state_dict("Discriminator", _part(f"{name}.D."), c_dim=c_dim, img_channels=3)
    path = tmp_path / f"network-snapshot-{name}.pkl"
    write_snapshot(path, {"G": G, "D": D, "G_ema": G, "augment_pipe": None, "training_set_kwargs": {"resolution": 16}})
    return path


def _params(sd: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in sd.items() if k.rsplit(".", 1)[-1] not in BUFFERS)


@pytest.mark.parametrize("name", ["uncond", "cond"])
def test_converted_networks_equal_the_official_outputs(tmp_path, name):
    """G (noise const, no mixing, psi 1) and D (class-conditional too) match the official code to 1e-5."""
    conv = convert_stylegan2_ada(load_official(_snapshot(tmp_path, name)))
    io = _part(f"{name}.io.")
    c = io.get("labels")
    with torch.no_grad():
        images = conv.G_ema(io["z"], c, noise_mode="const")
        logits = conv.D(io["x"], c)
    assert (images - io["images"]).abs().max().item() <= 1e-5
    assert (logits - io["logits"].squeeze(1)).abs().max().item() <= 1e-5
    assert conv.num_classes == (5 if name == "cond" else 0)
    assert sum(p.numel() for p in conv.G_ema.parameters()) == _params(_part(f"{name}.G."))
    assert sum(p.numel() for p in conv.D.parameters()) == _params(_part(f"{name}.D."))
    # The test can fail: this project's default bilinear resampling differs at the borders.
    bilinear = build_generator(dict(conv.generator, resample="bilinear"), 16, 3, conv.num_classes).eval()
    bilinear.load_state_dict(conv.G_ema.state_dict())
    with torch.no_grad():
        assert (bilinear(io["z"], c, noise_mode="const") - io["images"]).abs().max().item() > 1e-3


def test_convert_tool_accepts_a_snapshot(tmp_path, repo_root):
    """tools/convert.py turns a conditional snapshot into a run directory whose G_ema gives the official images."""
    from tests.convert.test_transgan_convert import _tool
    from transgan.runs.load import load_source

    run = tmp_path / "run"
    overrides = ["model=stylegan2", "dataset=synthetic", "dataset.conditional=true", "dataset.num_classes=5"]
    assert _tool(repo_root, "convert")([str(_snapshot(tmp_path, "cond")), "--out", str(run), *overrides]) == 0
    loaded = load_source(run)
    io = _part("cond.io.")
    with torch.no_grad():
        images = loaded.G(io["z"], io["labels"], noise_mode="const")
    assert (images - io["images"]).abs().max().item() <= 1e-5


def test_snapshot_without_networks_or_with_unknown_tensors_is_named(tmp_path):
    with pytest.raises(ConvertError, match="not a stylegan2-ada snapshot"):
        convert_stylegan2_ada({"G_ema": {"w": torch.zeros(1)}})
    sd = _part("uncond.G.")
    sd["synthesis.b8.extra"] = torch.zeros(2)
    path = tmp_path / "odd.pkl"
    write_snapshot(path, {"G_ema": nets_from_state_dict("Generator", sd, z_dim=16, c_dim=0)})
    with pytest.raises(ConvertError, match="does not know.*synthesis.b8.extra"):
        convert_stylegan2_ada(load_official(path))


def test_paper256_preset_has_the_official_parameter_counts():
    """experiment=stylegan2_ada_paper256 builds G and D with exactly the official paper256 counts."""
    import json

    from omegaconf import OmegaConf

    from transgan.registry import build_discriminator
    from transgan.train.config import compose_config

    official = json.loads((FIXTURE.parent / "stylegan2_ada_counts.json").read_text())["paper256"]["params"]
    cfg, _ = compose_config(["experiment=stylegan2_ada_paper256", "dataset=synthetic"])
    with torch.device("meta"):
        G = build_generator(OmegaConf.to_container(cfg.model.generator), 256, 3, 0)
        D = build_discriminator(OmegaConf.to_container(cfg.model.discriminator), 256, 3, 0)
    assert (sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters())) == (
        official["G"], official["D"])
