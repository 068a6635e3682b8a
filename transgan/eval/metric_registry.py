"""The one metric registry: every metric is one function registered here by name.

``tools/eval.py``, the trainer's evaluator (:mod:`transgan.eval.training`) and the ablation
tool read this table: which names ``eval.metrics`` accepts, which result keys each metric
writes (to eval.json and metrics.jsonl), and which direction is better for each key (the
best checkpoint, the ablation's ranking). A metric function receives the features of the
evaluated images (:class:`MetricInputs`) and returns its keys; the numbers themselves are
torch-fidelity's functions on those features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric

from transgan.eval.extractors import FD_DIGITS

FD_DIGITS_KEY = "fd_digits"  # the trainer's name for FID in the digits judge's feature space


@dataclasses.dataclass
class MetricInputs:
    """What a metric function may read: features of the evaluated images, and the reference on demand."""

    generated: dict[str, torch.Tensor]        # feature layer -> [N, D] features of the evaluated images
    layer: Callable[[str], str]               # torch-fidelity metric name (fid, kid, isc, prc) -> feature layer
    reference_features: Callable[[], dict[str, torch.Tensor]]  # the reference's features (cached)
    reference_fid_statistics: Callable[[str], dict[str, np.ndarray]]  # layer -> {mu, sigma} (cached)
    options: dict[str, Any]                   # torch-fidelity keyword arguments (seed, KID subsets, ...)
    labels: Optional[torch.Tensor] = None     # class asked of the generator for each image (conditional)
    # split name -> features of that split of the evaluated dataset (cached): the memorization metric's
    # training images and held-out images, whatever split the reference is
    split_features: Optional[Callable[[str], dict[str, torch.Tensor]]] = None


@dataclasses.dataclass(frozen=True)
class Metric:
    """A registered metric: its function, the result keys it writes and which way each key is better."""

    name: str
    fn: Callable[[MetricInputs], dict[str, float]]
    keys: tuple[str, ...]
    lower_is_better: dict[str, Optional[bool]]  # None: not a quality score (a standard deviation)
    feature: str                                # the torch-fidelity metric whose feature layer it reads
    classes: int = 0                            # needs a generator conditioned on this many classes (0: any)
    classes_are: str = ""                       # what those classes must be, for the message


METRICS: dict[str, Metric] = {}


def register_metric(name: str, keys: dict[str, Optional[bool]], feature: Optional[str] = None,
                    classes: int = 0, classes_are: str = "",
                    ) -> Callable[[Callable[[MetricInputs], dict[str, float]]], Callable[[MetricInputs], dict[str, float]]]:
    """Register ``fn`` as metric ``name``; ``keys`` maps each result key to lower-is-better (None: neither).

    ``feature``: the torch-fidelity metric (fid, kid, isc, prc) whose default feature layer of the
    extractor the function reads; default ``name``. ``classes``: the metric reads the class asked of
    a generator conditioned on exactly this many classes (``classes_are`` says which).
    """
    def wrap(fn: Callable[[MetricInputs], dict[str, float]]) -> Callable[[MetricInputs], dict[str, float]]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered already")
        METRICS[name] = Metric(name, fn, tuple(keys), dict(keys), feature or name, classes, classes_are)
        return fn
    return wrap


def metric_names() -> list[str]:
    """Names ``eval.metrics`` accepts."""
    return list(METRICS)


def result_keys() -> list[str]:
    """Every key a metric can write, in registry order, then intra-class FID's."""
    return [k for m in METRICS.values() for k in m.keys] + ["intra_fid"]


def lower_is_better(key: str) -> Optional[bool]:
    """Whether a smaller value of result key ``key`` is better (None: not a quality score, or unknown)."""
    if key in ("intra_fid", FD_DIGITS_KEY):
        return True
    for m in METRICS.values():
        if key in m.lower_is_better:
            return m.lower_is_better[key]
    return None


def training_key(key: str, extractor: str) -> str:
    """The name a result key gets in a run's metrics.jsonl: FID in the digits judge's space is ``fd_digits``."""
    return FD_DIGITS_KEY if key == "fid" and extractor == FD_DIGITS else key


def training_keys() -> list[str]:
    """Every key the trainer's evaluation can record in metrics.jsonl."""
    return [FD_DIGITS_KEY, *result_keys()]


# ---------------------------------------------------------------------------- the metrics
@register_metric("fid", {"fid": True})
def fid(x: MetricInputs) -> dict[str, float]:
    """Fréchet distance between Gaussians fitted to the two feature sets."""
    layer = x.layer("fid")
    ours = fid_featuresdict_to_statistics(x.generated, layer)
    out = fid_statistics_to_metric(ours, x.reference_fid_statistics(layer), verbose=False)
    return {"fid": float(out[torch_fidelity.KEY_METRIC_FID])}


