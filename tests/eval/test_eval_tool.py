"""tools/eval.py end to end on fixture datasets in CelebA and Flowers-102 layouts.

Inception cannot be downloaded here, so the protocol presets run with a small feature
extractor registered by this test (``eval.extractor=test-pool-tool``); everything else —
checkpoint loading, the real dataset loaders, torch-fidelity, eval.json — is the real path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from omegaconf import OmegaConf
from PIL import Image
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from tests.conftest import load_tool
from tests.data.fixtures import make_celeba, make_flowers102
from tests.eval.run_fixtures import tiny_math_attention_run
from transgan.registry import GENERATORS, register_generator
from transgan.runs.checkpoint import FORMAT, checkpoint_path, save_atomic
from transgan.runs.state import model_signature

EXTRACTOR = "test-pool-tool"
GENERATOR = "test-tiny-eval"
KEYS = ["fid", "kid_mean", "kid_std", "isc_mean", "isc_std", "precision", "recall"]


class PoolProjection(torch_fidelity.FeatureExtractorBase):
    """uint8 [B, 3, H, W] -> 4x4 average pool -> fixed random projection to 12 features."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.register_buffer("proj", torch.randn(48, 12, generator=torch.Generator().manual_seed(1)))

    @staticmethod
    def get_provided_features_list():
        return ("pool",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "pool"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        return (F.adaptive_avg_pool2d(x.double() / 255, 4).flatten(1).float() @ self.proj,)


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR, PoolProjection)


class TinyGenerator(nn.Module):
    """A registered generator small enough to sample in milliseconds."""

    def __init__(self, img_resolution, img_channels, num_classes, z_dim=8):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.embed = nn.Embedding(max(num_classes, 1), z_dim)
        self.net = nn.Linear(z_dim, img_channels * 8 * 8)

    def forward(self, z, c=None):
        if self.num_classes:
            z = z + self.embed(c)
        x = torch.tanh(self.net(z)).view(-1, self.img_channels, 8, 8)
        return F.interpolate(x, size=(self.img_resolution,) * 2, mode="nearest")


@pytest.fixture
def tiny_generator():
    register_generator(GENERATOR)(TinyGenerator)
    yield
    GENERATORS.pop(GENERATOR, None)  # leave the registry as other tests expect it


@pytest.fixture(scope="module")
def eval_tool():
    return load_tool("eval")


def write_run(run: Path, dataset: dict, resolution: int, num_classes: int, step: int = 4) -> Path:
    """A run directory as tools/train.py leaves it: config.yaml and one checkpoint (which records the classes)."""
    cfg = OmegaConf.create({
        "model": {"generator": {"name": GENERATOR}, "discriminator": {"name": "none"}, "resolution": resolution},
        "dataset": {**dataset, "resolution": resolution}, "loss": {}, "train": {}, "seed": 0, "resume": None})
    torch.manual_seed(0)
    G = TinyGenerator(resolution, dataset["channels"], num_classes)
    G_ema = TinyGenerator(resolution, dataset["channels"], num_classes)
    state = {"format": FORMAT, "progress": {"step": step, "images_seen": 64 * step}, "G": G.state_dict(),
             "G_ema": G_ema.state_dict(), "model": model_signature(cfg, num_classes),
             "class_names": [f"class {k}" for k in range(num_classes)], "config": OmegaConf.to_yaml(cfg)}
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    save_atomic(state, checkpoint_path(run, step))
    return run


def dataset_config(repo_root: Path, name: str, **changes) -> dict:
    cfg = OmegaConf.load(repo_root / "configs" / "dataset" / f"{name}.yaml")
    cfg.resolution = None
    return {**OmegaConf.to_container(cfg), **changes}


def small(tmp_path: Path) -> list[str]:
    return [f"eval.extractor={EXTRACTOR}", "eval.num_samples=16", "eval.batch_size=8", "eval.isc_splits=2",
            f"eval.cache_dir={tmp_path / 'cache'}", "eval.device=cpu", "eval.reference_workers=false"]


