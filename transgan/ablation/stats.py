"""Small-sample statistics for an ablation's few seeds per cell: what they can and cannot say.

With 3-5 seeds, intervals from resampling the seeds' values are at most their min-max (covering the
true mean about 75% of the time at n = 3), so cells get Student-t intervals; two cells are
compared by Welch's difference interval, an exact permutation test (every relabelling of the
seeds enumerated), Hedges' g (Cohen's d with the small-sample correction) and Holm's adjustment
over the contrasts declared before the runs. :func:`detectable_difference` says how large a
difference the seeds could have found at 80% power.
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Optional, Sequence

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
ALPHA = 0.05


def finite(values: Sequence[Optional[float]]) -> list[float]:
    """The finite values of a sequence, as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean, df = n - 1; nan bounds below two values."""
    xs = finite(values)
    if not xs:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """mean(a) - mean(b), its Welch interval (Welch-Satterthwaite df) and Welch's t-test p."""
    a, b = finite(a), finite(b)
    nan = {"diff": math.nan, "low": math.nan, "high": math.nan, "df": math.nan, "p_welch": math.nan}
    if len(a) < 2 or len(b) < 2:
        return nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {**nan, "diff": diff}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(diff) / se, df)
    return {"diff": diff, "low": diff - half, "high": diff + half, "df": df, "p_welch": float(p)}


def permutation_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact two-sided permutation p of the difference of means: the fraction of all C(n_a + n_b, n_a)
    assignments of the pooled values to the two groups whose |difference| is at least the observed one."""
    a, b = finite(a), finite(b)
    if not a or not b:
        return math.nan
    pooled = np.array(a + b)
    total, na = pooled.sum(), len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    hits = count = 0
    for idx in itertools.combinations(range(len(pooled)), na):
        sa = pooled[list(idx)].sum()
        diff = abs(sa / na - (total - sa) / len(b))
        hits += diff >= observed - 1e-12 * max(1.0, observed)
        count += 1
    return hits / count


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Standardized mean difference with the pooled SD, corrected for small samples: d (1 - 3 / (4 df - 1))."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    df = len(a) + len(b) - 2
    pooled = math.sqrt(((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)) / df)
    if pooled == 0:
        return math.nan
    return (statistics.fmean(a) - statistics.fmean(b)) / pooled * (1 - 3 / (4 * df - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error) of p-values in their given order; nan stays nan."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    m, out, running = len(idx), [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def detectable_difference(sd: float, n_a: int, n_b: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true difference a two-sided two-sample t-test (equal SD ``sd``) detects with ``power``
    at level ``alpha``: solved with the noncentral t distribution."""
    if n_a < 2 or n_b < 2 or not math.isfinite(sd) or sd <= 0:
        return math.nan
    df = n_a + n_b - 2
    crit = stats.t.ppf(1 - alpha / 2, df)
    scale = sd * math.sqrt(1 / n_a + 1 / n_b)

    def shortfall(delta: float) -> float:
        nc = delta / scale
        # the far tail (rejecting the wrong way) vanishes for large nc, where scipy may return nan for it
        far = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc)))
        return float(stats.nct.sf(crit, df, nc)) + far - power

    return float(optimize.brentq(shortfall, 1e-9 * scale, 20 * scale))  # noncentrality 20: power 1 at any df


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """The SD pooled over groups of seeds (each group's variance weighted by its df)."""
    num = den = 0.0
    for g in groups:
        xs = finite(g)
        if len(xs) > 1:
            num += (len(xs) - 1) * statistics.variance(xs)
            den += len(xs) - 1
    return math.sqrt(num / den) if den else math.nan


def trend_over_last_points(images: Sequence[float], values: Sequence[float], noise_sd: float,
                           points: int = 4) -> dict[str, float]:
    """Is a curve still moving? A least-squares line over its last ``points`` evaluations.

    Returns the fitted change over the last third of the images (negative = falling), its
    standard error, and ``beyond_noise`` (1.0 or 0.0): the fitted change is beyond two standard
    errors and beyond twice the evaluation noise ``noise_sd`` of one point (a flat curve read
    through that noise passes neither). Fewer than three points give nan.
    """
    pts = [(float(i), float(v)) for i, v in zip(images, values) if math.isfinite(float(v))][-points:]
    if len(pts) < 3:
        return {"change": math.nan, "se": math.nan, "beyond_noise": math.nan}
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    fit = stats.linregress(x, y)
    span = max(images) / 3
    change, se = fit.slope * span, fit.stderr * span
    beyond = abs(change) > 2 * se and abs(change) > 2 * (noise_sd if math.isfinite(noise_sd) else 0.0)
    return {"change": float(change), "se": float(se), "beyond_noise": float(beyond)}
