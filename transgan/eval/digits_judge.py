"""The digits judge: a small CNN classifier of scikit-learn's handwritten digits, shipped with the package.

It judges class-conditional generators trained on ``dataset=digits`` (``digits_class_acc``: the
fraction of samples classified as the class they were asked for) and serves as the feature
extractor of FD-digits (``transgan/eval/extractors.py``).

Input: images [B, 1 or 3, H, W] of any size in the generator's range [-1, 1] (background -1, i.e.
scikit-learn value 0; ink +1, value 16). RGB is averaged to gray; every input is resized to
``JUDGE_RESOLUTION`` x ``JUDGE_RESOLUTION`` (bilinear, antialiased), so an 8x8 digit and the same
digit upsampled to any model resolution are judged alike.

The weights (``transgan/assets/digits_judge.safetensors``) come from ``tools/train_digits_judge.py``,
trained on the train part of :func:`digits_split`; its held-out accuracy is in ``digits_judge.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from transgan.data.datasets import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE, digits_split_indices

ASSETS = Path(__file__).resolve().parents[1] / "assets"
JUDGE_WEIGHTS = ASSETS / "digits_judge.safetensors"
JUDGE_RESOLUTION = 16
NUM_CLASSES = 10
SPLIT_SEED, SPLIT_TEST_SIZE = DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE  # the dataset's own split


# ----------------------------------------------------------------------------- data split

def digits_split(split: str = "train") -> tuple[Tensor, Tensor]:
    """The 8x8 digits of one split as (images [N, 1, 8, 8] float in [-1, 1], labels [N] int64).

    The split is the digits dataset's own (``transgan.data.digits_split_indices``), so the judge never
    saw the images of ``dataset=digits dataset.split=test``.
    """
    from sklearn.datasets import load_digits  # deferred: ~1 s to import, only when the judge is rebuilt

    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    digits = load_digits()
    index = digits_split_indices()[0 if split == "train" else 1]
    images = torch.from_numpy(digits.images[index]).float()[:, None] / 8.0 - 1.0  # values 0..16 -> [-1, 1]
    return images, torch.from_numpy(digits.target[index]).long()


# ----------------------------------------------------------------------------- the classifier

def to_judge_input(x: Tensor) -> Tensor:
    """Images [B, 1 or 3, H, W] in [-1, 1] -> gray [B, 1, R, R] at the judge's resolution R."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"the digits judge takes images [B, 1 or 3, H, W], got shape {tuple(x.shape)}")
    x = x.float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (JUDGE_RESOLUTION, JUDGE_RESOLUTION):
        # Antialiasing makes downsampling an area average, so any upsampling of 8x8 maps back alike.
        x = F.interpolate(x, size=(JUDGE_RESOLUTION, JUDGE_RESOLUTION), mode="bilinear", align_corners=False,
                          antialias=True)
    return x


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class DigitsJudge(nn.Module):
    """A small CNN on 16x16 gray digits: two conv-conv-maxpool stages, a conv, global average pooling.

    ``features(x)`` is the pooled 128-d vector (penultimate layer), ``head`` the linear classifier
    on it, ``forward(x) = head(features(x))`` the class logits [B, 10].
    """

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(1, 16), _conv(16, 16), nn.MaxPool2d(2),      # 16 -> 8
            _conv(16, 32), _conv(32, 32), nn.MaxPool2d(2),     # 8 -> 4
            _conv(32, self.feature_dim),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features [B, 128] of images [B, 1 or 3, H, W] in [-1, 1]."""
        return self.body(to_judge_input(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, 10] of images [B, 1 or 3, H, W] in [-1, 1]."""
        return self.head(self.dropout(self.features(x)))


def load_digits_judge(device: torch.device | str = "cpu", path: Optional[Path | str] = None) -> DigitsJudge:
    """The shipped judge (or the one at ``path``), in eval mode with gradients off."""
    path = Path(path) if path is not None else JUDGE_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"digits judge weights not found: {path}. They ship with transgan; "
                                f"recreate them with `python tools/train_digits_judge.py --out {path}`.")
    judge = DigitsJudge()
    judge.load_state_dict(load_file(str(path)))
    return judge.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- training (tools/train_digits_judge.py)

AUG_RESOLUTIONS = (8, 12, 16, 24, 32, 48, 64)
AUG_MODES = ("nearest", "bilinear", "bicubic")


