"""What tools/generate.py makes from a generator: class x seed grids, interpolation strips, style-mixing
grids, and a nearest-neighbour memorization report; plus PNG encoding shared with the web app.

Every image comes from a seed (``transgan.eval.sampling.seed_latents``), so each picture can be
made again from the numbers written beside it. Truncation has one knob whose meaning follows the
generator: w-space ``psi`` for style generators (1 = none), a z threshold for the others (entries
with |z| > t redrawn; None = none), as in the seed paper.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from PIL import Image
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from transgan.data import build_dataset
from transgan.errors import ConfigError
from transgan.eval.extractors import register_extractors, resolve_weights, weights_path_argument
from transgan.eval.sampling import (
    interpolate,
    nearest_neighbours,
    seed_latents,
    style_mixing_grid,
    synthesize,
    to_rgb,
    to_uint8,
    truncation_kind,
)
from transgan.nn.style import is_style_generator
from transgan.runs.export import GeneratorInfo, LoadedGenerator

MAX_SEED = 2**32 - 1


# ----------------------------------------------------------------------------- parsing

def parse_seeds(spec: str) -> list[int]:
    """``"0-3,10"`` -> [0, 1, 2, 3, 10]; seeds are integers in 0..2^32-1."""
    seeds: list[int] = []
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise ConfigError(f"bad seed {part!r}: give integers or ranges such as 0-7,12") from None
        if not 0 <= first <= last <= MAX_SEED:
            raise ConfigError(f"bad seed range {part!r}: seeds are integers in 0..{MAX_SEED}, first <= last")
        if last - first >= 10_000:
            raise ConfigError(f"seed range {part!r} is longer than 10,000 images")
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise ConfigError("no seeds given")
    return seeds


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error message never echoes a huge input."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else f"<{value.bit_length()}-bit int>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def resolve_class(value: Any, info: GeneratorInfo) -> Optional[int]:
    """A class given by index or by name -> its index (None for an unconditional generator)."""
    if not info.num_classes:
        if value is not None:
            raise ConfigError(f"the generator is unconditional; it takes no class (got {short_repr(value)})")
        return None
    if value is None:
        raise ConfigError(f"choose a class: an index in 0..{info.num_classes - 1} or a name "
                          f"({', '.join(info.class_names[:5])}{', ...' if info.num_classes > 5 else ''})")
    if isinstance(value, str):
        if value in info.class_names:  # names first: a digits class is named "7"
            return info.class_names.index(value)
        # ASCII digits only ("²" and "①" pass str.isdigit() but not int()), and few of them: int() refuses
        # over 4,300 digits, and no class index needs more than 18.
        if not re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
            raise ConfigError(f"unknown class {short_repr(value)}; classes: {', '.join(info.class_names)[:200]}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < info.num_classes:
        raise ConfigError(f"unknown class {short_repr(value)}; the generator has {info.num_classes} classes "
                          f"(0..{info.num_classes - 1})")
    return value


def parse_classes(spec: Optional[str], info: GeneratorInfo) -> list[Optional[int]]:
    """``"all"``, ``None`` (all), or a comma list of indices/names -> class indices ([None] if unconditional)."""
    if not info.num_classes:
        if spec not in (None, "", "all"):
            raise ConfigError(f"the generator is unconditional; it takes no classes (got {spec!r})")
        return [None]
    if spec in (None, "", "all"):
        return list(range(info.num_classes))
    return [resolve_class(part.strip(), info) for part in str(spec).split(",") if part.strip()]


def truncation_settings(G: nn.Module, truncation: Optional[float]) -> tuple[float, Optional[float]]:
    """One user-facing truncation value -> (w-space psi, z threshold) for this generator."""
    if truncation is None:
        return 1.0, None
    if not math.isfinite(truncation):
        raise ConfigError(f"truncation must be a finite number, not {truncation}")
    if truncation_kind(G) == "psi":
        return float(truncation), None
    if truncation <= 0:
        raise ConfigError(f"the z truncation threshold must be > 0, not {truncation}")
    return 1.0, float(truncation)


# ----------------------------------------------------------------------------- images

@torch.no_grad()
def sample(G: nn.Module, seeds: Sequence[int], classes: Sequence[Optional[int]],
           truncation: Optional[float] = None, batch_size: int = 64) -> torch.Tensor:
    """Images [len(seeds), C, H, W] in [-1, 1]: image i from ``seeds[i]`` and ``classes[i]``."""
    if len(seeds) != len(classes):
        raise ValueError(f"{len(seeds)} seeds but {len(classes)} classes")
    psi, threshold = truncation_settings(G, truncation)
    z = seed_latents(seeds, int(G.z_dim), threshold)
    c = torch.tensor([int(k) for k in classes], dtype=torch.long) if G.num_classes else None
    if c is None and any(k is not None for k in classes):
        raise ConfigError("the generator is unconditional; classes must be None")
    return synthesize(G, z, c, truncation_psi=psi, batch_size=batch_size)


def class_seed_grid(G: nn.Module, classes: Sequence[Optional[int]], seeds: Sequence[int],
                    truncation: Optional[float] = None) -> torch.Tensor:
    """Images of every (class, seed) pair, row-major: one row per class, one column per seed."""
    pairs = [(k, s) for k in classes for s in seeds]
    return sample(G, [s for _, s in pairs], [k for k, _ in pairs], truncation)


def to_pil(image: torch.Tensor) -> Any:
    """One image [C, H, W] in [-1, 1] (or uint8) -> a PIL image (gray "L" for one channel, else RGB)."""
    pixels = image if image.dtype == torch.uint8 else to_uint8(image)
    array = pixels.permute(1, 2, 0).contiguous().cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)  # uint8 2-D -> "L", 3-D -> "RGB"


def png_bytes(image: torch.Tensor, size: Optional[int] = None) -> bytes:
    """PNG file contents of one image [C, H, W]; ``size`` scales it (nearest: pixels stay crisp)."""
    picture = to_pil(image)
    if size is not None and size != picture.width:
        picture = picture.resize((size, size), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def image_grid(images: torch.Tensor, cols: int, size: Optional[int] = None, padding: int = 2) -> Any:
    """Images [N, C, H, W] in [-1, 1] as one PIL image, ``cols`` per row, white gaps of ``padding`` pixels."""
    if len(images) == 0:
        raise ConfigError("no images to put in a grid")
    from torchvision.utils import make_grid  # deferred: torchvision takes ~1.3 s to import

    pixels = to_rgb(to_uint8(images))
    if size is not None and size != pixels.shape[-1]:
        pixels = torch.nn.functional.interpolate(pixels.float(), size=(size, size), mode="nearest").to(torch.uint8)
    grid = make_grid(pixels, nrow=max(1, cols), padding=padding, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())


def save_images(images: torch.Tensor, names: Sequence[str], out_dir: Path, size: Optional[int] = None) -> list[Path]:
    """One PNG per image under ``out_dir`` with the given file names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(images, names):
        path = out_dir / name
        path.write_bytes(png_bytes(image, size))
        paths.append(path)
    return paths