def test_celeba_layout_run_directory_end_to_end(tmp_path, repo_root, eval_tool, tiny_generator, capsys):
    root = make_celeba(tmp_path / "data", n=12)
    run = write_run(tmp_path / "run", dataset_config(repo_root, "celeba", root=str(root)), 64, num_classes=0)

    assert eval_tool.main([str(run), "eval=celeba64", *small(tmp_path)]) == 0
    printed = capsys.readouterr().out
    out = json.loads((run / "eval.json").read_text())
    for key in KEYS:
        assert np.isfinite(out[key]), key
        assert key in printed
    p = out["protocol"]
    assert p["extractor"] == EXTRACTOR and p["num_samples"] == 16 and p["seed"] == 0
    assert (p["dataset"], p["split"], p["reference_images"]) == ("celeba", "train", 8)  # fixture: 8 of 12 train
    assert p["resolution"] == 64 and "center crop 140x140" in p["resize"]["reference"]
    assert p["network"] == "G_ema" and p["step"] == 4 and p["truncation_psi"] == 1.0
    assert p["kid_subset_size"] == 8 and p["checkpoint"].endswith("step-000000004.pt")
    assert "weights_sha256" in p and p["versions"]["torch_fidelity"] == torch_fidelity.__version__


def _no_reference_build(*args, **kwargs):
    raise AssertionError("the reference dataset was built: the cache was not used")


def test_flowers102_layout_conditional_run_end_to_end(tmp_path, repo_root, eval_tool, tiny_generator, monkeypatch):
    root = make_flowers102(tmp_path / "data", per_split=(6, 3, 3), num_classes=3)
    dataset = dataset_config(repo_root, "flowers102", root=str(root))
    run = write_run(tmp_path / "run", dataset, 64, num_classes=102)
    out_file = tmp_path / "results" / "flowers.json"

    assert eval_tool.main([str(run), "eval=flowers102_64", "eval.metrics=[fid,kid]", "eval.network=G",
                           "--out", str(out_file), *small(tmp_path)]) == 0
    out = json.loads(out_file.read_text())
    assert np.isfinite(out["fid"]) and np.isfinite(out["kid_mean"]) and "precision" not in out
    p = out["protocol"]
    assert (p["dataset"], p["split"], p["reference_images"]) == ("flowers102", "all", 12)
    assert p["num_classes"] == 102 and p["labels"] == "class-balanced" and p["network"] == "G"

    # The same checkpoint evaluated again reads the cached reference: the dataset is not built.
    monkeypatch.setattr("transgan.eval.metrics.build_reference", _no_reference_build)
    assert eval_tool.main([str(checkpoint_path(run, 4)), "eval=flowers102_64", "eval.metrics=[fid,kid]",
                           "eval.network=G", "--out", str(out_file), *small(tmp_path)]) == 0
    assert json.loads(out_file.read_text())["fid"] == out["fid"]


