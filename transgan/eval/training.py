"""The evaluation a training run does every ``train.eval_every`` steps, built from the run's config.

The trainer does not import this module: the composition root (``tools/train.py``) builds a
:class:`TrainingEvaluator` from the run's ``eval`` section and hands it to the Trainer, which
calls it with G_ema on every process. The protocol is a configs/eval/ preset (chosen per
dataset and resolution, or named), with the section's keys on top; the numbers are those of
:func:`transgan.eval.metrics.evaluate`, so ``tools/eval.py`` with the same protocol on the
checkpoint of that step gives the same values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from transgan.eval.extractors import FD_DIGITS, MissingWeightsError
from transgan.eval.metric_registry import METRICS, lower_is_better, training_key
from transgan.eval.metrics import EvalConfig, eval_config, evaluate, load_preset, preset_names, protocol_weights
from transgan.errors import ConfigError

TRAINING_MAX_SAMPLES = 10_000  # a preset's 50k would cost more than the steps between evaluations
# Protocol keys the run's eval section may set (None there: the preset's value).
_PASSED = ("extractor", "batch_size", "inception_weights", "vgg16_weights", "extractor_weights", "download_weights",
           "allow_unverified_weights", "cache_dir")


# The metric the digits judge adds by default on its own datasets: (metric, needs class-conditional data).
JUDGE_METRICS = {"digits": ("class_acc", True), "stacked_digits": ("modes", False)}


def auto_preset(dataset: str, resolution: int) -> Optional[str]:
    """The configs/eval/ preset for a dataset at a resolution (``celeba64``, ``flowers102_128``, ``digits``), if any."""
    known = preset_names()
    for name in (f"{dataset}{resolution}", f"{dataset}_{resolution}", dataset):
        if name in known:
            return name
    return None


@dataclasses.dataclass
class TrainingEvaluator:
    """``evaluator(G_ema, step) -> {metric key: value}`` under one protocol; collective over all processes."""

    protocol: EvalConfig
    dataset: dict[str, Any]          # the run's dataset config: the reference's base
    preset: Optional[str]
    best_metric: Optional[str]       # the key that picks checkpoints/best.pt (None: none kept)
    lower_is_better: bool = True

    def __call__(self, G: nn.Module, step: int) -> dict[str, float]:
        """The protocol's metrics of ``G`` (every process calls it; every process gets the numbers)."""
        out = evaluate(G, self.dataset, self.protocol)
        return {training_key(k, self.protocol.extractor): float(v) for k, v in out.items()
                if isinstance(v, float) and not k.endswith("_per_class")}

    def describe(self) -> str:
        """One line for the log: protocol, samples, extractor, best metric."""
        p = self.protocol
        return (f"evaluation: {', '.join(p.metrics)} of {p.num_samples} G_ema samples, extractor {p.extractor}, "
                f"preset {self.preset or '(plain defaults)'}; best checkpoint by {self.best_metric or 'none'}")


def training_evaluator(cfg: DictConfig) -> Optional[TrainingEvaluator]:
    """The run's evaluator from its ``eval`` section (None when ``eval.metrics=[]``); fails now, not at step 500.

    A bad preset, metric or resolution and a missing or unverified weights file are refused
    here, before the run directory exists.
    """
    e = cfg.eval
    if e.metrics is not None and len(e.metrics) == 0:
        return None
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    resolution = int(cfg.model.resolution)
    preset = auto_preset(str(dataset.get("name")), resolution) if e.preset == "auto" else e.preset
    base = OmegaConf.to_container(load_preset(preset)) if preset is not None else {}
    if base.get("resolution") not in (None, resolution):
        raise ConfigError(f"eval.preset={preset} is a {base['resolution']}x{base['resolution']} protocol, but the "
                          f"model makes {resolution}x{resolution} images")
    extractor = e.extractor or base.get("extractor") or EvalConfig.extractor
    metrics = list(e.metrics) if e.metrics is not None else ["fid", "kid"]
    judged = JUDGE_METRICS.get(str(dataset.get("name")))
    if e.metrics is None and judged and extractor == FD_DIGITS and (dataset.get("conditional") or not judged[1]):
        metrics.append(judged[0])
    num_samples = e.num_samples or min(int(base.get("num_samples", EvalConfig.num_samples)), TRAINING_MAX_SAMPLES)
    given = {k: e[k] for k in _PASSED if e[k] is not None and not (isinstance(e[k], bool) and not e[k])}
    protocol = eval_config(base, metrics=metrics, num_samples=num_samples, seed=int(cfg.seed), intra_fid=False,
                           **given)
    try:
        protocol_weights(protocol)
    except MissingWeightsError as err:
        raise MissingWeightsError(f"{err}\n(To train without evaluation: eval.metrics=[].)") from None

    best = e.best
    if best == "auto":
        best = training_key(METRICS[protocol.metrics[0]].keys[0], protocol.extractor)
    direction = True
    if best is not None:
        recorded = {training_key(k, protocol.extractor) for m in protocol.metrics for k in METRICS[m].keys}
        if best not in recorded:
            raise ConfigError(f"eval.best={best} is not recorded by this protocol; it records {sorted(recorded)}")
        direction = lower_is_better(best)
        if direction is None:
            raise ConfigError(f"eval.best={best} is not a quality score (neither higher nor lower is better)")
    return TrainingEvaluator(protocol, dataset, preset, best, bool(direction))

