"""Datasets: digits and stacked digits (embedded), imagefolder, celeba, flowers102, cifar10, synthetic (random).

Every dataset returns ``(image, label)`` with ``image`` float32 ``[C, H, W]`` in [-1, 1]
at the model resolution and ``label`` an int (0 for unconditional data). Decoding is
deterministic; random augmentation happens on whole batches in the trainer
(:func:`transgan.data.transforms.random_augment`), where the checkpointed RNG drives it.

Nothing is downloaded unless ``download=true``; a missing dataset fails at once with
its expected on-disk layout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from transgan.data.transforms import ImageDecoder, load_image
from transgan.errors import ConfigError

log = logging.getLogger("transgan.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
COMMON_KEYS = {"name", "root", "resolution", "channels", "conditional", "center_crop", "split", "download",
               "augment", "bad_images", "num_workers", "cache", "max_images"}
EXTRA_KEYS = {"synthetic": {"size", "num_classes"}, "stacked_digits": {"size"}}  # options only one dataset has
# The class counts fixed by a dataset's definition (the data need not be on the machine to know them).
KNOWN_CLASSES = {"digits": 10, "stacked_digits": 1000, "cifar10": 10, "flowers102": 102}
DIGITS_SPLIT_SEED = 0       # random_state of the stratified digits train/test split
DIGITS_TEST_SIZE = 0.2      # 360 of the 1,797 images are held out
MAX_IMAGES_SEED = 0         # the max_images subset is fixed by this, not by the training seed


class DatasetNotFoundError(ConfigError):
    """The dataset's files are not where the config says; the message shows the expected layout."""


class ImageDataset(Dataset):
    """Base of every dataset: images in [-1, 1] at ``resolution`` with ``channels`` channels."""

    name: str = ""
    num_classes: int = 0
    class_names: list[str] = []
    channels: int = 3
    resolution: int = 32
    images: Optional[Tensor] = None  # set when decoded once into memory
    labels: Optional[Tensor] = None

    def __init__(self, items: Sequence[tuple[Any, int]], decoder: ImageDecoder, cache: bool = False,
                 bad_images: str = "skip") -> None:
        self.items = list(items)
        self.decoder = decoder
        self.channels, self.resolution = decoder.channels, decoder.resolution
        self.bad_images = bad_images
        self._unreadable: set[int] = set()  # files that failed to decode mid-run (warned about once)
        decoded = self._screen(cache)
        if cache:
            self.images = torch.stack(decoded)
            self.labels = torch.tensor([label for _, label in self.items], dtype=torch.long)

    def _screen(self, cache: bool) -> list[Tensor]:
        """Find unreadable files before training and skip or refuse them (``bad_images``), by name.

        Caching decodes every image anyway, and ``bad_images=fail`` asks for certainty, so both
        decode fully; otherwise only headers and structure are checked (fast), and a file that
        still fails to decode mid-run is replaced by the next readable one (see __getitem__).
        """
        full = cache or self.bad_images == "fail"
        decoded, bad, labels_before = [], [], {label for _, label in self.items}
        for i, (source, _) in enumerate(self.items):
            try:
                if full:
                    x = self._decode(i)
                    if cache:
                        decoded.append(x)
                elif isinstance(source, (str, Path)):
                    verify_image_header(source)
            except Exception as e:  # noqa: BLE001 - whatever a decoder raises, the file is unusable
                bad.append((i, e))
        if bad:
            names = ", ".join(f"{self.items[i][0]} ({type(e).__name__}: {e})" for i, e in bad[:20])
            names += f" ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            if self.bad_images == "fail":
                raise ConfigError(f"{len(bad)} of {len(self.items)} image files are unreadable "
                                  f"(dataset.bad_images=fail): {names}")
            log.warning("skipping %d of %d image files, unreadable: %s", len(bad), len(self.items), names)
            drop = {i for i, _ in bad}
            self.items = [item for i, item in enumerate(self.items) if i not in drop]
        if not self.items:
            raise ConfigError(f"none of the dataset's {len(bad)} image files can be read: {names}" if bad
                              else "the dataset holds no images")
        emptied = sorted(labels_before - {label for _, label in self.items})
        if emptied:  # conditional training would ask G for classes that D never sees real images of
            names = [self.class_names[c] if c < len(self.class_names) else str(c) for c in emptied]
            raise ConfigError(f"class(es) {', '.join(names)}: every image file is unreadable (see the warning above)")
        return decoded

    def _decode(self, i: int) -> Tensor:
        source, _ = self.items[i]
        return self.decoder(load_image(source) if isinstance(source, (str, Path)) else source)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if self.images is not None:
            return self.images[i], int(self.labels[i])
        # A file that passed the start-up check but fails to decode (e.g. a truncated JPEG) is replaced
        # by the next readable one: the same substitute every time, so resumed runs stay identical.
        for j in [(i + k) % len(self.items) for k in range(min(len(self.items), 100))]:
            try:
                return self._decode(j), self.items[j][1]
            except Exception as e:  # noqa: BLE001
                if self.bad_images == "fail":  # everything decoded at start: the file changed since
                    raise RuntimeError(f"{self.items[j][0]} became unreadable during the run: {e}") from e
                if j not in self._unreadable:
                    self._unreadable.add(j)
                    log.warning("skipping unreadable image %s (%s: %s); using the next one instead",
                                self.items[j][0], type(e).__name__, e)
        raise RuntimeError(f"100 image files in a row from {self.items[i][0]} on cannot be decoded")