def test_folder_of_images_against_celeba_reference(tmp_path, repo_root, eval_tool, monkeypatch, capsys):
    root = make_celeba(tmp_path / "data", n=12)
    folder = tmp_path / "samples"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(10):
        Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    assert eval_tool.main([str(folder), "dataset=celeba", f"dataset.root={root}", "eval=celeba64",
                           "eval.metrics=[fid]", *small(tmp_path)]) == 0
    out = json.loads((tmp_path / "eval.json").read_text())
    assert out["fid"] > 0 and out["protocol"]["num_samples"] == 10 and out["protocol"]["source"] == str(folder)
    assert out["protocol"]["resize"]["folder"] == "none: every image is 64x64"

    # Images at another size would be resized by torch-fidelity, not as the reference was: refused unless allowed.
    Image.fromarray(rng.randint(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / "odd.png")
    args = [str(folder), "dataset=celeba", f"dataset.root={root}", "eval=celeba64", "eval.metrics=[fid,kid]",
            *small(tmp_path)]
    assert eval_tool.main(args) == 2
    err = capsys.readouterr().err
    assert "1 of 11 images are not 64x64 (e.g. odd.png: 96x80)" in err and "eval.allow_folder_resize=true" in err
    assert eval_tool.main([*args, "eval.allow_folder_resize=true", "eval.kid_subset_size=50"]) == 0
    protocol = json.loads((tmp_path / "eval.json").read_text())["protocol"]
    assert "1 images to 64x64 by torch-fidelity" in protocol["resize"]["folder"]
    # ... and the KID subset, shrunk to the 8 reference images (CelebA's train split of 12), is a warning in the record.
    assert protocol["kid_subset_size"] == 8
    assert protocol["warnings"] == ["KID subsets shrunk from 50 to 8 images (the smaller set: 11 generated, "
                                    "8 reference); KID with other subset sizes is not comparable"]


def test_missing_inception_weights_exit_2_naming_the_file(tmp_path, repo_root, eval_tool, tiny_generator, capsys):
    root = make_celeba(tmp_path / "data", n=12)
    run = write_run(tmp_path / "run", dataset_config(repo_root, "celeba", root=str(root)), 64, num_classes=0)
    hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty-hub"))
    try:
        status = eval_tool.main([str(run), "eval=celeba64", f"eval.cache_dir={tmp_path / 'cache'}"])
    finally:
        torch.hub.set_dir(hub)
    err = capsys.readouterr().err
    assert status == 2
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "eval.inception_weights" in err
    assert str(tmp_path / "empty-hub" / "checkpoints") in err
    assert not (run / "eval.json").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args, message", [
    (["eval=nope"], "unknown eval preset 'nope'"),
    (["eval.num_sample=3"], "num_sample"),
    (["eval.metrics=[fid,lpips]"], "unknown metric"),
    (["bogus=1"], "takes no config key 'bogus'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_2(tmp_path, repo_root, eval_tool, tiny_generator, capsys, args, message):
    run = write_run(tmp_path / "run", {"name": "digits", "channels": 1, "conditional": True}, 16, num_classes=10)
    assert eval_tool.main([str(run), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("preset, dataset, split, resolution, extractor", [
    ("celeba64", "celeba", "train", 64, "inception-v3-compat"),
    ("flowers102_64", "flowers102", "all", 64, "inception-v3-compat"),
    ("flowers102_128", "flowers102", "all", 128, "inception-v3-compat"),
    ("flowers102_256", "flowers102", "all", 256, "inception-v3-compat"),
    ("cifar10_32", "cifar10", "train", 32, "inception-v3-compat"),
    ("digits", "digits", "train", None, "fd-digits"),
])
def test_protocol_presets_are_valid(eval_tool, preset, dataset, split, resolution, extractor):
    from transgan.eval.metrics import eval_config, load_preset

    cfg = eval_config(load_preset(preset))
    assert (cfg.dataset["name"], cfg.split, cfg.resolution, cfg.extractor) == (dataset, split, resolution, extractor)
    assert cfg.num_samples == (1000 if preset == "digits" else 50000) and cfg.seed == 0
    assert sorted(cfg.metrics) == ["fid", "isc", "kid", "prc"]


def test_impostor_inception_weights_exit_2_unless_allowed(tmp_path, repo_root, eval_tool, tiny_generator, capsys):
    run = write_run(tmp_path / "run", {"name": "digits", "channels": 1, "conditional": True}, 16, num_classes=10)
    impostor = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    impostor.write_bytes(b"\0" * 64)
    args = [str(run), "eval.extractor=inception-v3-compat", f"eval.inception_weights={impostor}",
            f"eval.cache_dir={tmp_path / 'cache'}", "eval.metrics=[fid]"]
    assert eval_tool.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(impostor) in err and "eval.allow_unverified_weights=true" in err
    assert not (run / "eval.json").exists()


@pytest.fixture
def empty_hub(tmp_path):
    """torch's hub cache pointed at an empty folder: no weights, whatever this machine has."""
    hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty-hub"))
    yield tmp_path / "empty-hub"
    torch.hub.set_dir(hub)


def digits_run(tmp_path):
    return write_run(tmp_path / "run", {"name": "digits", "channels": 1, "conditional": True}, 16, num_classes=10)


def test_clip_extractor_is_under_the_offline_rule(tmp_path, eval_tool, tiny_generator, empty_hub, capsys,
                                                  monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    run = digits_run(tmp_path)
    status = eval_tool.main([str(run), "eval.extractor=clip-vit-b-32", "eval.metrics=[fid]",
                             f"eval.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err
    from torch_fidelity.feature_extractor_clip import MODEL_METADATA

    name = f"clip-vit-b-32-{MODEL_METADATA['clip-vit-b-32']['hash']}.pt"
    assert str(empty_hub / "checkpoints" / name) in err
    assert "eval.download_weights=true" in err and "eval.extractor_weights" in err


def test_every_missing_weights_file_is_named_in_one_message(tmp_path, eval_tool, tiny_generator, empty_hub, capsys):
    run = digits_run(tmp_path)
    status = eval_tool.main([str(run), "eval.extractor=inception-v3-compat", "eval.metrics=[fid,prc]",
                             f"eval.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    for name, key in [("weights-inception-2015-12-05-6726825d.pth", "eval.inception_weights"),
                      ("vgg16-397923af.pth", "eval.vgg16_weights")]:
        assert str(empty_hub / "checkpoints" / name) in err and key in err
    assert "eval.download_weights=true" in err


def test_download_asked_for_offline_is_a_clean_error(tmp_path, eval_tool, tiny_generator, empty_hub, capsys,
                                                     monkeypatch):
    import urllib.error

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    run = digits_run(tmp_path)
    status = eval_tool.main([str(run), "eval.extractor=inception-v3-compat", "eval.metrics=[fid]",
                             "eval.download_weights=true", f"eval.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "could not fetch" in err and "weights-inception-2015-12-05-6726825d.pth" in err
    assert "name resolution" in err and not (run / "eval.json").exists()


def test_prc_alone_on_an_inception_preset_reports_vgg16(tmp_path, repo_root, eval_tool, tiny_generator, capsys,
                                                        monkeypatch):
    import hashlib

    def stand_in(name, metrics, weights, device, verbose=False):  # VGG16 itself is not run: this test is
        assert name == "vgg16"                                       # about what is reported around it
        return torch_fidelity.utils.create_feature_extractor(EXTRACTOR, ["pool"], cuda=False, verbose=False)

    monkeypatch.setattr("transgan.eval.metrics.feature_extractor", stand_in)
    root = make_celeba(tmp_path / "data", n=12)
    run = write_run(tmp_path / "run", dataset_config(repo_root, "celeba", root=str(root)), 64, num_classes=0)
    vgg = tmp_path / "vgg16-397923af.pth"
    vgg.write_bytes(b"stand-in VGG16 weights")
    assert eval_tool.main([str(run), "eval=celeba64", "eval.metrics=[prc]", f"eval.vgg16_weights={vgg}",
                           "eval.num_samples=16", "eval.batch_size=8",
                           "eval.allow_unverified_weights=true", f"eval.cache_dir={tmp_path / 'cache'}",
                           "eval.device=cpu"]) == 0
    printed = capsys.readouterr().out
    p = json.loads((run / "eval.json").read_text())["protocol"]
    digest = hashlib.sha256(vgg.read_bytes()).hexdigest()
    assert p["extractor"] == "vgg16" and p["weights_sha256"] == digest
    assert p["extractors"] == {"vgg16": ["prc"]}
    assert "shipped" not in printed and digest[:16] in printed
    assert [line.split()[-1] for line in printed.splitlines() if line.startswith("extractor")] == ["vgg16"]


def test_evaluating_a_math_run_uses_math_unless_overridden(tmp_path_factory, tmp_path, eval_tool, kernels_run,
                                                            capsys):
    run = tiny_math_attention_run(tmp_path_factory)
    out = tmp_path / "eval.json"
    assert eval_tool.main([str(run), *small(tmp_path), "eval.metrics=[fid]", "--out", str(out)]) == 0
    assert kernels_run and set(kernels_run) == {"math"}
    assert json.loads(out.read_text())["protocol"]["attention"] == "math"
    kernels_run.clear()
    assert eval_tool.main([str(run), *small(tmp_path), "eval.metrics=[fid]", "model.attention=chunked",
                           "--out", str(out)]) == 0
    assert kernels_run and set(kernels_run) == {"chunked"}
    assert json.loads(out.read_text())["protocol"]["attention"] == "chunked"
    capsys.readouterr()
    assert eval_tool.main([str(run), "model.attention=flash", "--out", str(out)]) == 2
    assert "model.attention must be one of" in capsys.readouterr().err
