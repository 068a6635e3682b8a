"""Images as torch-fidelity wants them: uint8 RGB [B, 3, H, W] in [0, 255].

Two adapters feed :func:`torch_fidelity.calculate_metrics`:

* :class:`GeneratorSource` wraps a transgan generator (``G(z, c) -> [-1, 1]``) as a
  ``torch_fidelity.GenerativeModelBase``. It reports ``num_classes = 0`` to torch-fidelity
  and draws the class labels itself, class-balanced, because torch-fidelity 0.4.0's
  conditional path calls ``np.int``, which NumPy >= 1.24 no longer has.
* :class:`RealImages` turns a transgan dataset (float [-1, 1] images, label) into the
  uint8 tensors torch-fidelity reads; :class:`LazyDataset` builds it only when a reference
  statistic is not cached, so a cached reference needs no dataset on disk.

Grayscale images are repeated to three channels, as torch-fidelity's own folder loader
(``PIL.Image.convert("RGB")``) does, so every extractor sees the same kind of input.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch_fidelity import GenerativeModelBase

from transgan.errors import ConfigError
from transgan.nn.style import is_style_generator, mix_styles


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] to uint8 [0, 255]; the exact inverse of ``x / 127.5 - 1`` on real images."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Repeat a single channel to three; RGB passes through; anything else is refused."""
    channels = images.shape[-3]
    if channels == 3:
        return images
    if channels == 1:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    raise ValueError(f"images must have 1 or 3 channels for the feature extractors, not {channels}")


def balanced_labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    """``n`` labels in which every class occurs floor(n/K) or ceil(n/K) times, in a seeded random order."""
    labels = torch.arange(n) % num_classes
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return labels[order]


# On CPU a generator runs an evaluation batch in chunks of this many samples: a batch of 250 digits
# spills its activations out of the caches, and chunks of 64 give the same images 1.3-1.8x sooner
# for swin_gan, r3gan and styletoken (docs/evaluation.md). A GPU takes the whole batch.
CPU_CHUNK = 64