# ----------------------------------------------------------------------------- digits

def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) into scikit-learn's digits: a fixed stratified 80/20 split."""
    # Deferred: scikit-learn takes about a second to import, and only the digits data need it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    train, test = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED,
                                   stratify=y)
    return np.sort(train), np.sort(test)


class DigitsDataset(ImageDataset):
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), resized."""

    name = "digits"

    def __init__(self, resolution: int, channels: int = 1, split: str = "train") -> None:
        from sklearn.datasets import load_digits  # deferred: ~1 s to import, digits only

        digits = load_digits()
        train, test = digits_split_indices()
        index = {"train": train, "test": test, "all": np.arange(len(digits.target))}[split]
        x = torch.from_numpy(digits.images[index]).float()[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                            align_corners=False, antialias=True).clamp(-1, 1)
        self.images = x.repeat(1, channels, 1, 1) if channels == 3 else x
        self.labels = torch.from_numpy(digits.target[index]).long()
        self.items = [(None, int(c)) for c in self.labels]
        self.channels, self.resolution = channels, resolution
        self.num_classes, self.class_names = 10, [str(d) for d in range(10)]


STACKED_DIGITS_SEED = 0  # which digits are stacked: part of the dataset's definition, not of a run


class StackedDigitsDataset(ImageDataset):
    """Stacked digits (Metz et al. 2017, Unrolled GANs; VEEGAN, PacGAN): three digits of one split as the R, G
    and B channels, 1,000 modes (the label is the mode, 100 x red digit + 10 x green + blue).

    ``size`` stacks drawn with a fixed seed, each channel an independent uniform draw from the split, so
    every mode is equally likely; the test split's stacks use only held-out digits.
    """

    name = "stacked_digits"

    def __init__(self, resolution: int, size: int = 10000, split: str = "train") -> None:
        if size < 1:
            raise ConfigError(f"stacked_digits needs size >= 1, got {size}")
        digits = DigitsDataset(resolution, channels=1, split=split)
        g = torch.Generator().manual_seed(STACKED_DIGITS_SEED)
        pick = torch.randint(0, len(digits.labels), (size, 3), generator=g)
        self.images = digits.images[pick.flatten(), 0].view(size, 3, resolution, resolution)
        self.labels = (digits.labels[pick] * torch.tensor([100, 10, 1])).sum(dim=1)
        self.items = [(None, int(c)) for c in self.labels]
        self.channels, self.resolution = 3, resolution
        self.num_classes, self.class_names = 1000, [f"{m:03d}" for m in range(1000)]


# ----------------------------------------------------------------------------- synthetic

class SyntheticDataset(ImageDataset):
    """Seeded uniform-noise images in memory: benchmarks and smoke runs that need no data on disk."""

    name = "synthetic"

    def __init__(self, resolution: int, channels: int = 3, size: int = 256, num_classes: int = 0) -> None:
        if size < 1 or num_classes < 0:
            raise ConfigError(f"synthetic dataset needs size >= 1 and num_classes >= 0, got {size}, {num_classes}")
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(size, channels, resolution, resolution, generator=g) * 2 - 1
        self.labels = (torch.randint(0, num_classes, (size,), generator=g) if num_classes
                       else torch.zeros(size, dtype=torch.long))
        self.items = [(None, int(c)) for c in self.labels]
        self.channels, self.resolution = channels, resolution
        self.num_classes, self.class_names = num_classes, [str(i) for i in range(num_classes)]


# ----------------------------------------------------------------------------- folders

def verify_image_header(path: Path) -> None:
    """Raise unless the file's header and structure are an image's (no full decode: fast)."""
    with Image.open(path) as im:
        im.verify()  # PNG chunk CRCs, ...; JPEG and BMP pixel data are not checked


IMAGEFOLDER_LAYOUT = """expected either class folders (conditional)
    root/<class_name>/*.png|jpg|...
or a flat folder (unconditional)
    root/*.png|jpg|..."""


def imagefolder_items(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, label) pairs and class names of an image folder (readability is checked by the dataset)."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset root {root} does not exist; {IMAGEFOLDER_LAYOUT}")
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS  # noqa: E731
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        items, names = [], []
        for label, cls in enumerate(classes):
            files = sorted(p for p in (root / cls).iterdir() if is_image(p))
            if not files:
                raise ConfigError(f"class folder {root / cls} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            items += [(p, label) for p in files]
        names = classes
    else:
        files = sorted(p for p in root.iterdir() if is_image(p))
        items, names = [(p, 0) for p in files], []
    if not items:
        raise DatasetNotFoundError(f"no images in {root}; {IMAGEFOLDER_LAYOUT}")
    return items, names


class FolderDataset(ImageDataset):
    """Images from a list of files, decoded on demand (or once, when ``cache``)."""

    def __init__(self, name: str, items: Sequence[tuple[Any, int]], class_names: list[str], decoder: ImageDecoder,
                 cache: bool, bad_images: str = "skip") -> None:
        self.name, self.class_names, self.num_classes = name, class_names, len(class_names)
        super().__init__(items, decoder, cache, bad_images)


# ----------------------------------------------------------------------------- torchvision datasets

def _torchvision(cls: type, root: Path, layout: str, **kwargs: Any) -> Any:
    """Open a torchvision dataset, turning its 'not found' into our error with the layout."""
    try:
        return cls(root=str(root), **kwargs)
    except RuntimeError as e:
        raise DatasetNotFoundError(f"{cls.__name__} not found under {root} ({e}); expected layout:\n{layout}") from e


def _present_files_only(cls: type) -> type:
    """A torchvision dataset class whose integrity checks ask that files exist, not their MD5.

    torchvision checks MD5 sums of the metadata files; subsets, re-packed copies and test
    fixtures fail that check although the loader reads them fine. torchvision's own
    ``check_integrity(path, md5=None)`` means "the file exists", so we blank the sums and
    keep every loader unchanged.
    """
    blank: dict[str, Any] = {}
    if hasattr(cls, "file_list"):  # CelebA: (file_id, md5, filename)
        blank["file_list"] = [(i, None, f) for i, _, f in cls.file_list]
    if hasattr(cls, "train_list"):  # CIFAR: [filename, md5]
        blank["train_list"] = [[f, None] for f, _ in cls.train_list]
        blank["test_list"] = [[f, None] for f, _ in cls.test_list]
        blank["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "_file_dict"):  # Flowers102: id -> (filename, md5)
        blank["_file_dict"] = {k: (f, None) for k, (f, _) in cls._file_dict.items()}
    return type(cls.__name__, (cls,), blank)


CELEBA_LAYOUT = """root/celeba/img_align_celeba/000001.jpg ...
root/celeba/list_eval_partition.txt, identity_CelebA.txt, list_attr_celeba.txt,
             list_bbox_celeba.txt, list_landmarks_align_celeba.txt
(torchvision.datasets.CelebA layout; from the CelebA website), or a flat folder root/*.jpg
of aligned faces"""
FLOWERS_LAYOUT = """root/flowers-102/jpg/image_00001.jpg ...
root/flowers-102/imagelabels.mat, setid.mat
(torchvision.datasets.Flowers102 layout; from the Oxford VGG Flowers-102 page)"""
CIFAR_LAYOUT = """root/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
(torchvision.datasets.CIFAR10 layout; the python version from the CIFAR-10 page)"""


def _celeba(cfg: Mapping[str, Any], root: Path, decoder: ImageDecoder) -> ImageDataset:
    from torchvision.datasets import CelebA  # deferred: torchvision takes ~1.3 s to import (it loads torch._dynamo)

    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset root {root} does not exist; expected layout:\n{CELEBA_LAYOUT}")
    if not (root / "celeba").is_dir():  # a plain folder of aligned images
        items, _ = imagefolder_items(root)
        return _folder_dataset(cfg, "celeba", items, [], decoder)
    split = {"train": "train", "test": "test", "val": "valid", "valid": "valid", "all": "all"}[cfg.get("split", "train")]
    ds = _torchvision(_present_files_only(CelebA), root, CELEBA_LAYOUT, split=split, target_type=[],
                      download=bool(cfg.get("download", False)))
    folder = Path(ds.root) / ds.base_folder / "img_align_celeba"
    items = [(folder / f, 0) for f in ds.filename]
    return _folder_dataset(cfg, "celeba", items, [], decoder)


def _flowers(cfg: Mapping[str, Any], root: Path, decoder: ImageDecoder) -> ImageDataset:
    from torchvision.datasets import Flowers102  # deferred: torchvision takes ~1.3 s to import (it loads torch._dynamo)

    split = cfg.get("split", "train")
    splits = ["train", "val", "test"] if split == "all" else [split]
    cls = _present_files_only(Flowers102)
    items = []
    for s in splits:
        ds = _torchvision(cls, root, FLOWERS_LAYOUT, split=s, download=bool(cfg.get("download", False)))
        items += list(zip(ds._image_files, ds._labels))
    names = [f"class {i}" for i in range(102)]
    return _folder_dataset(cfg, "flowers102", items, names, decoder)


def _cifar10(cfg: Mapping[str, Any], root: Path, decoder: ImageDecoder) -> ImageDataset:
    from torchvision.datasets import CIFAR10  # deferred: torchvision takes ~1.3 s to import (it loads torch._dynamo)

    split = cfg.get("split", "train")
    cls = _present_files_only(CIFAR10)
    items, classes = [], None
    for train in ([True, False] if split == "all" else [split == "train"]):
        ds = _torchvision(cls, root, CIFAR_LAYOUT, train=train, download=bool(cfg.get("download", False)))
        items += [(Image.fromarray(a), int(t)) for a, t in zip(ds.data, ds.targets)]
        classes = ds.classes
    return _folder_dataset(cfg, "cifar10", items, list(classes), decoder)


def _folder_dataset(cfg: Mapping[str, Any], name: str, items: Sequence[tuple[Any, int]], class_names: list[str],
                    decoder: ImageDecoder) -> "FolderDataset":
    """A FolderDataset with the config's caching and bad-image policy."""
    return FolderDataset(name, items, class_names, decoder, _cache(cfg, len(items), decoder),
                         cfg.get("bad_images", "skip"))


def _cache(cfg: Mapping[str, Any], n: int, decoder: ImageDecoder) -> bool:
    """Decode once into memory when asked, or (auto) when it fits in about 1 GiB."""
    cache = cfg.get("cache", "auto")
    if cache == "auto":
        return n * decoder.channels * decoder.resolution ** 2 * 4 <= 2 ** 30
    return bool(cache)


# ----------------------------------------------------------------------------- builder

BUILDERS: dict[str, Callable[[Mapping[str, Any], Path, ImageDecoder], ImageDataset]] = {
    "celeba": _celeba, "flowers102": _flowers, "cifar10": _cifar10,
}


def max_images_indices(n: int, max_images: int) -> Tensor:
    """Sorted indices of the fixed ``max_images`` subset of ``n`` images (seeded, independent of the run's seed)."""
    g = torch.Generator().manual_seed(MAX_IMAGES_SEED)
    return torch.randperm(n, generator=g)[:max_images].sort().values


def limit_images(ds: ImageDataset, max_images: int) -> ImageDataset:
    """Keep only the fixed subset of ``max_images`` images of ``ds`` (in place; limited-data experiments)."""
    if max_images > len(ds):
        raise ConfigError(f"dataset.max_images={max_images} exceeds the {len(ds)} images of the dataset "
                          f"{ds.name!r} (this split)")
    keep = max_images_indices(len(ds), max_images)
    ds.items = [ds.items[i] for i in keep.tolist()]
    if ds.images is not None:
        ds.images, ds.labels = ds.images[keep], ds.labels[keep]
    return ds


# The split that holds images a training run never sees, per dataset that has one (imagefolder and
# synthetic have none: their ``split`` is ignored). flowers102 takes val, the smaller held-out split.
HELDOUT_SPLITS = {"digits": "test", "stacked_digits": "test", "celeba": "test", "flowers102": "val", "cifar10": "test"}


def build_heldout_dataset(cfg: Mapping[str, Any], resolution: int) -> Optional[ImageDataset]:
    """The held-out split of the dataset a training config describes, or None where it has none.

    Only for a run on the train split; built without caching (a monitor reads a few images of it).
    """
    split = HELDOUT_SPLITS.get(cfg.get("name"))
    if split is None or str(cfg.get("split") or "train") != "train":
        return None
    return build_dataset({**dict(cfg), "split": split, "max_images": None, "cache": False}, resolution)


def build_dataset(cfg: Mapping[str, Any], resolution: int) -> ImageDataset:
    """Build the dataset a ``dataset`` config node describes, at ``resolution`` (limited to ``max_images``)."""
    cfg = dict(cfg)
    max_images = cfg.pop("max_images", None)
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)
                                   or max_images < 1):
        raise ConfigError(f"dataset.max_images must be a positive integer or null, got {max_images!r}")
    ds = _build_full(cfg, resolution)
    ds.split = str(cfg.get("split") or "train")  # which split it is, for whoever records it (eval)
    return ds if max_images is None else limit_images(ds, max_images)


def _build_full(cfg: dict[str, Any], resolution: int) -> ImageDataset:
    """The whole dataset (split) a config describes."""
    name = cfg.get("name")
    allowed = COMMON_KEYS | EXTRA_KEYS.get(name, set())
    unknown = set(cfg) - allowed
    if unknown:
        raise ConfigError(f"unknown dataset option(s) {sorted(unknown)}; options are {sorted(allowed)}")
    if resolution < 8 or resolution & (resolution - 1):
        raise ConfigError(f"resolution {resolution} is not a power of two >= 8")
    channels = int(cfg.get("channels", 3))
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels must be 1 or 3, got {channels}")
    if cfg.get("bad_images", "skip") not in ("skip", "fail"):
        raise ConfigError("dataset.bad_images must be skip or fail")
    split = cfg.get("split", "train")
    if split not in ("train", "test", "val", "all"):
        raise ConfigError(f"dataset.split must be train, test, val or all, got {split!r}")
    if name == "digits":
        if split == "val":
            raise ConfigError("digits has train, test and all splits")
        return DigitsDataset(resolution, channels, split)
    if name == "stacked_digits":
        if split == "val" or channels != 3:
            raise ConfigError("stacked_digits has train, test and all splits and 3 channels (one digit each)")
        return StackedDigitsDataset(resolution, int(cfg.get("size", 10000)), split)
    if name == "synthetic":
        return SyntheticDataset(resolution, channels, int(cfg.get("size", 256)), int(cfg.get("num_classes", 0)))
    if cfg.get("root") in (None, ""):
        raise DatasetNotFoundError(f"dataset {name!r} needs dataset.root=<folder>")
    root = Path(str(cfg["root"])).expanduser()
    decoder = ImageDecoder(resolution, channels, cfg.get("center_crop"))
    if name == "imagefolder":
        items, names = imagefolder_items(root)
        if not cfg.get("conditional", True):
            items, names = [(p, 0) for p, _ in items], []
        return _folder_dataset(cfg, "imagefolder", items, names, decoder)
    if name not in BUILDERS:
        raise ConfigError(f"unknown dataset {name!r}; known: digits, stacked_digits, synthetic, imagefolder, "
                          f"{', '.join(BUILDERS)}")
    return BUILDERS[name](cfg, root, decoder)
