"""The nearest-neighbour memorization figure: its formula written out, and what copies and fresh data score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transgan.data.datasets import build_dataset
from transgan.eval.metric_registry import METRICS, MetricInputs
from transgan.eval.metrics import evaluate

RES = 16
DIGITS = {"name": "digits", "channels": 1}


def test_ratio_and_copy_fraction_equal_the_formula_written_out():
    g = torch.Generator().manual_seed(0)
    train, test, gen = (torch.randn(n, 8, generator=g, dtype=torch.float64) for n in (300, 120, 200))
    gen[:50] = train[:50] + 1e-3  # a quarter are near-copies
    x = MetricInputs(generated={"f": gen}, layer=lambda m: "f", reference_features=lambda: {},
                     reference_fid_statistics=lambda layer: {}, options={},
                     split_features=lambda split: {"f": {"train": train, "test": test}[split]})
    out = METRICS["memorization"].fn(x)

    def nearest(points: np.ndarray) -> np.ndarray:  # brute force: every pair
        return np.sqrt(((points[:, None, :] - train.numpy()[None, :, :]) ** 2).sum(-1)).min(axis=1)
    d_gen, d_test = nearest(gen.numpy()), nearest(test.numpy())
    assert out["nn_ratio"] == pytest.approx(np.median(d_gen) / np.median(d_test), rel=1e-9)
    assert out["copy_fraction"] == pytest.approx(np.mean(d_gen < np.quantile(d_test, 0.05)), abs=1e-12)
    assert out["copy_fraction"] >= 0.25  # the copies are all caught


@pytest.mark.parametrize("split, ratio, copies", [("train", 0.0, 1.0), ("test", 1.0, 0.05)])
def test_the_training_set_scores_as_copies_and_held_out_digits_as_fresh_data(split, ratio, copies, tmp_path):
    # The judge's features of the training images themselves: distance 0 to the training set.
    images = build_dataset({**DIGITS, "split": split}, RES)
    out = evaluate(images, DIGITS, resolution=RES, extractor="fd-digits", metrics=["memorization"],
                   cache_dir=str(tmp_path))
    assert out["nn_ratio"] == pytest.approx(ratio, abs=1e-4)
    assert out["copy_fraction"] == pytest.approx(copies, abs=1 / len(images))