class GeneratorSource(GenerativeModelBase):
    """A transgan generator as a torch-fidelity input: noise in, uint8 RGB images out.

    Labels are drawn here, not by torch-fidelity: class-balanced over ``num_samples``
    (or all equal to ``fixed_class`` for intra-class FID). ``truncation_psi != 1`` uses
    the style generator's w-truncation (``G.mapping(z, c, truncation_psi)`` then
    ``G.synthesis``).
    """

    def __init__(self, G: nn.Module, num_samples: int, seed: int = 0, fixed_class: Optional[int] = None,
                 truncation_psi: float = 1.0) -> None:
        super().__init__()
        for attr in ("z_dim", "num_classes", "img_resolution", "img_channels"):
            if not hasattr(G, attr):
                raise ConfigError(f"the generator has no attribute {attr!r}; it does not follow the generator contract")
        if num_samples < 1:
            raise ConfigError(f"number of samples must be >= 1, not {num_samples}")
        self.G = G
        self.num_samples = int(num_samples)
        self.truncation_psi = float(truncation_psi)
        check_truncation(G, self.truncation_psi)
        K = int(G.num_classes)
        if fixed_class is not None:
            if not K:
                raise ConfigError("a fixed class was asked of an unconditional generator")
            if not 0 <= fixed_class < K:
                raise ConfigError(f"class {fixed_class} is outside the generator's {K} classes")
            self.labels: Optional[torch.Tensor] = torch.full((self.num_samples,), int(fixed_class))
        else:
            self.labels = balanced_labels(self.num_samples, K, seed) if K else None
        self.drawn = 0  # samples produced so far; the next batch takes the labels after them

    @property
    def z_size(self) -> int:
        return int(self.G.z_dim)

    @property
    def z_type(self) -> str:
        return "normal"

    @property
    def num_classes(self) -> int:
        # Zero on purpose: torch-fidelity's own label sampling uses np.int (gone in NumPy 2).
        return 0

    def generate(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """Images in [-1, 1] for latents ``z`` and labels ``c``, truncated if asked."""
        if z.device.type == "cpu" and z.shape[0] > CPU_CHUNK:
            return torch.cat([self.generate(z[i:i + CPU_CHUNK], None if c is None else c[i:i + CPU_CHUNK])
                              for i in range(0, z.shape[0], CPU_CHUNK)])
        if self.truncation_psi != 1.0:
            return self.G.synthesis(self.G.mapping(z, c, truncation_psi=self.truncation_psi))
        return self.G(z, c)

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """One batch of uint8 RGB images [B, 3, H, W] on the device torch-fidelity put ``z`` on."""
        out = self.images(z, self.drawn)
        self.drawn += z.shape[0]
        return out

    @torch.no_grad()
    def images(self, z: torch.Tensor, start: int) -> torch.Tensor:
        """uint8 RGB images of samples ``start .. start + len(z)`` (their labels are those samples')."""
        device = next(self.G.parameters()).device
        n = z.shape[0]
        c = None
        if self.labels is not None:
            if start + n > self.num_samples:
                raise RuntimeError(f"asked for more than the {self.num_samples} samples this source was built for")
            c = self.labels[start:start + n].to(device)
        images = self.generate(z.to(device), c)
        expected = (n, int(self.G.img_channels), int(self.G.img_resolution), int(self.G.img_resolution))
        if tuple(images.shape) != expected:
            raise RuntimeError(f"the generator returned images of shape {tuple(images.shape)}, expected {expected}")
        return to_rgb(to_uint8(images)).to(z.device)


def check_truncation(G: nn.Module, truncation_psi: float) -> None:
    """Refuse truncation on a generator that has no mapping network to truncate in."""
    if truncation_psi != 1.0 and not (hasattr(G, "mapping") and hasattr(G, "synthesis")):
        raise ConfigError(f"truncation_psi={truncation_psi} needs a style-based generator with G.mapping and "
                          f"G.synthesis; {type(G).__name__} has none (use 1.0)")


class RealImages(Dataset):
    """A transgan dataset's images (optionally a subset of indices) as uint8 RGB tensors."""

    def __init__(self, dataset: Dataset, indices: Optional[Sequence[int]] = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.dataset[self.indices[i]]
        image = item[0] if isinstance(item, (tuple, list)) else item
        return to_rgb(to_uint8(image)).contiguous()


class LazyDataset(Dataset):
    """A dataset built on first use: torch-fidelity only touches it when its cache misses."""

    def __init__(self, build: Callable[[], Dataset]) -> None:
        self._build = build
        self._dataset: Optional[Dataset] = None

    @property
    def dataset(self) -> Dataset:
        """The underlying dataset, built now if it was not yet."""
        if self._dataset is None:
            self._dataset = self._build()
        return self._dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Class label of every item, read from the dataset's label list when it has one (no image decoding)."""
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and len(values) == len(dataset):
            return np.asarray([int(v) for v in values])
    items = getattr(dataset, "items", None)  # transgan's file datasets: (file, label) pairs, no decoding needed
    if items is not None and len(items) == len(dataset):
        return np.asarray([int(label) for _, label in items])
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


# ----------------------------------------------------------------------------- images from seeds
# Everything below is shared by tools/generate.py and the web app (transgan/serve): a seed names one
# latent for ever, so a grid, a strip or a served image can be reproduced from its seed alone.

def truncation_kind(G: nn.Module) -> str:
    """``"psi"`` (w-space truncation) for style generators, ``"z_threshold"`` (resampled z) for the others."""
    return "psi" if is_style_generator(G) else "z_threshold"


def truncate_z(z: torch.Tensor, threshold: float, generator: torch.Generator, max_rounds: int = 10_000) -> torch.Tensor:
    """Redraw every entry of ``z`` with |z| > ``threshold`` from N(0, 1) until none is left (BigGAN's trick)."""
    if not threshold > 0:
        raise ConfigError(f"the z truncation threshold must be > 0, not {threshold}")
    z = z.clone()
    for _ in range(max_rounds):
        outside = z.abs() > threshold
        if not outside.any():
            return z
        z[outside] = torch.randn(int(outside.sum()), generator=generator, dtype=z.dtype)
    raise ConfigError(f"z truncation threshold {threshold} is too small: entries still outside after {max_rounds} draws")


def seed_latents(seeds: Sequence[int], z_dim: int, threshold: Optional[float] = None) -> torch.Tensor:
    """One latent [z_dim] per seed, drawn from a generator seeded with it (global RNG untouched), stacked [N, z_dim].

    With ``threshold`` the entries beyond it are redrawn from the same seeded stream, so a
    truncated latent is a function of (seed, threshold) too.
    """
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(z_dim, generator=g)
        rows.append(truncate_z(z, threshold, g) if threshold is not None else z)
    return torch.stack(rows) if rows else torch.empty(0, z_dim)


def _device_of(G: nn.Module) -> torch.device:
    param = next(iter(G.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def synthesize(G: nn.Module, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
               batch_size: int = 64) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] (float, CPU) for latents z [N, z_dim] and labels c [N].

    Style generators run ``mapping`` (w-truncation ``psi``) then ``synthesis`` with their stored
    constant noise, so the image of a latent does not change between calls. G runs in eval
    mode (BatchNorm on running statistics, w_avg frozen); its mode is restored afterwards.
    """
    check_truncation(G, truncation_psi)
    if c is not None and len(c) != len(z):
        raise ValueError(f"{len(z)} latents but {len(c)} labels")
    device, was_training = _device_of(G), G.training
    G.eval()
    try:
        out = []
        for i in range(0, len(z), batch_size):
            zb = z[i:i + batch_size].to(device)
            cb = c[i:i + batch_size].to(device) if c is not None else None
            if is_style_generator(G):
                images = G.synthesis(G.mapping(zb, cb, truncation_psi=truncation_psi), noise_mode="const")
            else:
                images = G(zb, cb)
            out.append(images.float().cpu())
    finally:
        G.train(was_training)
    return torch.cat(out) if out else torch.empty(0, int(G.img_channels), int(G.img_resolution),
                                                    int(G.img_resolution))


@torch.no_grad()
def synthesize_ws(G: nn.Module, ws: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images [N, C, H, W] (float, CPU) of a style generator for ws [N, num_ws, w_dim], constant noise."""
    if not is_style_generator(G):
        raise ConfigError(f"{type(G).__name__} is not a style-based generator (no G.mapping / G.synthesis)")
    device, was_training = _device_of(G), G.training
    G.eval()
    try:
        return torch.cat([G.synthesis(w.to(device), noise_mode="const").float().cpu() for w in ws.split(batch_size)])
    finally:
        G.train(was_training)


@torch.no_grad()
def map_latents(G: nn.Module, z: torch.Tensor, c: Optional[torch.Tensor] = None,
                truncation_psi: float = 1.0) -> torch.Tensor:
    """ws [N, num_ws, w_dim] (CPU) of a style generator, w_avg left as it is."""
    if not is_style_generator(G):
        raise ConfigError(f"{type(G).__name__} is not a style-based generator (no G.mapping / G.synthesis)")
    device, was_training = _device_of(G), G.training
    G.eval()  # the mapping network updates w_avg only in training mode
    try:
        return G.mapping(z.to(device), c.to(device) if c is not None else None,
                         truncation_psi=truncation_psi).float().cpu()
    finally:
        G.train(was_training)


# ----------------------------------------------------------------------------- interpolation

def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line a -> b: for t [T] and a, b [...], returns [T, ...] with exactly a at t=0 and b at t=1."""
    t = t.to(a.dtype).reshape(-1, *([1] * a.dim()))
    return torch.lerp(a.unsqueeze(0), b.unsqueeze(0), t)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation along the great circle through a and b (last dim), [T, ...] for t [T].

    ``sin((1-t) w)/sin w * a + sin(t w)/sin w * b`` with w the angle between a and b (Shoemake 1985,
    used for GAN latents by White 2016): unit vectors stay unit, Gaussian latents keep their typical
    norm instead of shrinking mid-way as on a straight line. Exactly a at t=0 and b at t=1; nearly
    parallel vectors fall back to :func:`lerp`.
    """
    t = t.to(a.dtype).reshape(-1, *([1] * a.dim()))
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    spherical = (torch.sin((1 - t) * omega) / sin) * a + (torch.sin(t * omega) / sin) * b
    return torch.where(sin > eps, spherical, lerp(a, b, t.flatten()))


INTERPOLATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "lerp": lerp, "slerp": slerp}


def interpolate(G: nn.Module, seeds: tuple[int, int], steps: int, method: str = "slerp", space: str = "z",
                c: Optional[int] = None, truncation_psi: float = 1.0,
                z_threshold: Optional[float] = None) -> torch.Tensor:
    """Images [steps, C, H, W] along the path between the latents of two seeds (first and last: the seeds' own images).

    ``space="z"`` interpolates latents (any generator); ``space="w"`` interpolates the ws of a
    style generator after mapping (and truncation), where StyleGAN's paths are smoother.
    """
    if method not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, not {method!r}")
    if space not in ("z", "w"):
        raise ConfigError(f"interpolation space must be z or w, not {space!r}")
    if steps < 2:
        raise ConfigError(f"an interpolation needs at least 2 steps, not {steps}")
    z = seed_latents(seeds, int(G.z_dim), z_threshold)
    labels = class_labels(G, c, 2)
    t = torch.linspace(0, 1, steps)
    if space == "w":
        ws = map_latents(G, z, labels, truncation_psi)
        return synthesize_ws(G, INTERPOLATIONS[method](ws[0], ws[1], t))
    path = INTERPOLATIONS[method](z[0], z[1], t)
    return synthesize(G, path, class_labels(G, c, steps), truncation_psi)


def class_labels(G: nn.Module, c: Optional[int], n: int) -> Optional[torch.Tensor]:
    """``n`` copies of class ``c`` as labels [n] for a conditional G (None for an unconditional one)."""
    K = int(G.num_classes)
    if not K:
        if c is not None:
            raise ConfigError(f"the generator is unconditional; no class can be chosen (got {c})")
        return None
    if c is None or not 0 <= int(c) < K:
        raise ConfigError(f"the generator is conditional: choose a class in 0..{K - 1} (got {c})")
    return torch.full((n,), int(c), dtype=torch.long)


# ----------------------------------------------------------------------------- style mixing

def style_mixing_grid(G: nn.Module, row_seeds: Sequence[int], col_seeds: Sequence[int], c: Optional[int] = None,
                      crossover: Optional[int] = None, truncation_psi: float = 1.0) -> torch.Tensor:
    """StyleGAN's mixing figure as images [(R+1) * (C+1), C, H, W], row-major, first cell blank (-1).

    Top row: the column seeds' images; left column: the row seeds'. Cell (i, j) takes ws
    [0, crossover) — the coarse styles — from row seed i and ws [crossover, num_ws) from column
    seed j (default crossover: num_ws // 2).
    """
    if not is_style_generator(G):
        raise ConfigError(f"style mixing needs a style-based generator; {type(G).__name__} has no G.mapping")
    num_ws = int(G.num_ws)
    crossover = num_ws // 2 if crossover is None else int(crossover)
    if not 0 <= crossover <= num_ws:
        raise ConfigError(f"crossover must be in 0..{num_ws} (the generator has {num_ws} ws), not {crossover}")
    if not row_seeds or not col_seeds:
        raise ConfigError("style mixing needs at least one row seed and one column seed")
    seeds = list(row_seeds) + list(col_seeds)
    ws = map_latents(G, seed_latents(seeds, int(G.z_dim)), class_labels(G, c, len(seeds)), truncation_psi)
    rows, cols = ws[:len(row_seeds)], ws[len(row_seeds):]
    pairs = (len(rows) * len(cols), num_ws, ws.shape[-1])  # mix_styles takes [B, num_ws, w_dim]
    mixed = mix_styles(rows[:, None].expand(-1, len(cols), -1, -1).reshape(pairs),
                       cols[None].expand(len(rows), -1, -1, -1).reshape(pairs), crossover).view(len(rows), len(cols),
                                                                                                 num_ws, -1)
    top = torch.cat([ws[:1], cols])  # the blank corner is replaced below
    table = torch.cat([top[None], torch.cat([rows[:, None], mixed], dim=1)])  # [R+1, C+1, num_ws, w_dim]
    images = synthesize_ws(G, table.flatten(0, 1))
    images[0] = -1
    return images


# ----------------------------------------------------------------------------- nearest neighbours

def nearest_neighbours(queries: torch.Tensor, references: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances [N, k] and indices [N, k] of each query's ``k`` nearest references (features [*, F])."""
    if not 1 <= k <= len(references):
        raise ConfigError(f"k must be in 1..{len(references)} (the number of reference images), not {k}")
    d = torch.cdist(queries.double(), references.double())
    distances, indices = d.topk(k, dim=1, largest=False)
    return distances, indices