def interpolation_strips(G: nn.Module, seeds: tuple[int, int], steps: int, methods: Sequence[str],
                         space: str = "z", c: Optional[int] = None,
                         truncation: Optional[float] = None) -> torch.Tensor:
    """One strip of ``steps`` images per method (lerp, slerp), stacked row after row."""
    psi, threshold = truncation_settings(G, truncation)
    return torch.cat([interpolate(G, seeds, steps, method, space, c, psi, threshold) for method in methods])


def mixing_grid(G: nn.Module, row_seeds: Sequence[int], col_seeds: Sequence[int], c: Optional[int] = None,
                crossover: Optional[int] = None, truncation: Optional[float] = None) -> torch.Tensor:
    """The style-mixing table of a style generator (see ``transgan.eval.sampling.style_mixing_grid``)."""
    if not is_style_generator(G):
        raise ConfigError(f"style mixing needs a style-based generator (stylegan2, styletoken, swin_gan); "
                          f"{type(G).__name__} has no mapping network")
    psi, _ = truncation_settings(G, truncation)
    return style_mixing_grid(G, row_seeds, col_seeds, c, crossover, psi)


# ----------------------------------------------------------------------------- nearest neighbours

PIXELS = "pixels"


def default_features(info: GeneratorInfo) -> str:
    """fd-digits (the shipped judge) for digits runs, Inception for everything else."""
    return "fd-digits" if (info.dataset or {}).get("name") == "digits" else "inception-v3-compat"


