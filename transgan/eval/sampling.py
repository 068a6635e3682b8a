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
from torch.utils.data import Dataset
from torch_fidelity import GenerativeModelBase

from transgan.registry import ConfigError


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
        if self.truncation_psi != 1.0:
            return self.G.synthesis(self.G.mapping(z, c, truncation_psi=self.truncation_psi))
        return self.G(z, c)

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """One batch of uint8 RGB images [B, 3, H, W] on the device torch-fidelity put ``z`` on."""
        device = next(self.G.parameters()).device
        n = z.shape[0]
        c = None
        if self.labels is not None:
            if self.drawn + n > self.num_samples:
                raise RuntimeError(f"asked for more than the {self.num_samples} samples this source was built for")
            c = self.labels[self.drawn:self.drawn + n].to(device)
        self.drawn += n
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
