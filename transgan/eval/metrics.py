"""FID, KID, IS, precision/recall and intra-class FID of a generator, through torch-fidelity.

:func:`evaluate` is the one entry point. It computes nothing itself: it turns a
generator, a folder of images or a dataset into torch-fidelity inputs, resolves the
extractor weights offline (failing before anything is generated), names the reference
statistics so torch-fidelity caches them per (dataset, split, resolution, extractor), and
calls :func:`torch_fidelity.calculate_metrics`. Every number comes back with the protocol
that produced it, because FIDs computed under different protocols are not comparable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch_fidelity
import torch_fidelity.defaults
from accelerate.utils import gather
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_input_id_to_statistics_cached, fid_statistics_to_metric
from torch_fidelity.noise import random_normal
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import (
    create_feature_extractor,
    extract_featuresdict_from_input_id,
    extract_featuresdict_from_input_id_cached,
    glob_samples_paths,
)

from transgan.data import build_dataset
from transgan.errors import ConfigError
from transgan.eval.extractors import (
    FD_DIGITS,
    MissingWeightsError,
    file_sha256,
    resolve_weights,
    verify_weights,
    weights_path_argument,
)
from transgan.eval.metric_registry import METRICS, MetricInputs, metric_names, result_keys
from transgan.eval.sampling import GeneratorSource, LazyDataset, RealImages, check_truncation, dataset_labels
from transgan.presets import load_option, option_names
from transgan.runs.files import atomic_write_text

log = logging.getLogger(__name__)

# Dataset-config keys that do not change the reference images (left out of the cache key;
# split and resolution are in the cache name itself).
_NOT_IMAGES = {"num_workers", "augment", "download", "conditional", "split", "resolution", "cache", "bad_images"}
# How torch-fidelity's extractors resize their input (recorded in the protocol).
_EXTRACTOR_RESIZE = {
    "inception-v3-compat": "299x299, bilinear as TensorFlow 1.x (torch-fidelity)",
    "vgg16": "224x224, bilinear as TensorFlow 1.x (torch-fidelity)",
    FD_DIGITS: "16x16, bilinear antialiased (the digits judge)",
}

Source = Union[nn.Module, str, Path, Dataset]


@dataclasses.dataclass
class EvalConfig:
    """The evaluation protocol; configs/eval/*.yaml are presets of it (keys ``eval.*`` on the command line)."""

    metrics: list[str] = dataclasses.field(default_factory=lambda: ["fid", "kid", "isc", "prc"])
    extractor: str = "inception-v3-compat"  # FID/KID/IS; prc uses vgg16 with Inception, else the same one
    num_samples: int = 50000                # generated images
    batch_size: int = 64
    seed: int = 0                           # latents, labels and KID subsets
    split: str = "train"                    # reference split of the dataset
    resolution: Optional[int] = None        # None = the generator's resolution
    reference_samples: Optional[int] = None  # None = every image of the split, else a seeded subset
    intra_fid: bool = False                 # mean FID over classes (conditional generators)
    intra_fid_samples_per_class: Optional[int] = None  # None = num_samples // num_classes
    truncation_psi: float = 1.0
    network: str = "G_ema"                  # which weights of a checkpoint: G_ema | G
    inception_weights: Optional[str] = None
    vgg16_weights: Optional[str] = None
    extractor_weights: Optional[str] = None  # the weights file of another extractor (CLIP); None = hub cache
    download_weights: bool = False          # fetch missing weights into torch's hub cache
    allow_unverified_weights: bool = False  # accept weights whose sha256 is not the published one (recorded)
    allow_folder_resize: bool = False       # evaluate a folder whose images are not at the protocol's size (recorded)
    cache_dir: Optional[str] = None         # None = $TRANSGAN_CACHE_DIR or ~/.cache/transgan/eval
    kid_subsets: int = 100
    kid_subset_size: int = 1000             # lowered to the smaller set's size when needed
    isc_splits: int = 10
    prc_neighborhood: int = 3
    reference_workers: bool = True          # torch-fidelity's loader workers for the reference images
    device: str = "auto"                    # auto | cpu | cuda
    verbose: bool = False
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of the dataset config


def eval_config(cfg: Union[EvalConfig, Mapping[str, Any], DictConfig, None] = None, **overrides: Any) -> EvalConfig:
    """Validate a protocol (a mapping, an OmegaConf node or an EvalConfig); unknown keys fail."""
    if isinstance(cfg, EvalConfig):
        cfg = dataclasses.asdict(cfg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg or {}, overrides)
    except Exception as e:  # OmegaConf raises several types for the same kind of mistake
        raise ConfigError(f"bad eval config: {e}".strip()) from e
    out = EvalConfig(**OmegaConf.to_container(merged, resolve=True))
    unknown = [m for m in out.metrics if m not in METRICS]
    checks = [
        (not unknown, f"eval.metrics has unknown metric(s) {unknown}; choose from {metric_names()}"),
        ("class_acc" not in out.metrics or out.extractor == FD_DIGITS,
         f"eval.metrics=[class_acc] needs the digits judge as classifier: eval.extractor={FD_DIGITS}"),
        ("modes" not in out.metrics or out.extractor == FD_DIGITS,
         f"eval.metrics=[modes] needs the digits judge as classifier: eval.extractor={FD_DIGITS}"),
        (out.metrics or out.intra_fid, "eval.metrics is empty and eval.intra_fid is off: nothing to compute"),
        (out.num_samples >= 2, "eval.num_samples must be >= 2"),
        (out.batch_size >= 1, "eval.batch_size must be >= 1"),
        (out.network in ("G_ema", "G"), "eval.network must be G_ema or G"),
        (out.device in ("auto", "cpu", "cuda"), "eval.device must be auto, cpu or cuda"),
        (out.reference_samples is None or out.reference_samples >= 2, "eval.reference_samples must be >= 2"),
        (out.kid_subset_size >= 2 and out.kid_subsets >= 1, "eval.kid_subset_size >= 2 and kid_subsets >= 1"),
        (out.truncation_psi > 0, "eval.truncation_psi must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)

    if out.extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise ConfigError(f"unknown feature extractor {out.extractor!r}; registered: "
                          f"{sorted(FEATURE_EXTRACTORS_REGISTRY)}")
    return out


def preset_names() -> list[str]:
    """The protocol presets of configs/eval/."""
    return option_names("eval")


def load_preset(name: str) -> DictConfig:
    """A protocol preset from configs/eval/<name>.yaml; unknown names fail, listing the known ones."""
    return load_option("eval", name, "eval preset")


def default_cache_dir() -> Path:
    """Where reference statistics are cached: ``$TRANSGAN_CACHE_DIR`` or ``~/.cache/transgan/eval``."""
    return Path(os.environ.get("TRANSGAN_CACHE_DIR") or Path.home() / ".cache" / "transgan" / "eval").expanduser()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two Gaussians, by torch-fidelity's FID formula."""
    as64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    out = fid_statistics_to_metric({"mu": as64(mu1), "sigma": as64(sigma1)},
                                   {"mu": as64(mu2), "sigma": as64(sigma2)}, verbose=False)
    return out[torch_fidelity.KEY_METRIC_FID]


# ---------------------------------------------------------------------------- reference
def reference_dataset_config(dataset_cfg: Mapping[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """The dataset config of the reference images: the run's dataset with the protocol's overrides and split."""
    if isinstance(dataset_cfg, DictConfig):
        base = OmegaConf.to_container(dataset_cfg, resolve=True)
    else:
        base = dict(dataset_cfg)
    preset = dict(cfg.dataset)
    if "name" in preset and base.get("name") not in (None, preset["name"]):
        raise ConfigError(f"this protocol is for dataset {preset['name']!r}, but the dataset is {base['name']!r}")
    return {**base, **preset, "split": cfg.split}


def build_reference(dataset_cfg: Mapping[str, Any], resolution: int) -> Dataset:
    """Build a transgan dataset (images in [-1, 1], label) at ``resolution`` from a plain config."""
    return build_dataset(OmegaConf.create(dict(dataset_cfg)), resolution=resolution)


def folder_fingerprint(root: Path) -> Optional[str]:
    """SHA-256 over (relative name, size, mtime) of every file under ``root`` (None if it is not a folder).

    Part of the reference cache key: adding, removing or rewriting an image of a folder
    reference must not be served the statistics of the old files.
    """
    if not root.is_dir():
        return None
    entries = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            stat = path.stat()
            entries.append(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


class _Reference:
    """The real images of the protocol, built on first need and named for torch-fidelity's cache."""

    def __init__(self, dataset_cfg: dict[str, Any], resolution: int, cfg: EvalConfig, cache_dir: Path) -> None:
        self.cfg, self.dataset_cfg, self.resolution, self.cache_dir = cfg, dataset_cfg, resolution, cache_dir
        image_keys = {k: v for k, v in sorted(dataset_cfg.items()) if k not in _NOT_IMAGES}
        files = None
        if image_keys.get("root"):
            image_keys["root"] = str(Path(str(image_keys["root"])).expanduser().resolve())
            files = folder_fingerprint(Path(image_keys["root"]))
        key = json.dumps([image_keys, cfg.reference_samples, cfg.seed if cfg.reference_samples else None, files],
                         sort_keys=True, default=str)
        self.name = (f"transgan-{dataset_cfg.get('name', 'data')}-{cfg.split}-{resolution}px-"
                     f"{hashlib.sha256(key.encode()).hexdigest()[:12]}")
        self._base: Optional[Dataset] = None
        self._indices: Optional[list[int]] = None
        self._labels: Optional[np.ndarray] = None

    def base(self) -> Dataset:
        """The dataset itself (built once)."""
        if self._base is None:
            self._base = build_reference(self.dataset_cfg, self.resolution)
            n = len(self._base)
            self._indices = list(range(n))
            if self.cfg.reference_samples is not None and self.cfg.reference_samples < n:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed))
                self._indices = sorted(order[:self.cfg.reference_samples].tolist())
            self._write_info()
        return self._base

    def images(self) -> LazyDataset:
        """All reference images as uint8 RGB, built only if torch-fidelity's cache misses."""
        return LazyDataset(lambda: RealImages(self.base(), self._indices))

    def class_images(self, k: int) -> LazyDataset:
        """The reference images of class ``k``."""
        def build() -> Dataset:
            base = self.base()
            if self._labels is None:
                self._labels = dataset_labels(base)
            chosen = [i for i in self._indices if self._labels[i] == k]
            if len(chosen) < 2:
                raise ConfigError(f"class {k} has {len(chosen)} reference image(s) in split {self.cfg.split!r}; "
                                  "intra-class FID needs at least 2")
            return RealImages(base, chosen)
        return LazyDataset(build)

    def info(self) -> dict[str, Any]:
        """What the reference is (number of images, config), from the cache when it was not built now."""
        path = self.cache_dir / f"{self.name}.json"
        if self._base is None and path.is_file():
            return json.loads(path.read_text())
        self.base()
        return self._info()

    def size(self) -> int:
        """Number of reference images."""
        return int(self.info()["num_images"])

    def _info(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset_cfg, "resolution": self.resolution,
                "num_images": len(self._indices)}

    def _write_info(self) -> None:
        atomic_write_text(self.cache_dir / f"{self.name}.json", json.dumps(self._info(), indent=1, default=str))


# ---------------------------------------------------------------------------- evaluation
def _device(cfg: EvalConfig, source: Any) -> torch.device:
    if isinstance(source, nn.Module):
        first = next(source.parameters(), None)
        if first is not None and cfg.device == "auto":
            return first.device
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("eval.device=cuda but CUDA is not available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _extractors(cfg: EvalConfig) -> dict[str, list[str]]:
    """Which extractor computes which metrics: torch-fidelity's pairing (Inception + VGG16 for prc)."""
    plan: dict[str, list[str]] = {}
    for m in cfg.metrics:
        name = "vgg16" if m == "prc" and cfg.extractor == "inception-v3-compat" else cfg.extractor
        plan.setdefault(name, []).append(m)
    if cfg.intra_fid:
        plan.setdefault(cfg.extractor, [])
    return plan


def process_group() -> tuple[int, int]:
    """(rank, number of processes) of the initialized process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share_from_main(value: Any) -> Any:
    """The main process's ``value`` on every process (itself where there is one process)."""
    rank, world = process_group()
    if world == 1:
        return value

    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def feature_extractor(name: str, metrics: list[str], weights: Optional[Path], device: torch.device,
                      verbose: bool = False) -> torch_fidelity.FeatureExtractorBase:
    """torch-fidelity's extractor ``name`` with the feature layers the given torch-fidelity metrics read."""
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    layers = sorted({cls.get_default_feature_layer_for_metric(m) for m in metrics})
    extractor = create_feature_extractor(name, layers, cuda=False, verbose=verbose,
                                         feature_extractor_weights_path=weights_path_argument(name, weights))
    return extractor.to(device)


def generated_features(gen: GeneratorSource, extractor: torch_fidelity.FeatureExtractorBase, batch_size: int,
                       seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Features of ``gen.num_samples`` generated images, the batches spread over all processes.

    The latents are torch-fidelity's (one seeded NumPy stream, batch after batch: every process
    draws them all and generates its own batches, j = rank, rank + P, ...), and each batch is the
    same whatever the number of processes, so the gathered features equal one process's and
    ``torch_fidelity.calculate_metrics`` on the same generator. Every process gets all features.
    """
    rank, world = process_group()
    n = gen.num_samples
    size = min(batch_size, n)
    starts = list(range(0, n, size))
    rng = np.random.RandomState(seed)
    mine: list[dict[str, torch.Tensor]] = []
    # A generator's own randomness (StyleGAN's noise inputs) comes from torch's global RNG: seeded per
    # batch, so a batch is the same images on whichever process makes it; the caller's RNG is left as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for j, start in enumerate(starts):
            z = random_normal(rng, (min(size, n - start), gen.z_size))  # drawn by all: the stream stays one
            if j % world == rank:
                torch.manual_seed(int(np.random.SeedSequence([seed, j]).generate_state(1)[0]))
                with torch.no_grad():
                    out = extractor(gen.images(z.to(device), start))
                mine.append(extractor.convert_features_tuple_to_dict(out))
    layers = extractor.get_requested_features_list()
    if world == 1:
        return {k: torch.cat([f[k].cpu() for f in mine]) for k in layers}

    # Every process sends the same shape: its batches padded to `slots` full ones (process 0 tells
    # the others each layer's feature shape and dtype, as a process may have no batch at all).
    slots = -(-len(starts) // world)
    shapes = share_from_main({k: (tuple(mine[0][k].shape[1:]), mine[0][k].dtype) for k in layers} if rank == 0
                             else None)
    out = {}
    for k in layers:
        shape, dtype = shapes[k]
        padded = torch.zeros(slots, size, *shape, dtype=dtype, device=device)
        for s, f in enumerate(mine):
            padded[s, :f[k].shape[0]] = f[k].to(device)
        every = gather(padded).view(world, slots, size, *shape)  # process r's slot s is batch s * world + r
        out[k] = torch.cat([every[j % world, j // world, :min(size, n - start)]
                            for j, start in enumerate(starts)]).cpu()
    return out


def protocol_weights(cfg: EvalConfig) -> dict[str, Optional[Path]]:
    """The local weights file of every extractor the protocol uses; fails clearly when one is missing."""
    configured = {"inception-v3-compat": cfg.inception_weights, "vgg16": cfg.vgg16_weights}
    if cfg.extractor not in configured:
        configured[cfg.extractor] = cfg.extractor_weights
    paths, missing = {}, []
    for name in _extractors(cfg):
        try:
            paths[name] = resolve_weights(name, configured.get(name), cfg.download_weights)
        except MissingWeightsError as e:
            missing.append(str(e))
    if missing:  # every missing file in one message: one round trip to the machine that has them
        raise MissingWeightsError("\n".join(missing) if len(missing) == 1 else
                                  f"{len(missing)} weights files are missing:\n" + "\n".join(f"- {m}" for m in missing))
    for name, path in paths.items():  # a file with the right name but other content is refused here
        if path is not None:
            verify_weights(name, path, cfg.allow_unverified_weights)
    return paths


@dataclasses.dataclass
class _Evaluation:
    """One evaluation, prepared before any image is generated: what is evaluated, against what, how."""

    cfg: EvalConfig
    source: Any                       # a generator, a folder (Path) or RealImages of a dataset
    is_generator: bool
    resolution: int
    num_classes: int                  # the generator's (0: unconditional, or not a generator)
    weights: dict[str, Optional[Path]]
    weights_info: dict[str, Optional[dict[str, Any]]]
    device: torch.device
    reference: _Reference
    common: dict[str, Any]            # torch-fidelity keyword arguments of every call
    loader_workers: int
    rank: int
    kid_subset_size: Optional[int] = None
    per_class_n: Optional[int] = None
    folder_resized: int = 0           # images of a folder that torch-fidelity resizes (allowed explicitly)
    warnings: list[str] = dataclasses.field(default_factory=list)  # recorded in the protocol

    def weights_key(self, name: str) -> str:
        """A cache-name suffix naming the extractor's weights file (none for built-in weights)."""
        return f"-w{self.weights_info[name]['sha256'][:8]}" if self.weights_info[name] else ""

    def class_seed(self, k: int) -> int:
        """Intra-FID: each class its own latents, none shared with the main set."""
        return self.cfg.seed + 1 + k


def evaluate(source: Source, dataset_cfg: Mapping[str, Any], cfg: Union[EvalConfig, Mapping[str, Any], None] = None,
             **overrides: Any) -> dict[str, Any]:
    """Evaluate a generator, an image folder or a dataset against a dataset's reference split.

    ``source``: a generator (``G(z, c) -> [-1, 1]``), a folder of image files, or a
    transgan dataset. ``dataset_cfg``: the dataset config of the reference (as in
    configs/dataset/). ``cfg``/``overrides``: the protocol (:class:`EvalConfig`). Returns
    ``fid``, ``kid_mean``, ``kid_std``, ``isc_mean``, ``isc_std``, ``precision``,
    ``recall``, ``intra_fid`` (those computed) and ``protocol``.

    The steps: prepare (checks, extractor weights, the reference), then per extractor sample and
    extract the evaluated images' features, compute the registered metrics against the reference
    (main process), and record the protocol.
    """
    job = _prepare(source, dataset_cfg, eval_config(cfg, **overrides))
    cfg, results = job.cfg, {}
    G = job.source if job.is_generator else None
    home = next(G.parameters(), torch.empty(0)).device if G is not None else None  # put back there afterwards
    was_training = G.training if G is not None else False
    if G is not None:
        job.source = G.to(job.device).eval()  # sampling, not training: batch norm and dropout in inference mode
    try:
        for name, metrics in _extractors(cfg).items():
            wanted = [METRICS[m].feature for m in metrics] + (["fid"] if cfg.intra_fid and name == cfg.extractor else [])
            extractor = feature_extractor(name, wanted, job.weights[name], job.device, verbose=cfg.verbose)
            kwargs = dict(job.common, feature_extractor=name,
                          feature_extractor_weights_path=weights_path_argument(name, job.weights[name]))
            if metrics:
                results.update(_registered_metrics(job, name, metrics, extractor, kwargs))
            if cfg.intra_fid and name == cfg.extractor:
                results.update(_intra_fid(job, name, extractor, kwargs))
    finally:
        if G is not None:
            G.train(was_training).to(home)
    if job.rank != 0:  # the main process computed the numbers from everyone's features; it tells the others
        return share_from_main(None)
    results["protocol"] = protocol_record(job)
    order = [*result_keys(), "intra_fid_per_class", "protocol"]
    return share_from_main({k: results[k] for k in order if k in results})


def _prepare(source: Source, dataset_cfg: Mapping[str, Any], cfg: EvalConfig) -> _Evaluation:
    """Check the source and the protocol, resolve the extractor weights (a missing file fails now) and the reference."""
    is_generator = isinstance(source, nn.Module)
    if isinstance(source, (str, Path)):
        source = Path(source).expanduser()
        if not source.is_dir():
            raise FileNotFoundError(f"no folder of images at {source}")
    elif not is_generator and not isinstance(source, Dataset):
        raise ConfigError(f"cannot evaluate a {type(source).__name__}: give a generator, a folder or a dataset")
    # Resolution: the generator's; a folder or dataset needs it from the protocol or the dataset config.
    resolution = cfg.resolution
    if is_generator:
        if resolution is not None and resolution != int(source.img_resolution):
            raise ConfigError(f"the protocol is at {resolution}x{resolution} but the generator makes "
                              f"{source.img_resolution}x{source.img_resolution} images")
        resolution = int(source.img_resolution)
        check_truncation(source, cfg.truncation_psi)
    elif cfg.truncation_psi != 1.0:
        raise ConfigError("eval.truncation_psi applies to generators only")
    resolution = resolution or dataset_cfg.get("resolution")
    if not resolution:
        raise ConfigError("set eval.resolution: the images' size cannot be read from a folder or dataset")
    num_classes = int(getattr(source, "num_classes", 0) or 0) if is_generator else 0
    if cfg.intra_fid and not num_classes:
        raise ConfigError("eval.intra_fid needs a class-conditional generator (num_classes > 0)")
    for m in cfg.metrics:
        need = METRICS[m].classes
        if need and num_classes != need:
            raise ConfigError(f"eval.metrics=[{m}] needs a generator conditioned on {need} classes "
                              f"({METRICS[m].classes_are}); this one has {num_classes}")
    weights = protocol_weights(cfg)  # weights first: a missing file must fail before any image is generated
    weights_info = {name: ({"file": str(path), "sha256": file_sha256(path),
                            "verified": verify_weights(name, path, cfg.allow_unverified_weights)} if path else None)
                    for name, path in weights.items()}
    device = _device(cfg, source)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    reference = _Reference(reference_dataset_config(dataset_cfg, cfg), int(resolution), cfg, cache_dir)
    folder_resized = _check_folder_sizes(source, int(resolution), reference, cfg) if isinstance(source, Path) else 0
    if not is_generator and not isinstance(source, Path):
        source = RealImages(source)
    # torch-fidelity starts min(4, 2 x cores) loader workers; torch warns (and the machine thrashes) when
    # that exceeds the cores this process may use, so workers run only where 4 fit.
    loader_workers = 4 if cfg.reference_workers and available_cores() >= 4 else 0
    common = dict(cuda=device.type == "cuda", batch_size=cfg.batch_size, rng_seed=cfg.seed, verbose=cfg.verbose,
                  cache_root=str(cache_dir), cache=True, save_cpu_ram=loader_workers == 0,
                  samples_find_deep=True, samples_resize_and_crop=int(resolution), samples_shuffle=True,
                  isc_splits=cfg.isc_splits, prc_neighborhood=cfg.prc_neighborhood, kid_subsets=cfg.kid_subsets)
    return _Evaluation(cfg, source, is_generator, int(resolution), num_classes, weights, weights_info, device,
                       reference, common, loader_workers, process_group()[0], folder_resized=folder_resized)


def _check_folder_sizes(folder: Path, resolution: int, reference: "_Reference", cfg: EvalConfig) -> int:
    """How many of a folder's images are not ``resolution`` square; refused unless ``eval.allow_folder_resize``.

    torch-fidelity brings such images to size with its own Resize + CenterCrop, not the way the
    reference images were brought there (the dataset's crop, then PIL bicubic): a resampling
    difference FID measures as a distance between the sets.
    """
    suffixes = {f".{e}" for e in torch_fidelity.defaults.DEFAULTS["samples_find_ext"].split(",")}
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)
    if not files:
        raise ConfigError(f"{folder} holds no {'/'.join(sorted(suffixes))} images")
    off = []
    for path in files:
        try:
            with Image.open(path) as im:  # the header only
                if im.size != (resolution, resolution):
                    off.append((path, im.size))
        except (OSError, SyntaxError) as e:
            raise ConfigError(f"{path} is not a readable image ({type(e).__name__}: {e})") from None
    if off and not cfg.allow_folder_resize:
        (first, (w, h)) = off[0]
        raise ConfigError(
            f"{folder}: {len(off)} of {len(files)} images are not {resolution}x{resolution} (e.g. {first.name}: "
            f"{w}x{h}); torch-fidelity would resize them (Resize + CenterCrop), not as the reference was made "
            f"({_reference_resize(reference.dataset_cfg, resolution)}), and FID would count the difference. "
            f"Save them at {resolution}x{resolution} the reference's way, or set eval.allow_folder_resize=true "
            f"(recorded in the protocol)")
    return len(off)


def _sample_features(job: _Evaluation, extractor: Any, kwargs: dict[str, Any], fixed_class: Optional[int] = None,
                     n: Optional[int] = None, seed: Optional[int] = None,
                     ) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """Sample and extract: features of the evaluated images (and the classes asked of a generator)."""
    cfg = job.cfg
    if job.is_generator:
        gen = GeneratorSource(job.source, n or cfg.num_samples, seed=cfg.seed, fixed_class=fixed_class,
                              truncation_psi=cfg.truncation_psi)
        return generated_features(gen, extractor, cfg.batch_size, cfg.seed if seed is None else seed,
                                  job.device), gen.labels

    first = str(job.source) if isinstance(job.source, Path) else job.source
    return extract_featuresdict_from_input_id(1, extractor, **dict(kwargs, input1=first)), None


def _compute(names: list[str], extractor: Any, generated: dict[str, torch.Tensor], labels: Optional[torch.Tensor],
             reference_images: Dataset, cache_name: str, kwargs: dict[str, Any],
             split_features: Optional[Callable[[str], dict[str, torch.Tensor]]] = None) -> dict[str, float]:
    """The registered metrics ``names`` on these features against the reference (main process only)."""
    ref_kwargs = dict(kwargs, input2=reference_images, input2_cache_name=cache_name)
    inputs = MetricInputs(
        generated=generated, layer=extractor.get_default_feature_layer_for_metric, labels=labels,
        reference_features=lambda: extract_featuresdict_from_input_id_cached(2, extractor, **ref_kwargs),
        reference_fid_statistics=lambda layer: fid_input_id_to_statistics_cached(2, extractor, layer, **ref_kwargs),
        options=kwargs, split_features=split_features)
    out: dict[str, float] = {}
    for m in names:
        out.update(METRICS[m].fn(inputs))
    return out


def _registered_metrics(job: _Evaluation, name: str, metrics: list[str], extractor: Any,
                        kwargs: dict[str, Any]) -> dict[str, float]:
    """The metrics of one extractor on the main sample (every process samples; the main one computes)."""
    generated, labels = _sample_features(job, extractor, kwargs)
    if job.rank != 0:
        return {}
    if "kid" in metrics:  # torch-fidelity refuses subsets larger than either set
        n1 = next(iter(generated.values())).shape[0]
        job.kid_subset_size = min(job.cfg.kid_subset_size, n1, job.reference.size())
        kwargs["kid_subset_size"] = job.kid_subset_size
        if job.kid_subset_size < job.cfg.kid_subset_size:
            job.warnings.append(f"KID subsets shrunk from {job.cfg.kid_subset_size} to {job.kid_subset_size} "
                                f"images (the smaller set: {n1} generated, {job.reference.size()} reference); "
                                f"KID with other subset sizes is not comparable")
            log.warning(job.warnings[-1])
    return _compute(metrics, extractor, generated, labels, job.reference.images(),
                    job.reference.name + job.weights_key(name), kwargs,
                    split_features=lambda split: _split_features(job, split, extractor, name, kwargs))


def _split_features(job: _Evaluation, split: str, extractor: Any, name: str,
                    kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Features of every image of one split of the evaluated dataset (torch-fidelity's cache, named by split)."""
    ref = job.reference
    cfg = dataclasses.replace(job.cfg, split=split, reference_samples=None)
    images = _Reference({**ref.dataset_cfg, "split": split}, job.resolution, cfg, ref.cache_dir)
    return extract_featuresdict_from_input_id_cached(2, extractor, **dict(
        kwargs, input2=images.images(), input2_cache_name=images.name + job.weights_key(name)))


def _intra_fid(job: _Evaluation, name: str, extractor: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """FID per class against that class's reference images, and their mean."""
    cfg = job.cfg
    job.per_class_n = cfg.intra_fid_samples_per_class or max(2, cfg.num_samples // job.num_classes)
    fids = []
    for k in range(job.num_classes):
        generated, _ = _sample_features(job, extractor, kwargs, fixed_class=k, n=job.per_class_n,
                                        seed=job.class_seed(k))
        if job.rank == 0:
            fids.append(_compute(["fid"], extractor, generated, None, job.reference.class_images(k),
                                 f"{job.reference.name}-class{k}{job.weights_key(name)}",
                                 dict(kwargs, rng_seed=job.class_seed(k)))["fid"])
    return {"intra_fid": float(np.mean(fids)), "intra_fid_per_class": fids} if job.rank == 0 else {}


def protocol_record(job: _Evaluation) -> dict[str, Any]:
    """Everything that decides the numbers (extractor and weights, samples, reference, resizing, seeds)."""
    cfg, source, plan = job.cfg, job.source, _extractors(job.cfg)
    ref = job.reference.info()
    # The extractor behind the numbers: eval.extractor, unless all it was asked for went elsewhere
    # (eval.metrics=[prc] on an Inception protocol is VGG16 alone).
    main_extractor = cfg.extractor if plan.get(cfg.extractor) or cfg.intra_fid else next(iter(plan))
    main = job.weights_info.get(main_extractor)
    resolution = job.resolution
    return {
        "source": "generator" if job.is_generator else str(source) if isinstance(source, Path) else "dataset",
        "source_split": getattr(source.dataset, "split", None) if isinstance(source, RealImages) else None,
        "network": cfg.network if job.is_generator else None,
        "extractor": main_extractor,
        "extractors": {name: metrics + (["intra_fid"] if cfg.intra_fid and name == cfg.extractor else [])
                       for name, metrics in plan.items()},
        "weights": job.weights_info,
        "weights_sha256": main["sha256"] if main else None,
        "allow_unverified_weights": cfg.allow_unverified_weights,
        "num_samples": cfg.num_samples if job.is_generator else (
            _count_images(source) if isinstance(source, Path) else len(source)),
        "intra_fid_samples_per_class": job.per_class_n if cfg.intra_fid else None,
        "intra_fid_seeds": [job.class_seed(k) for k in range(job.num_classes)] if cfg.intra_fid else None,
        "labels": "class-balanced" if job.num_classes else None,
        "num_classes": job.num_classes,
        "dataset": ref["dataset"].get("name"),
        "split": cfg.split,
        "reference_images": ref["num_images"],
        "reference_cache": ref["name"],
        "reference_dataset": ref["dataset"],
        "resolution": resolution,
        "resize": {"reference": _reference_resize(ref["dataset"], resolution),
                   "folder": (None if not isinstance(source, Path) else
                              f"none: every image is {resolution}x{resolution}" if not job.folder_resized else
                              f"{job.folder_resized} images to {resolution}x{resolution} by torch-fidelity (Resize + "
                              f"CenterCrop), allowed by eval.allow_folder_resize"),
                   "extractor": {name: _EXTRACTOR_RESIZE.get(name, "the extractor's own") for name in plan}},
        "feature_layers": {name: {m: _feature_layer(name, METRICS[m].feature)
                                  for m in metrics + (["fid"] if not metrics else [])}
                           for name, metrics in plan.items()},
        "device": str(job.device),
        "dtype": "float32",  # torch-fidelity's extractors compute in float32 (their internal dtype default)
        "loader_workers": job.loader_workers,
        "seed": cfg.seed,
        "truncation_psi": cfg.truncation_psi if job.is_generator else None,
        "batch_size": cfg.batch_size,
        "kid_subsets": cfg.kid_subsets if job.kid_subset_size else None,
        "kid_subset_size": job.kid_subset_size,
        "warnings": list(job.warnings),
        "isc_splits": cfg.isc_splits if "isc" in cfg.metrics else None,
        "prc_neighborhood": cfg.prc_neighborhood if "prc" in cfg.metrics else None,
        "versions": {"torch_fidelity": torch_fidelity.__version__, "torch": torch.__version__,
                     "torchvision": _version("torchvision"), "PIL": _version("PIL"), "numpy": np.__version__},
    }


def fd_digits(G: nn.Module, dataset_cfg: Mapping[str, Any], num_samples: int = 1000, seed: int = 0,
              cache_dir: Optional[str] = None) -> float:
    """FD-digits of ``num_samples`` generator samples against the digits train split (cheap, CPU, cached)."""
    out = evaluate(G, dataset_cfg, EvalConfig(metrics=["fid"], extractor=FD_DIGITS, num_samples=num_samples,
                                              batch_size=250, seed=seed, split="train", cache_dir=cache_dir,
                                              reference_workers=False, dataset={"name": "digits"}))
    return out["fid"]


def _reference_resize(dataset_cfg: Mapping[str, Any], resolution: int) -> str:
    """How transgan.data brings the reference images to ``resolution`` (for the protocol)."""
    if dataset_cfg.get("name") == "digits":
        return f"8x8 digits resized to {resolution}x{resolution} (bilinear, antialiased)"
    crop = dataset_cfg.get("center_crop")
    first = f"center crop {crop}x{crop}" if crop else "square center crop by the shorter side"
    return f"{first}, then resize to {resolution}x{resolution} (PIL bicubic)"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _feature_layer(extractor: str, metric: str) -> str:
    return str(FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric(metric))


def _version(module: str) -> Optional[str]:
    try:
        return str(importlib.import_module(module).__version__)
    except (ImportError, AttributeError):
        return None


def _count_images(source: Any) -> int:
    if isinstance(source, Path):

        return len(glob_samples_paths(str(source), True, "png,jpg,jpeg", None, verbose=False))
    return len(source)