def augment_digits(x: Tensor, rng: torch.Generator) -> Tensor:
    """Digits [B, 1, 8, 8] in [-1, 1] -> the same digits as a generator might draw them.

    One random resolution and upsampling mode per batch (how a dataset resizes the 8x8 digits),
    then per image a small random affine map (shift up to about 1 pixel of the 8x8 grid, scale
    0.85..1.15, rotation up to 12 degrees) and, for half the images, faint Gaussian noise.
    """
    B = x.shape[0]
    res = AUG_RESOLUTIONS[int(torch.randint(len(AUG_RESOLUTIONS), (), generator=rng))]
    mode = AUG_MODES[int(torch.randint(len(AUG_MODES), (), generator=rng))]
    if res != x.shape[-1]:
        x = F.interpolate(x, size=(res, res), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(B, generator=rng)

    angle, scale = uniform(-12, 12).deg2rad(), uniform(0.85, 1.15)
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack([torch.stack([cos, -sin, uniform(-0.25, 0.25)], 1),
                         torch.stack([sin, cos, uniform(-0.25, 0.25)], 1)], 1)
    ink = (x + 1) / 2  # resample in ink space so the zero padding is background
    grid = F.affine_grid(theta, list(ink.shape), align_corners=False)
    ink = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    noisy = (torch.rand(B, 1, 1, 1, generator=rng) < 0.5).float()
    ink = ink + noisy * uniform(0, 0.08).view(B, 1, 1, 1) * torch.randn(ink.shape, generator=rng)
    return (ink * 2 - 1).clamp(-1, 1)


def train_digits_judge(seed: int = 0, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3,
                       max_steps: Optional[int] = None) -> DigitsJudge:
    """Train a judge on the train split (CPU, deterministic for a given seed); returns it in eval mode."""
    torch.manual_seed(seed)  # parameter initialization
    rng = torch.Generator().manual_seed(seed)  # data order and augmentation
    images, labels = digits_split("train")
    judge = DigitsJudge()
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    steps_per_epoch = -(-len(images) // batch_size)
    total = epochs * steps_per_epoch if max_steps is None else max_steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    judge.train()
    step = 0
    while step < total:
        for index in torch.randperm(len(images), generator=rng).split(batch_size):
            if step == total:
                break
            loss = F.cross_entropy(judge(augment_digits(images[index], rng)), labels[index], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return judge.eval().requires_grad_(False)


@torch.no_grad()
def judge_accuracy(judge: nn.Module, images: Tensor, labels: Tensor, resolution: Optional[int] = None,
                   batch_size: int = 500) -> float:
    """Accuracy of the judge on images [N, 1, 8, 8], first upsampled to ``resolution`` (bilinear)."""
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        if resolution is not None and resolution != x.shape[-1]:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        correct += (judge(x).argmax(dim=1) == y).sum().item()
    return correct / len(labels)


# ----------------------------------------------------------------------------- class accuracy of a generator

@torch.no_grad()
def digits_class_accuracy(G: nn.Module, judge: nn.Module, n_per_class: int = 100, batch_size: int = 250,
                          seed: int = 0, device: Optional[torch.device | str] = None) -> float:
    """Fraction of ``n_per_class`` samples per digit that the judge assigns to the class G was asked for.

    The latents come from a private generator seeded with ``seed`` (the global RNG is untouched), so
    the same G always gets the same score. G runs in eval mode (its mode is restored afterwards).
    """
    if getattr(G, "num_classes", 0) != NUM_CLASSES:
        raise ValueError(f"digits_class_accuracy needs a generator conditioned on the {NUM_CLASSES} digits, "
                         f"got num_classes={getattr(G, 'num_classes', None)}")
    if n_per_class < 1 or batch_size < 1:
        raise ValueError(f"n_per_class and batch_size must be >= 1, got {n_per_class}, {batch_size}")
    if device is None:
        device = next(G.parameters()).device if any(True for _ in G.parameters()) else torch.device("cpu")
    rng = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)
    z = torch.randn(len(labels), G.z_dim, generator=rng)
    was_training = G.training
    G.eval()
    try:
        correct = 0
        for zb, cb in zip(z.split(batch_size), labels.split(batch_size)):
            zb, cb = zb.to(device), cb.to(device)
            correct += (judge(G(zb, cb)).argmax(dim=1) == cb).sum().item()
    finally:
        G.train(was_training)
    return correct / len(labels)
