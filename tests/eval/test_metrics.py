"""transgan.eval.metrics against torch-fidelity run directly, closed forms and the protocol's promises.

A small feature extractor registered here (a fixed random projection of 4x4 average
pooled pixels) stands in for Inception, which cannot be downloaded in tests; the
numbers are torch-fidelity's either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from PIL import Image
from torch.utils.data import Dataset
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from transgan.errors import ConfigError
from transgan.eval.extractors import FD_DIGITS, MissingWeightsError
from transgan.eval.metrics import evaluate, frechet_distance
from transgan.eval.sampling import CPU_CHUNK, GeneratorSource, balanced_labels, to_rgb, to_uint8

EXTRACTOR = "test-pool-16"
RES = 16


class PoolProjection(torch_fidelity.FeatureExtractorBase):
    """uint8 [B, 3, H, W] -> 4x4 average pool -> fixed random projection to 16 features."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.register_buffer("proj", torch.randn(48, 16, generator=torch.Generator().manual_seed(0)))

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
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return (F.adaptive_avg_pool2d(x.double() / 255, 4).flatten(1).float() @ self.proj,)


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR, PoolProjection)


class TinyGenerator(nn.Module):
    """A generator following the contract; remembers every label it was asked for."""

    def __init__(self, num_classes: int = 0, z_dim: int = 8, resolution: int = RES, channels: int = 3) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.img_resolution, self.img_channels = z_dim, num_classes, resolution, channels
        torch.manual_seed(1)
        self.net = nn.Linear(z_dim + num_classes, channels * resolution * resolution)
        self.calls = 0
        self.labels: list[torch.Tensor] = []

    def forward(self, z, c=None):
        self.calls += 1
        if self.num_classes:
            assert c is not None and c.shape == (z.shape[0],)
            self.labels.append(c.cpu())
            z = torch.cat([z, F.one_hot(c, self.num_classes).float()], dim=1)
        x = torch.tanh(self.net(z))
        return x.view(-1, self.img_channels, self.img_resolution, self.img_resolution)