class FeatureSpace:
    """Features of images in [-1, 1]: a torch-fidelity extractor's FID layer, or raw pixels."""

    def __init__(self, name: str, weights: Optional[str] = None, device: torch.device | str = "cpu") -> None:
        register_extractors()
        self.name, self.device, self.extractor = name, torch.device(device), None
        if name == PIXELS:
            return
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            raise ConfigError(f"unknown feature space {name!r}; choose {PIXELS} or one of "
                              f"{sorted(FEATURE_EXTRACTORS_REGISTRY)}")
        path = resolve_weights(name, weights)  # a missing Inception file fails here, before any image is made
        cls = FEATURE_EXTRACTORS_REGISTRY[name]
        self.layer = cls.get_default_feature_layer_for_metric("fid")
        argument = weights_path_argument(name, path)
        kwargs = {"feature_extractor_weights_path": argument} if argument is not None else {}
        self.extractor = cls(name, [self.layer], **kwargs).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Features [N, F] (float64, CPU) of images [N, C, H, W] in [-1, 1]."""
        out = []
        for batch in images.split(batch_size):
            if self.extractor is None:
                out.append(batch.flatten(1).double())
            else:
                out.append(self.extractor(to_rgb(to_uint8(batch)).to(self.device))[0].flatten(1).double().cpu())
        return torch.cat(out)


@dataclass
class MemorizationReport:
    """Samples beside their nearest training images: the picture and the numbers."""

    grid: Any                   # PIL image: one row per sample, the sample then its k neighbours
    records: list[dict[str, Any]]
    features: str
    train_nn_median: float      # scale: median distance from a training image to its nearest other one

    def save(self, out: Path) -> tuple[Path, Path]:
        """Write ``out`` (PNG) and the same name with .json; return both paths."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.grid.save(out)
        meta = out.with_suffix(".json")
        meta.write_text(json.dumps({"features": self.features, "train_nn_median": self.train_nn_median,
                                    "samples": self.records}, indent=2) + "\n")
        return out, meta


def training_images(info: GeneratorInfo, dataset_overrides: Optional[dict[str, Any]] = None,
                    limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's training images [M, C, H, W] in [-1, 1] at the generator's resolution, and their labels."""
    if info.dataset is None:
        raise ConfigError("this generator does not record its training dataset; name it with dataset=<name> "
                          "(and dataset.root=...)")
    cfg = OmegaConf.merge(OmegaConf.create(info.dataset), OmegaConf.create(dataset_overrides or {}))
    dataset = build_dataset(cfg, resolution=int(info.img_resolution))
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if dataset.images is not None:
        return dataset.images[:n].float(), dataset.labels[:n].long()
    items = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]).float(), torch.tensor([int(y) for _, y in items])


def memorization_report(loaded: LoadedGenerator, seeds: Sequence[int], classes: Sequence[Optional[int]],
                        k: int = 5, features: Optional[str] = None, weights: Optional[str] = None,
                        truncation: Optional[float] = None, dataset_overrides: Optional[dict[str, Any]] = None,
                        reference_limit: Optional[int] = None) -> MemorizationReport:
    """Each (class, seed) sample beside its ``k`` nearest training images in a feature space.

    A generator that memorizes shows near-copies: distances far below the typical distance
    between two different training images. The JSON lists, per sample, the neighbours' dataset
    indices, labels and distances.
    """
    G, info = loaded.G, loaded.info
    name = features or default_features(info)
    space = FeatureSpace(name, weights)
    real, labels = training_images(info, dataset_overrides, reference_limit)
    pairs = [(c, s) for c in classes for s in seeds]
    fakes = sample(G, [s for _, s in pairs], [c for c, _ in pairs], truncation)
    if real.shape[1:] != fakes.shape[1:]:
        raise ConfigError(f"training images {tuple(real.shape[1:])} and samples {tuple(fakes.shape[1:])} differ")
    real_features = space(real)
    distances, indices = nearest_neighbours(space(fakes), real_features, k)
    rows = torch.cat([torch.cat([fake[None], real[idx]]) for fake, idx in zip(fakes, indices)])
    records = [{"seed": int(s), "class": c, "class_name": info.class_names[c] if c is not None else None,
                "neighbours": [{"index": int(i), "label": int(labels[i]), "distance": float(d)}
                               for i, d in zip(idx, dist)]}
               for (c, s), idx, dist in zip(pairs, indices, distances)]
    return MemorizationReport(image_grid(rows, cols=k + 1), records, name, train_nn_median(real_features))


def train_nn_median(features: torch.Tensor, max_queries: int = 1000) -> float:
    """Median distance from a training image (the first ``max_queries``) to its nearest other training image.

    The scale for a memorization report: a sample much closer to a training image than training
    images are to each other is a near-copy.
    """
    if len(features) < 2:
        return float("nan")
    queries = features[:max_queries]
    d = torch.cdist(queries, features)
    d[torch.arange(len(queries)), torch.arange(len(queries))] = float("inf")  # not its own neighbour
    return float(d.min(dim=1).values.median())


def describe(info: GeneratorInfo, G: nn.Module) -> str:
    """One line about a loaded generator, for the tools' output."""
    kind = "style" if is_style_generator(G) else "plain"
    classes = f"{info.num_classes} classes" if info.num_classes else "unconditional"
    return (f"{info.generator['name']} ({kind}) {info.img_resolution}x{info.img_resolution}x{info.img_channels}, "
            f"{classes}, truncation: {truncation_kind(G)}")

