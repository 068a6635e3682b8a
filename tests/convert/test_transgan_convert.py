"""Official TransGAN weights through the converter give the official outputs (golden fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from transgan.convert.transgan_official import convert_transgan
from transgan.convert.unpickle import ConvertError, load_official
from transgan.errors import CheckpointError
from transgan.registry import build_discriminator, build_generator
from transgan.runs.state import CHECKPOINT_KEYS
from transgan.train.config import compose_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
SMALL = FIXTURES / "transgan_cifar10_small.safetensors"


def _split(prefix: str) -> dict[str, torch.Tensor]:
    tensors = load_file(SMALL)
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _official_checkpoint(tmp_path: Path) -> Path:
    """The fixture's weights in train_derived.py's checkpoint layout (DDP 'module.' keys), in a file named as
    that script names it: ``checkpoint``, no suffix (the public file is ``cifar_checkpoint``)."""
    G, D = _split("G."), _split("D.")
    path = tmp_path / "checkpoint"
    torch.save({"epoch": 1, "gen_model": "ViT_custom_rp", "dis_model": "ViT_custom_scale2_rp_noise",
                "gen_state_dict": {f"module.{k}": v for k, v in G.items()},
                "avg_gen_state_dict": {f"module.{k}": v for k, v in G.items()},
                "dis_state_dict": {f"module.{k}": v for k, v in D.items()},
                "best_fid": 1e4, "path_helper": {"prefix": "logs/x"}, "fixed_z": torch.zeros(2, 16)}, path)
    return path


def test_converted_pair_equals_the_official_outputs(tmp_path):
    """G images for fixed z and D logits for fixed images match the official code to 1e-5 (float32)."""
    conv = convert_transgan(load_official(_official_checkpoint(tmp_path)))
    io = _split("io.")
    with torch.no_grad():
        images = conv.G_ema(io["z"])
        logits = conv.D(io["x"])
    assert images.shape == io["images"].shape
    assert (images - io["images"]).abs().max().item() <= 1e-5
    assert (logits - io["logits"].squeeze(1)).abs().max().item() <= 1e-5
    # The test can fail: the default tanh output is not the official linear one.
    assert (torch.tanh(images) - io["images"]).abs().max().item() > 1e-2
    # Parameter counts equal the official ones (every fixture tensor is an official parameter).
    for net, prefix in ((conv.G_ema, "G."), (conv.D, "D.")):
        assert sum(p.numel() for p in net.parameters()) == sum(v.numel() for v in _split(prefix).values())


def test_full_cifar10_configuration_has_the_official_parameter_counts():
    """transgan_paper composes to models with exactly the public CIFAR-10 G and D parameter counts."""
    official = json.loads((FIXTURES / "transgan_cifar10_counts.json").read_text())["params"]
    cfg, _ = compose_config(["experiment=transgan_paper", "dataset=cifar10"])
    assert cfg.dataset.conditional is False  # the public CIFAR-10 run is unconditional
    with torch.device("meta"):  # shapes only: nothing is allocated or initialized for real
        G = build_generator(OmegaConf.to_container(cfg.model.generator), 32, 3, 0)
        D = build_discriminator(OmegaConf.to_container(cfg.model.discriminator), 32, 3, 0)
    assert sum(p.numel() for p in G.parameters()) == official["G"]
    assert sum(p.numel() for p in D.parameters()) == official["D"]


def test_foreign_and_incomplete_checkpoints_are_named(tmp_path):
    """A checkpoint of something else, or with a tensor missing or unknown, is refused saying what is wrong."""
    with pytest.raises(ConvertError, match="not a TransGAN checkpoint"):
        convert_transgan({"g_ema": {}})
    G = _split("G.")
    del G["l1.weight"]
    with pytest.raises(ConvertError, match="no 'l1.weight'"):
        convert_transgan({"gen_state_dict": G})
    G = _split("G.")
    G["extra.weight"] = torch.zeros(1)
    with pytest.raises(ConvertError, match="does not know.*extra.weight"):
        convert_transgan({"gen_state_dict": G})
    G = _split("G.")
    G["l1.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="TransGAN G: to_tokens.weight holds 1 non-finite value"):
        convert_transgan({"gen_state_dict": G})


def test_fixture_records_its_official_commit():
    with safe_open(SMALL, "pt") as f:
        assert len(f.metadata()["commit"]) == 40


def _tool(repo_root: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool", repo_root / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_convert_tool_writes_a_run_that_loads_and_fine_tunes(tmp_path, repo_root, capsys):
    """tools/convert.py: the run's G_ema gives the official images; resume= trains one more step from it."""
    from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint
    from transgan.runs.load import load_source

    run = tmp_path / "run"
    small = ["experiment=transgan_paper", "dataset=synthetic", "dataset.size=8", "train.batch_size=4",
             "train.sample_every=1000", "train.eval_every=1000", "train.ckpt_every=1", "train.log_every=1"]
    assert _tool(repo_root, "convert")([str(_official_checkpoint(tmp_path)), "--out", str(run), *small]) == 0
    loaded = load_source(run)
    io = _split("io.")
    with torch.no_grad():
        assert (loaded.G(io["z"]) - io["images"]).abs().max().item() <= 1e-5
    assert _tool(repo_root, "train")([f"resume={run}", "train.max_steps=1", "train.n_critic=1"]) == 0
    trained = load_checkpoint(latest_checkpoint(run))
    assert trained["progress"]["step"] == 1
    # One owner of the layout: the converted checkpoint and the trained one have the same entries.
    converted = load_checkpoint(run / "checkpoints" / "step-000000000.pt")
    assert _layout(converted) == _layout(trained)
    assert tuple(trained) == CHECKPOINT_KEYS
    # A second conversion into the same folder is refused; so is a file of another kind.
    assert _tool(repo_root, "convert")([str(_official_checkpoint(tmp_path)), "--out", str(run), *small]) == 2
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert _tool(repo_root, "convert")([str(other), "--out", str(tmp_path / 'run2')]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "not a checkpoint this tool knows" in err and "Traceback" not in err


def _layout(state: dict) -> dict:
    """A checkpoint's entries and their kinds: nested keys, tensors as their dtype (not values or shapes)."""
    def kind(value):
        if isinstance(value, dict):
            return {k: kind(v) for k, v in value.items()} if len(value) < 50 else f"dict of {len(value)}"
        if isinstance(value, torch.Tensor):
            return str(value.dtype)
        if isinstance(value, (list, tuple)):
            return [kind(v) for v in value[:1]]
        return type(value).__name__

    return {k: kind(v) for k, v in state.items() if k not in ("G", "D", "G_ema", "opt_G", "opt_D", "config")}