def write_images(root: Path, n: int, seed: int, classes: int = 0) -> list[np.ndarray]:
    """PNG files at RES x RES (flat, or one folder per class); returns the pixel arrays written."""
    rng = np.random.RandomState(seed)
    arrays = []
    for i in range(n):
        folder = root / f"class_{i % classes}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.randint(0, 256, size=3)  # per-image colour so the sets have structure
        a = np.clip(base + rng.randint(-40, 40, size=(RES, RES, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder / f"{i:04d}.png")
        arrays.append(a)
    return arrays


class Uint8Images(Dataset):
    """A stack of uint8 [3, H, W] images, as torch-fidelity reads datasets."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def folder_dataset(root: Path) -> dict:
    return {"name": "imagefolder", "root": str(root), "channels": 3}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


# ---------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_matches_closed_form_for_commuting_gaussians():
    rng = np.random.RandomState(0)
    d = 6
    mu1, mu2 = rng.randn(d), rng.randn(d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    # Diagonal covariances: (S1 S2)^(1/2) is diag(sqrt(s1 s2)).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # Same eigenbasis, rotated: the closed form is unchanged.
    q, _ = np.linalg.qr(rng.randn(d, d))
    got = frechet_distance(mu1, q @ np.diag(s1) @ q.T, mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------- equal to torch-fidelity
def test_fid_and_kid_equal_torch_fidelity_run_directly(tmp_path, cache):
    reals = write_images(tmp_path / "real", 60, seed=0)
    G, n, seed = TinyGenerator(), 40, 3
    ours = evaluate(G, folder_dataset(tmp_path / "real"), extractor=EXTRACTOR, metrics=["fid", "kid"],
                    num_samples=n, batch_size=64, seed=seed, kid_subset_size=30, kid_subsets=20, cache_dir=cache,
                    device="cpu", reference_workers=False)

    # The same two image sets, made here without transgan.eval: torch-fidelity's own noise, our uint8 rule.
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, G.z_dim)).float()
    with torch.no_grad():
        fakes = ((G(z) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    real = torch.from_numpy(np.stack(reals)).permute(0, 3, 1, 2).contiguous()
    direct = torch_fidelity.calculate_metrics(
        input1=Uint8Images(fakes), input2=Uint8Images(real), feature_extractor=EXTRACTOR, fid=True, kid=True,
        kid_subset_size=30, kid_subsets=20, rng_seed=seed, cuda=False, cache=False, verbose=False, save_cpu_ram=True)

    assert rel(ours["fid"], direct[torch_fidelity.KEY_METRIC_FID]) < 1e-6
    assert rel(ours["kid_mean"], direct[torch_fidelity.KEY_METRIC_KID_MEAN]) < 1e-6
    assert rel(ours["kid_std"], direct[torch_fidelity.KEY_METRIC_KID_STD]) < 1e-6
    assert ours["fid"] > 1.0  # a random generator is far from the reals: the comparison is not 0 == 0
    p = ours["protocol"]
    assert (p["num_samples"], p["reference_images"], p["seed"], p["split"]) == (n, 60, seed, "train")
    assert p["extractor"] == EXTRACTOR and p["kid_subset_size"] == 30


def test_fid_of_a_set_with_itself_is_zero(tmp_path, cache):
    write_images(tmp_path / "real", 50, seed=1)
    out = evaluate(tmp_path / "real", folder_dataset(tmp_path / "real"), extractor=EXTRACTOR, metrics=["fid"],
                   resolution=RES, cache_dir=cache, device="cpu", reference_workers=False)
    assert abs(out["fid"]) < 1e-6
    assert out["protocol"]["num_samples"] == 50


# ---------------------------------------------------------------------------- conditional generators
def test_conditional_generator_evaluates_on_numpy_2_with_balanced_labels(tmp_path, cache):
    assert int(np.__version__.split(".")[0]) >= 2, "this test is about NumPy >= 2 (no np.int)"
    write_images(tmp_path / "real", 60, seed=2, classes=3)
    G = TinyGenerator(num_classes=3)

    # torch-fidelity's own conditional path draws labels with np.int, which NumPy 2 removed.
    if not hasattr(np, "int"):
        wrapped = torch_fidelity.GenerativeModelModuleWrapper(G, G.z_dim, "normal", G.num_classes)
        with pytest.raises(AttributeError, match="int"):
            torch_fidelity.calculate_metrics(input1=wrapped, input1_model_num_samples=30, input2=wrapped,
                                             input2_model_num_samples=30, feature_extractor=EXTRACTOR, fid=True,
                                             cuda=False, cache=False, verbose=False)
        G.labels.clear()

    out = evaluate(G, {**folder_dataset(tmp_path / "real"), "conditional": True}, extractor=EXTRACTOR,
                   metrics=["fid", "kid"], num_samples=31, kid_subset_size=20, intra_fid=True,
                   intra_fid_samples_per_class=12, cache_dir=cache, device="cpu", reference_workers=False)
    assert np.isfinite(out["fid"]) and np.isfinite(out["kid_mean"])
    per_class = out["intra_fid_per_class"]
    assert len(per_class) == 3 and out["intra_fid"] == pytest.approx(np.mean(per_class))
    labels = torch.cat(G.labels)
    # 31 balanced samples (11, 10, 10), then 12 of each class for intra-class FID.
    assert torch.bincount(labels[:31], minlength=3).tolist() == [11, 10, 10]
    assert labels[31:].tolist() == [0] * 12 + [1] * 12 + [2] * 12
    assert out["protocol"]["labels"] == "class-balanced"


class TinyStyleGenerator(TinyGenerator):
    """TinyGenerator with the style contract: mapping (with truncation toward w_avg = 0) and synthesis."""

    def __init__(self) -> None:
        super().__init__()
        self.psis: list[float] = []

    def mapping(self, z, c, truncation_psi=1.0):
        self.psis.append(truncation_psi)
        return z * truncation_psi

    def synthesis(self, ws):
        return super().forward(ws)


def test_truncation_goes_through_the_mapping_network(tmp_path, cache):
    write_images(tmp_path / "real", 20, seed=5)
    kwargs = dict(extractor=EXTRACTOR, metrics=["fid"], num_samples=10, cache_dir=cache, device="cpu",
                  reference_workers=False)
    G = TinyStyleGenerator()
    plain = evaluate(G, folder_dataset(tmp_path / "real"), **kwargs)
    truncated = evaluate(G, folder_dataset(tmp_path / "real"), truncation_psi=0.5, **kwargs)
    assert G.psis == [0.5] and truncated["protocol"]["truncation_psi"] == 0.5
    assert truncated["fid"] != plain["fid"]
    with pytest.raises(ConfigError, match="style-based"):
        evaluate(TinyGenerator(), folder_dataset(tmp_path / "real"), truncation_psi=0.5, **kwargs)


def test_balanced_labels_are_balanced_and_seeded():
    a = balanced_labels(1000, 7, seed=5)
    assert torch.bincount(a).tolist() == [143] * 6 + [142]
    assert torch.equal(a, balanced_labels(1000, 7, seed=5)) and not torch.equal(a, balanced_labels(1000, 7, seed=6))


def test_cpu_chunks_give_the_images_of_the_whole_batch():
    """GeneratorSource runs G on CPU in chunks of CPU_CHUNK: for a G without noise inputs, bit for bit."""
    from transgan.registry import build_generator
    from transgan.train.config import compose_config

    cfg, _ = compose_config(["model=cwgan_gp", "dataset=digits"])
    torch.manual_seed(0)
    G = build_generator(cfg.model.generator, img_resolution=32, img_channels=1, num_classes=10).eval()
    n = 2 * CPU_CHUNK + 5  # two whole chunks and a remainder
    source = GeneratorSource(G, n, seed=0)
    z = torch.randn(n, G.z_dim)
    calls = []
    hook = G.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    images = source.images(z, 0)
    hook.remove()
    assert calls == [CPU_CHUNK, CPU_CHUNK, 5]
    with torch.no_grad():
        whole = G(z, source.labels)
    assert torch.equal(images, to_rgb(to_uint8(whole)))


def test_uint8_conversion_inverts_the_data_scaling():
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(pixels.float() / 127.5 - 1), pixels)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


# ---------------------------------------------------------------------------- offline weights
@pytest.mark.parametrize("metrics, expected_name, key", [
    (["fid"], "weights-inception-2015-12-05-6726825d.pth", "eval.inception_weights"),
    (["prc"], "vgg16-397923af.pth", "eval.vgg16_weights"),
])
def test_missing_weights_fail_before_any_sample(tmp_path, cache, metrics, expected_name, key):
    write_images(tmp_path / "real", 10, seed=0)
    hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty-hub"))  # no cached weights, whatever this machine has
    try:
        G = TinyGenerator()
        with pytest.raises(MissingWeightsError) as err:
            evaluate(G, folder_dataset(tmp_path / "real"), metrics=metrics, num_samples=10, cache_dir=cache,
                     device="cpu")
        message = str(err.value)
        assert expected_name in message and key in message
        assert str(tmp_path / "empty-hub" / "checkpoints" / expected_name) in message
        assert G.calls == 0
        # A path that does not exist is named in the message too.
        bad = tmp_path / "nowhere" / expected_name
        with pytest.raises(MissingWeightsError, match=str(bad)):
            evaluate(G, folder_dataset(tmp_path / "real"), metrics=metrics, num_samples=10, cache_dir=cache,
                     device="cpu", **{key.split(".")[1]: str(bad)})
        assert G.calls == 0
    finally:
        torch.hub.set_dir(hub)
    assert not Path(cache).exists() or not any(Path(cache).iterdir())  # nothing computed either


# ---------------------------------------------------------------------------- reference cache
def _no_reference_build(*args, **kwargs):
    raise AssertionError("the reference dataset was built: the cache was not used")


def test_cached_reference_statistics_are_reused(tmp_path, cache, monkeypatch):
    write_images(tmp_path / "real", 40, seed=4)
    G = TinyGenerator()
    kwargs = dict(extractor=EXTRACTOR, metrics=["fid", "kid"], num_samples=20, kid_subset_size=20, cache_dir=cache,
                  device="cpu", reference_workers=False)
    first = evaluate(G, folder_dataset(tmp_path / "real"), **kwargs)
    files = sorted(Path(cache).iterdir())
    assert files and any(EXTRACTOR in f.name for f in files)
    stamps = {f: f.stat().st_mtime_ns for f in files}

    # The images cannot be read now: the second run can only succeed from the cached statistics.
    monkeypatch.setattr("transgan.eval.metrics.build_reference", _no_reference_build)
    second = evaluate(G, folder_dataset(tmp_path / "real"), **kwargs)
    assert second["fid"] == first["fid"] and second["kid_mean"] == first["kid_mean"]
    assert second["protocol"]["reference_images"] == 40
    assert {f: f.stat().st_mtime_ns for f in sorted(Path(cache).iterdir())} == stamps

    # Another resolution is another reference: not served from this cache.
    with pytest.raises(AssertionError, match="cache was not used"):
        evaluate(TinyGenerator(resolution=8), folder_dataset(tmp_path / "real"), **kwargs)


def test_adding_images_to_a_reference_folder_invalidates_the_cache(tmp_path, cache):
    write_images(tmp_path / "real", 20, seed=6)
    kwargs = dict(extractor=EXTRACTOR, metrics=["fid"], num_samples=20, cache_dir=cache, device="cpu",
                  reference_workers=False)
    before = evaluate(TinyGenerator(), folder_dataset(tmp_path / "real"), **kwargs)
    assert before["protocol"]["reference_images"] == 20

    # 40 more images (other names, other colours) in the same folder.
    rng = np.random.RandomState(7)
    for i in range(40):
        a = np.clip(rng.randint(0, 256, size=3) + rng.randint(-40, 40, size=(RES, RES, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(tmp_path / "real" / f"extra-{i:04d}.png")
    after = evaluate(TinyGenerator(), folder_dataset(tmp_path / "real"), **kwargs)
    fresh = evaluate(TinyGenerator(), folder_dataset(tmp_path / "real"), **{**kwargs, "cache_dir": str(tmp_path / "c2")})
    assert after["protocol"]["reference_images"] == 60
    assert after["fid"] == fresh["fid"] != before["fid"]
    assert after["protocol"]["reference_cache"] != before["protocol"]["reference_cache"]


# ---------------------------------------------------------------------------- FD-digits
def test_fd_digits_runs_offline_and_separates_real_from_noise(tmp_path, cache):
    from transgan.data import build_dataset
    from omegaconf import OmegaConf

    digits = {"name": "digits", "channels": 1}
    held_out = build_dataset(OmegaConf.create({**digits, "split": "test"}), resolution=RES)
    # A seeded subset of the train split keeps this test cheap; the cached statistics serve both calls.
    kwargs = dict(extractor=FD_DIGITS, metrics=["fid"], reference_samples=400, cache_dir=cache, device="cpu",
                  reference_workers=False)
    real = evaluate(held_out, digits, resolution=RES, **kwargs)["fid"]
    noise = evaluate(TinyGenerator(channels=1), digits, num_samples=200, **kwargs)["fid"]
    assert 0 <= real < noise / 10


# ---------------------------------------------------------------------------- weights verification
def stand_in_extractor(expected: str):
    """In place of ``expected`` (not run: its weights are stand-ins), the test extractor; for tests about the
    protocol around the numbers."""
    def make(name, metrics, weights, device, verbose=False):
        assert name == expected
        return torch_fidelity.utils.create_feature_extractor(EXTRACTOR, ["pool"], cuda=False, verbose=False)
    return make


def test_weights_with_the_right_name_but_other_content_are_refused_unless_allowed(tmp_path, cache, monkeypatch):
    from transgan.eval.extractors import WeightsMismatchError

    write_images(tmp_path / "real", 10, seed=0)
    impostor = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    impostor.write_bytes(b"not the published Inception weights")
    import hashlib

    assert not hashlib.sha256(impostor.read_bytes()).hexdigest().startswith("6726825d")  # the test's premise
    G = TinyGenerator()
    kwargs = dict(metrics=["fid"], num_samples=10, cache_dir=cache, device="cpu", inception_weights=str(impostor))
    with pytest.raises(WeightsMismatchError) as err:
        evaluate(G, folder_dataset(tmp_path / "real"), **kwargs)
    assert str(impostor) in str(err.value) and "eval.allow_unverified_weights=true" in str(err.value)
    assert "6726825d" in str(err.value) and G.calls == 0

    monkeypatch.setattr("transgan.eval.metrics.feature_extractor", stand_in_extractor("inception-v3-compat"))
    out = evaluate(G, folder_dataset(tmp_path / "real"), allow_unverified_weights=True, **kwargs)
    p = out["protocol"]
    assert p["allow_unverified_weights"] is True
    assert p["weights"]["inception-v3-compat"]["verified"] is False
    assert p["weights_sha256"] == hashlib.sha256(impostor.read_bytes()).hexdigest()


def test_weights_matching_the_published_prefix_are_verified(tmp_path, monkeypatch):
    import hashlib

    from transgan.eval import extractors

    content = b"stand-in weights"
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    spec = extractors.WEIGHTS["vgg16"]
    monkeypatch.setitem(extractors.WEIGHTS, "vgg16", extractors.WeightsFile(
        spec.what, spec.file_name, spec.url, spec.config_key, digest[:8]))
    assert extractors.verify_weights("vgg16", path) is True
    assert extractors.verify_weights(EXTRACTOR, path) is None  # no published digest known: not claimed


# ---------------------------------------------------------------------------- protocol fields
class LatentRecorder(TinyGenerator):
    """TinyGenerator that remembers every latent it was given."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.latents: list[torch.Tensor] = []

    def forward(self, z, c=None):
        self.latents.append(z.cpu())
        return super().forward(z, c)


def test_intra_fid_draws_distinct_recorded_latents_per_class(tmp_path, cache):
    write_images(tmp_path / "real", 30, seed=8, classes=3)
    G = LatentRecorder(num_classes=3)
    out = evaluate(G, {**folder_dataset(tmp_path / "real"), "conditional": True}, extractor=EXTRACTOR,
                   metrics=["fid"], num_samples=12, intra_fid=True, intra_fid_samples_per_class=6, seed=4,
                   cache_dir=cache, device="cpu", reference_workers=False)
    z = torch.cat(G.latents)
    main, per_class = z[:12], z[12:].view(3, 6, -1)
    # Each class's latents are torch-fidelity's noise for the recorded seed (its own RandomState stream).
    seeds = out["protocol"]["intra_fid_seeds"]
    assert len(set(seeds)) == 3 and 4 not in seeds
    for k, seed in enumerate(seeds):
        expected = torch.from_numpy(np.random.RandomState(seed).randn(6, G.z_dim)).float()
        assert torch.equal(per_class[k], expected)
    assert not torch.equal(per_class[0], per_class[1]) and not torch.equal(per_class[0], main[:6])


def test_protocol_records_split_device_dtype_layers_and_versions(tmp_path, cache):
    import PIL
    import torchvision
    from omegaconf import OmegaConf

    from transgan.data import build_dataset

    digits = {"name": "digits", "channels": 1}
    held_out = build_dataset(OmegaConf.create({**digits, "split": "test"}), resolution=RES)
    out = evaluate(held_out, digits, resolution=RES, extractor=EXTRACTOR, metrics=["fid", "kid"],
                   reference_samples=50, kid_subset_size=20, cache_dir=cache, device="cpu", reference_workers=False)
    p = out["protocol"]
    assert (p["source"], p["source_split"], p["split"]) == ("dataset", "test", "train")
    assert p["device"] == "cpu" and p["dtype"] == "float32"
    assert p["feature_layers"] == {EXTRACTOR: {"fid": "pool", "kid": "pool"}}
    assert p["versions"]["torchvision"] == torchvision.__version__ and p["versions"]["PIL"] == PIL.__version__


def test_loader_workers_are_capped_by_the_cores(tmp_path, cache, monkeypatch):
    import warnings

    from omegaconf import OmegaConf

    from transgan.data import build_dataset

    monkeypatch.setattr("transgan.eval.metrics.available_cores", lambda: 2, raising=False)  # a 2-core machine
    digits = {"name": "digits", "channels": 1}
    held_out = build_dataset(OmegaConf.create({**digits, "split": "test"}), resolution=RES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = evaluate(held_out, digits, resolution=RES, extractor=EXTRACTOR, metrics=["fid"],
                       reference_samples=40, cache_dir=cache, device="cpu", reference_workers=True)
    assert not [str(w.message) for w in caught if "worker" in str(w.message)]
    assert out["protocol"]["loader_workers"] == 0
