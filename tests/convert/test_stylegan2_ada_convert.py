"""Official stylegan2-ada-pytorch snapshots through the converter give the official outputs (golden fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.convert.official_pickle import BUFFERS, Net, nets_from_state_dict, write_snapshot
from transgan.commands.convert import default_overrides
from transgan.convert.stylegan2_ada import convert_stylegan2_ada, discriminator_config, map_discriminator
from transgan.convert.unpickle import ConvertError, load_official
from transgan.registry import build_discriminator, build_generator
from transgan.train.config import compose_config

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "stylegan2_ada_small.safetensors"
CIFAR = FIXTURE.parent / "stylegan2_ada_cifar.safetensors"  # make_stylegan2_ada_cifar.py


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


def test_convert_tool_accepts_a_snapshot(tmp_path, repo_root, capsys):
    """tools/convert.py turns a conditional snapshot into a run directory whose G_ema gives the official images;
    --verify prints the fixture's and the file's checks, all passing."""
    from tests.convert.test_transgan_convert import _tool
    from transgan.runs.load import load_source

    run = tmp_path / "run"
    overrides = ["model=stylegan2", "dataset=synthetic", "dataset.conditional=true", "dataset.num_classes=5"]
    assert _tool(repo_root, "convert")([str(_snapshot(tmp_path, "cond")), "--out", str(run), "--verify",
                                        *overrides]) == 0
    table = capsys.readouterr().out
    assert "stylegan2-ada fixture, --cfg=cifar (NVlabs d72cc7d): D logits" in table
    assert "your file: the run's G_ema images vs the converted G_ema" in table
    assert "your file: D parameters, official" in table and table.rstrip().endswith("all checks pass")
    rows = [line for line in table.splitlines() if line.endswith((" yes", " NO"))]
    assert len(rows) == 10 and all(line.endswith(" yes") for line in rows)
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


@pytest.mark.parametrize("preset, counts, resolution, classes", [
    ("experiment=stylegan2_ada_paper256 dataset=synthetic", "paper256", 256, 0),
    ("experiment=stylegan2_ada_cifar10", "cifar", 32, 10)])
def test_presets_have_the_official_parameter_counts(preset, counts, resolution, classes):
    """The paper256 and cifar presets build G and D with exactly the official configs' counts."""
    official = json.loads((FIXTURE.parent / "stylegan2_ada_counts.json").read_text())[counts]["params"]
    cfg, _ = compose_config(preset.split())
    with torch.device("meta"):
        G = build_generator(OmegaConf.to_container(cfg.model.generator), resolution, 3, classes)
        D = build_discriminator(OmegaConf.to_container(cfg.model.discriminator), resolution, 3, classes)
    assert (sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters())) == (
        official["G"], official["D"])


def _cifar(prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in load_file(CIFAR).items() if k.startswith(prefix)}


def test_cifar_config_snapshot_converts_and_matches(tmp_path):
    """A --cfg=cifar --cond=1 snapshot (the 'orig' D, minibatch-std groups of 32, 10 classes) gives the
    official images and logits; the preset that tools/convert.py composes for it is the cifar one."""
    path = tmp_path / "network-snapshot-cifar.pkl"
    G = nets_from_state_dict("Generator", _cifar("cifar.G."), z_dim=16, c_dim=10, img_channels=3)
    D = nets_from_state_dict("Discriminator", _cifar("cifar.D."), c_dim=10, img_channels=3)
    D.modules["b32"].attrs["architecture"] = "orig"  # as every official block records it
    D.modules["b4"].modules["mbstd"] = Net("MinibatchStdLayer", group_size=32, num_channels=1)
    write_snapshot(path, {"G": G, "D": D, "G_ema": G, "augment_pipe": None})
    conv = convert_stylegan2_ada(load_official(path))
    io = _cifar("io.")
    with torch.no_grad():
        images = conv.G_ema(io["z"], io["labels"], noise_mode="const")
        logits = conv.D(io["x"], io["labels"])
    assert (conv.discriminator["architecture"], conv.discriminator["mbstd_group_size"], conv.num_classes) == (
        "orig", 32, 10)
    assert (images - io["images"]).abs().max().item() <= 1e-5
    assert (logits - io["logits"].squeeze(1)).abs().max().item() <= 1e-5
    assert default_overrides("stylegan2-ada", conv) == ["experiment=stylegan2_ada_cifar10"]
    # The test can fail: the same weights in the residual D's layout are refused, not silently misread.
    with pytest.raises(ConvertError, match="say architecture 'resnet', its tensors are those of 'orig'"):
        D.modules["b32"].attrs["architecture"] = "resnet"
        write_snapshot(path, {"G": G, "D": D})
        convert_stylegan2_ada(load_official(path))


def test_skip_discriminator_matches(tmp_path):
    """The 'skip' D (the image enters every block and the epilogue) gives the official logits."""
    write_snapshot(tmp_path / "d.pkl", {"D": nets_from_state_dict("Discriminator", _cifar("skip.D."), c_dim=0)})
    rec = load_official(tmp_path / "d.pkl")["D"]
    cfg, res, classes = discriminator_config(rec)
    D = build_discriminator(cfg, res, 3, classes).eval()
    D.load_state_dict(map_discriminator(rec))
    io = _cifar("io.")
    with torch.no_grad():
        logits = D(io["x"])
    assert cfg["architecture"] == "skip"
    assert (logits - io["logits_skip"].squeeze(1)).abs().max().item() <= 1e-5
    with torch.no_grad():  # without the image inputs the logits differ: the test can fail
        D.image_inputs = None
        assert (D(io["x"]) - io["logits_skip"].squeeze(1)).abs().max().item() > 1e-3
