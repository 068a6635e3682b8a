"""The ablation's small-sample statistics against their definitions: coverage, enumeration, formulas."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from transgan.ablation.stats import (detectable_difference, hedges_g, holm, permutation_p, pooled_sd, t_interval,
                                     trend_over_last_points, welch_interval)


@pytest.mark.parametrize("n", [3, 5])
def test_the_cell_interval_covers_the_true_mean_95_percent_of_the_time(n):
    rng = np.random.default_rng(n)
    draws = rng.normal(1.5, 0.3, size=(2000, n))
    covered = sum(low <= 1.5 <= high for _, low, high in (t_interval(row) for row in draws))
    assert 0.93 <= covered / 2000 <= 0.97


def test_the_percentile_bootstrap_it_replaces_is_the_min_max_at_n3():
    """Why not a bootstrap: at n = 3 its interval is the sample's range and covers ~75%."""
    rng = np.random.default_rng(0)
    draws = rng.normal(0.0, 1.0, size=(2000, 3))
    covered = np.mean([(row.min() <= 0 <= row.max()) for row in draws])
    assert covered < 0.8  # 1 - 2 / 2^3 = 0.75 in expectation


def test_permutation_p_equals_brute_force_enumeration():
    a, b = [1.0, 1.4, 0.9], [2.1, 1.8, 2.5, 1.7]
    pooled = a + b
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    extreme = total = 0
    for ia in itertools.combinations(range(7), 3):
        ga = [pooled[i] for i in ia]
        gb = [pooled[i] for i in range(7) if i not in ia]
        extreme += abs(statistics.fmean(ga) - statistics.fmean(gb)) >= observed - 1e-12
        total += 1
    assert permutation_p(a, b) == extreme / total == 1 / 35  # only the observed split is as extreme
    # 3 vs 3 can never go below 2 / 20 = 0.10 two-sided
    assert permutation_p([0.0, 0.1, 0.2], [5.0, 6.0, 7.0]) == pytest.approx(0.1)


def test_welch_interval_and_p_match_scipy():
    a, b = [1.0, 1.4, 0.9, 1.2], [2.1, 1.8, 2.5]
    w = welch_interval(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    assert w["p_welch"] == pytest.approx(res.pvalue, rel=1e-10)
    ci = res.confidence_interval(0.95)
    assert (w["low"], w["high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_hedges_g_is_cohens_d_with_the_small_sample_correction():
    a, b = [1.0, 1.4, 0.9], [2.1, 1.8, 2.5]
    sp = math.sqrt((2 * statistics.variance(a) + 2 * statistics.variance(b)) / 4)
    d = (statistics.fmean(a) - statistics.fmean(b)) / sp
    assert hedges_g(a, b) == pytest.approx(d * (1 - 3 / (4 * 4 - 1)))


def test_holm_adjustment():
    # sorted p: 0.01, 0.02, 0.04 -> 3 * 0.01, 2 * 0.02, 1 * 0.04, monotone
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, float("nan")])[1] != holm([0.5, float("nan")])[1]  # nan stays nan


def test_detectable_difference_has_the_stated_power():
    delta = detectable_difference(sd=1.0, n_a=5, n_b=5)
    df, crit = 8, stats.t.ppf(0.975, 8)
    nc = delta / math.sqrt(2 / 5)
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    assert power == pytest.approx(0.8, abs=1e-6) and 1.8 < delta < 2.2  # about 2 SD at n = 5
    assert detectable_difference(1.0, 3, 3) > delta  # fewer seeds, a larger difference needed
    assert pooled_sd([[1.0, 2.0], [3.0, 5.0]]) == pytest.approx(math.sqrt((0.5 + 2.0) / 2))


def test_trend_reads_noise_as_flat_and_a_slope_as_a_slope():
    images = [16000, 24000, 32000, 40000, 48000]
    flat = trend_over_last_points(images, [1.00, 1.04, 0.97, 1.02, 0.99], noise_sd=0.05)
    assert flat["beyond_noise"] == 0.0
    falling = trend_over_last_points(images, [2.0, 1.8, 1.6, 1.4, 1.2], noise_sd=0.05)
    assert falling["beyond_noise"] == 1.0 and falling["change"] == pytest.approx(-0.2 / 8000 * 48000 / 3, rel=1e-6)