@register_metric("kid", {"kid_mean": True, "kid_std": None})
def kid(x: MetricInputs) -> dict[str, float]:
    """Kernel inception distance: unbiased MMD^2 with a cubic polynomial kernel over random subsets."""
    out = kid_featuresdict_to_metric(x.generated, x.reference_features(), x.layer("kid"), **x.options)
    return {"kid_mean": float(out[torch_fidelity.KEY_METRIC_KID_MEAN]),
            "kid_std": float(out[torch_fidelity.KEY_METRIC_KID_STD])}


@register_metric("isc", {"isc_mean": False, "isc_std": None})
def isc(x: MetricInputs) -> dict[str, float]:
    """Inception score of the evaluated images alone (no reference)."""
    out = isc_featuresdict_to_metric(x.generated, x.layer("isc"), **x.options)
    return {"isc_mean": float(out[torch_fidelity.KEY_METRIC_ISC_MEAN]),
            "isc_std": float(out[torch_fidelity.KEY_METRIC_ISC_STD])}


@register_metric("prc", {"precision": False, "recall": False, "f_score": False})
def prc(x: MetricInputs) -> dict[str, float]:
    """Improved precision and recall (k-nearest-neighbour manifolds of the two feature sets)."""
    out = prc_featuresdict_to_metric(x.generated, x.reference_features(), x.layer("prc"), **x.options)
    return {"precision": float(out[torch_fidelity.KEY_METRIC_PRECISION]),
            "recall": float(out[torch_fidelity.KEY_METRIC_RECALL]),
            "f_score": float(out[torch_fidelity.KEY_METRIC_F_SCORE])}


# The judge's class logits are the layer torch-fidelity's IS reads from it.
@register_metric("class_acc", {"digits_class_acc": False}, feature="isc", classes=10, classes_are="the 10 digits")
def class_acc(x: MetricInputs) -> dict[str, float]:
    """Fraction of generated images the digits judge assigns to the class the generator was asked for."""
    logits = x.generated[x.layer("isc")]
    return {"digits_class_acc": float((logits.argmax(dim=1).cpu() == x.labels.cpu()).float().mean())}


# Stacked digits' mode coverage (Metz et al. 2017; VEEGAN; PacGAN): each channel judged alone.
MODES = 1000


@register_metric("modes", {"modes_covered": False, "modes_kl": True})
def modes(x: MetricInputs) -> dict[str, float]:
    """Modes covered out of 1,000 and KL(generated mode histogram || uniform) of stacked-digit images."""
    logits = x.generated[x.layer("modes")]
    if logits.shape[1] != 30:
        raise ValueError(f"metric modes needs 3-channel images (one digit per channel), got {logits.shape[1] // 10}")
    digits = logits.view(len(logits), 3, 10).argmax(dim=2)
    mode = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    p = torch.bincount(mode, minlength=MODES).double() / len(mode)
    seen = p > 0
    kl = (p[seen] * (p[seen] * MODES).log()).sum()
    return {"modes_covered": float(seen.sum()), "modes_kl": float(kl)}


# Data copying read from nearest neighbours in the judge's feature space (the spirit of Meehan et al.
# 2020's test): generated images should lie as far from their nearest training image as fresh real
# images do. Held-out real images set the scale, so the figure needs no threshold of its own.
COPY_QUANTILE = 0.05


@register_metric("memorization", {"nn_ratio": None, "copy_fraction": None}, feature="fid")
def memorization(x: MetricInputs) -> dict[str, float]:
    """Nearest-training-image distances of generated against held-out real images: median ratio, copy fraction.

    ``nn_ratio``: median distance of a generated image to its nearest training image over the same median
    for held-out images (1: as far as fresh data; 0: copies). ``copy_fraction``: share of generated
    images nearer to the training set than all but ``COPY_QUANTILE`` of held-out images are (held-out
    data scores ~0.05 by construction, a sampler of training images 1).
    """
    if x.split_features is None:
        raise ValueError("metric memorization needs the dataset's train and test splits")
    layer = x.layer("fid")
    train = x.split_features("train")[layer].double()
    held_out = nearest_distance(x.split_features("test")[layer].double(), train)
    ours = nearest_distance(x.generated[layer].double(), train)
    threshold = torch.quantile(held_out, COPY_QUANTILE)
    # quantile(0.5), not median(): the mean of the two middle values for an even count
    return {"nn_ratio": float(torch.quantile(ours, 0.5) / torch.quantile(held_out, 0.5)),
            "copy_fraction": float((ours < threshold).double().mean())}


def nearest_distance(points: torch.Tensor, data: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance from each row of ``points`` to its nearest row of ``data``."""
    return torch.cat([torch.cdist(p, data).min(dim=1).values for p in points.split(chunk)])
