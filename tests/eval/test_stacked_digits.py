"""Stacked digits and its mode count: the dataset's modes, the metric's formula, a generator of exactly k modes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from transgan.data.datasets import DigitsDataset, build_dataset
from transgan.errors import ConfigError
from transgan.eval.digits_judge import load_digits_judge
from transgan.eval.metric_registry import METRICS, MetricInputs
from transgan.eval.metrics import evaluate
from transgan.eval.training import training_evaluator
from transgan.train.config import compose_config

RES = 16


def test_each_channel_is_a_digit_of_the_split_and_the_label_is_the_mode():
    test = DigitsDataset(RES, channels=1, split="test")
    ds = build_dataset({"name": "stacked_digits", "channels": 3, "split": "test", "size": 300}, RES)
    assert ds.images.shape == (300, 3, RES, RES) and ds.num_classes == 1000
    flat = test.images.flatten(1)
    for image, mode in zip(ds.images[:50], ds.labels[:50]):
        for channel, digit in zip(image, (mode // 100, mode // 10 % 10, mode % 10)):
            match = (flat == channel.flatten()).all(dim=1).nonzero().flatten()  # a held-out digit, as it is
            assert len(match) >= 1 and int(test.labels[match[0]]) == int(digit)
    with pytest.raises(ConfigError, match="3 channels"):
        build_dataset({"name": "stacked_digits", "channels": 1}, RES)


def _inputs(logits: torch.Tensor) -> MetricInputs:
    return MetricInputs(generated={"channel_logits": logits}, layer=lambda m: "channel_logits",
                        reference_features=lambda: {}, reference_fid_statistics=lambda layer: {}, options={})


def test_mode_count_and_kl_to_uniform_written_out():
    # Three samples of mode 123 and one of mode 456: q = (3/4, 1/4) over 1,000 uniform modes.
    def logits_of(mode: int) -> torch.Tensor:
        return torch.cat([nn.functional.one_hot(torch.tensor(int(d)), 10).float() for d in f"{mode:03d}"])
    logits = torch.stack([logits_of(123)] * 3 + [logits_of(456)])
    out = METRICS["modes"].fn(_inputs(logits))
    assert out["modes_covered"] == 2
    assert out["modes_kl"] == pytest.approx(0.75 * math.log(0.75 * 1000) + 0.25 * math.log(0.25 * 1000), rel=1e-12)


class KModes(nn.Module):
    """A generator that draws exactly the modes it is given, chosen uniformly by its latent."""

    def __init__(self, modes: list[int], canon: torch.Tensor) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.img_resolution, self.img_channels = 8, 0, RES, 3
        stacks = [torch.stack([canon[int(d)] for d in f"{m:03d}"]) for m in modes]
        self.stacks = nn.Parameter(torch.stack(stacks), requires_grad=False)  # a parameter: it tells the device

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        pick = (torch.special.ndtr(z[:, 0]) * len(self.stacks)).long().clamp(max=len(self.stacks) - 1)
        return self.stacks[pick]


def test_a_generator_of_exactly_k_modes_covers_k_with_kl_log_1000_over_k():
    # One held-out image per digit that the judge reads surely: the stacks' channels.
    test = DigitsDataset(RES, channels=1, split="test")
    probs = load_digits_judge()(test.images).softmax(dim=1)
    canon = torch.stack([test.images[(probs[:, d] * (test.labels == d)).argmax(), 0] for d in range(10)])
    k, n = 10, 2000
    G = KModes([7, 123, 250, 318, 404, 561, 699, 777, 802, 990][:k], canon)
    cfg = compose_config(["dataset=stacked_digits", "eval.preset=stacked_digits", "eval.metrics=[modes]",
                          f"eval.num_samples={n}", "model.resolution=16", "train.device=cpu"])[0]
    out = evaluate(G, {"name": "stacked_digits", "channels": 3, "size": 200}, training_evaluator(cfg).protocol)
    assert out["modes_covered"] == k
    # Near-uniform over k modes: log(1000 / k) plus the multinomial bias, about (k - 1) / (2 n) = 0.002.
    assert out["modes_kl"] == pytest.approx(math.log(1000 / k), abs=0.02)
    assert out["protocol"]["num_samples"] == n


def test_training_on_stacked_digits_records_modes_by_default():
    cfg = compose_config(["dataset=stacked_digits", "model.resolution=16", "train.device=cpu"])[0]
    evaluator = training_evaluator(cfg)
    assert evaluator.preset == "stacked_digits" and evaluator.protocol.metrics == ["fid", "kid", "modes"]
    assert evaluator.protocol.num_samples == 10000 and evaluator.protocol.split == "test"
