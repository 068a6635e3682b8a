"""What an ablation writes: ablation.csv (a row per cell and seed), curves.csv, ablation.md, PNG plots."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy.stats import bootstrap, ttest_ind

from transgan.eval.metric_registry import lower_is_better

# The issue's columns first, in its order; then what else a reader needs to check a row.
COLUMNS = ["generator", "discriminator", "seed", "budget_kind", "budget", "metric", "metric_value", "class_acc",
           "params_g", "params_d", "flops_per_image", "images_per_s", "peak_mem_bytes", "wall_s",
           "cell", "steps", "images_seen", "train_s", "flops_g", "flops_d", "attention_flops_per_image",
           "peak_mem_kind", "run_dir"]
CURVE_COLUMNS = ["cell", "seed", "step", "images_seen", "train_s", "time_s", "metric_value", "class_acc"]


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """One line per row, the given columns in order; None is an empty field."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    tmp.replace(path)
    return path


def mean_std(values: Sequence[Optional[float]]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def _pm(values: Sequence[Optional[float]], fmt: str, scale: float = 1.0) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    if n == 1:
        return format(m / scale, fmt)
    return f"{format(m / scale, fmt)} ± {format(s / scale, fmt)}"


def _grouped(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["cell"]].append(r)
    return groups


def markdown_table(rows: Sequence[dict[str, Any]], order: Sequence[str], header: str = "") -> str:
    """A Markdown table of the cells, mean ± sample std over seeds; cells without results are listed as such."""
    groups = _grouped(rows)
    metric = rows[0]["metric"] if rows else "metric"
    better = " (lower is better)" if lower_is_better(metric) else ""
    mem_kind = {r.get("peak_mem_kind") for r in rows} - {None}
    lines = [header.rstrip(), ""] if header else []
    lines += [f"| cell | G | D | seeds | {metric}{better} | class acc | params G | params D | GFLOPs/img (G+D fwd) "
              f"| images/s | peak mem (MiB) | wall s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in order:
        rs = groups.get(cell, [])
        if not rs:
            lines.append(f"| {cell} | | | 0 | not run | | | | | | | |")
            continue
        r0 = rs[0]
        lines.append(
            f"| {cell} | {r0['generator']} | {r0['discriminator']} | {len(rs)} "
            f"| {_pm([r['metric_value'] for r in rs], '.3f')} | {_pm([r['class_acc'] for r in rs], '.3f')} "
            f"| {r0['params_g']:,} | {r0['params_d']:,} | {r0['flops_per_image'] / 1e9:.3f} "
            f"| {_pm([r['images_per_s'] for r in rs], '.1f')} | {_pm([r['peak_mem_bytes'] for r in rs], '.0f', 2 ** 20)} "
            f"| {_pm([r['wall_s'] for r in rs], '.0f')} |")
    if mem_kind:
        lines += ["", "peak mem: " + ", ".join(sorted(mem_kind)) + " (see docs/ablation.md)"]
    return "\n".join(lines) + "\n"


def mean_curves(curves: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per cell, the seed-mean (and sample std: ``metric_std``) of each evaluation step every seed of the cell reached."""
    by_cell: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[str, set] = defaultdict(set)
    for p in curves:
        by_cell[p["cell"]][int(p["step"])].append(p)
        seeds[p["cell"]].add(p["seed"])
    out = {}
    for cell, steps in by_cell.items():
        points = []
        for step in sorted(steps):
            ps = steps[step]
            if {p["seed"] for p in ps} != seeds[cell]:
                continue  # a step some seed never reached (seconds budgets): no mean
            point = {k: mean_std([p[k] for p in ps])[0] for k in ("images_seen", "train_s", "metric_value")}
            point["metric_std"] = mean_std([p["metric_value"] for p in ps])[1]
            points.append(point)
        out[cell] = points
    return out


def plot_curves(curves: Sequence[dict[str, Any]], order: Sequence[str], metric: str, out_dir: Path,
                title: str = "") -> list[Path]:
    """quality_vs_images.png and quality_vs_time.png: one line per cell (seed mean), a band of +- one seed std."""
    import matplotlib  # deferred: the backend must be chosen before pyplot loads, and only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = mean_curves(curves)
    ys = [p["metric_value"] for pts in means.values() for p in pts if math.isfinite(p["metric_value"])]
    log_y = bool(lower_is_better(metric)) and bool(ys) and min(ys) > 0
    paths = []
    for x_key, x_label, name in (("images_seen", "real images shown to D", "quality_vs_images.png"),
                                 ("train_s", "training wall-clock, s (evaluation excluded)", "quality_vs_time.png")):
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
        for i, cell in enumerate(order):
            pts = means.get(cell, [])
            if pts:
                xs, ys_ = [p[x_key] for p in pts], [p["metric_value"] for p in pts]
                line, = ax.plot(xs, ys_, marker="o", markersize=3, linestyle="-" if i < 10 else "--", label=cell)
                spread = [p["metric_std"] for p in pts]
                if any(v > 0 for v in spread):  # a band of +- one std over seeds (none with one seed)
                    ax.fill_between(xs, [max(y - d, 1e-9 if log_y else -math.inf) for y, d in zip(ys_, spread)],
                                    [y + d for y, d in zip(ys_, spread)], color=line.get_color(), alpha=0.15)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric + (" (log)" if log_y else ""))
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- statistics
CONFIDENCE = 0.95
N_RESAMPLES = 9999
PLATEAU_GAIN = 0.05  # a run still improving by more than this over the last third of its budget is not converged


def bootstrap_ci(values: Sequence[float], seed: int = 0, n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean (scipy.stats.bootstrap); (nan, nan) below two values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(xs) < 2:
        return math.nan, math.nan
    if len(set(xs)) == 1:  # every resample has the same mean: the interval is that point
        return xs[0], xs[0]
    res = bootstrap((xs,), statistic=_mean, confidence_level=CONFIDENCE, n_resamples=n_resamples,
                    method="percentile", random_state=seed, vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x: Any, axis: int = -1) -> Any:
    return np.mean(x, axis=axis)


def _diff_of_means(a: Any, b: Any, axis: int = -1) -> Any:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def contrast(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Cell a against cell b: difference of means with its bootstrap interval, Cohen's d, Welch's t-test p."""
    a = [float(v) for v in a if v is not None and math.isfinite(float(v))]
    b = [float(v) for v in b if v is not None and math.isfinite(float(v))]
    if len(a) < 2 or len(b) < 2:
        return {"diff": math.nan, "low": math.nan, "high": math.nan, "d": math.nan, "p": math.nan}
    diff = statistics.fmean(a) - statistics.fmean(b)
    pooled = math.sqrt(((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b))
                       / (len(a) + len(b) - 2))
    res = bootstrap((a, b), statistic=_diff_of_means, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES,
                    method="percentile", random_state=seed, vectorized=True)
    p = float(ttest_ind(a, b, equal_var=False).pvalue) if pooled > 0 else math.nan
    return {"diff": diff, "low": float(res.confidence_interval.low), "high": float(res.confidence_interval.high),
            "d": diff / pooled if pooled > 0 else math.nan, "p": p}


def plateau_gain(curve: Sequence[dict[str, Any]], lower_better: bool = True) -> float:
    """Relative improvement of the metric over the last third of a run's images (positive = still improving)."""
    pts = sorted((p for p in curve if p["metric_value"] is not None), key=lambda p: p["images_seen"])
    if len(pts) < 2:
        return math.nan
    mark = 2 / 3 * pts[-1]["images_seen"]
    before = min(pts[:-1], key=lambda p: abs(p["images_seen"] - mark))["metric_value"]
    end = pts[-1]["metric_value"]
    if not (math.isfinite(before) and math.isfinite(end)) or before == 0:
        return math.nan
    return (before - end) / abs(before) if lower_better else (end - before) / abs(before)


def mean_curve(curves: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """A cell's metric curve: at each evaluation point (images seen) the mean over ``seeds`` of the
    finite values, kept only where every seed has one (the cell's metric is the seed mean)."""
    points: dict[int, list[float]] = {}
    for p in curves:
        v = p["metric_value"]
        if p["seed"] in seeds and v is not None and math.isfinite(float(v)):
            points.setdefault(int(p["images_seen"]), []).append(float(v))
    return [{"images_seen": i, "metric_value": statistics.fmean(vs)}
            for i, vs in sorted(points.items()) if len(vs) == len(seeds)]


def statistics_section(rows: Sequence[dict[str, Any]], curves: Sequence[dict[str, Any]], order: Sequence[str],
                       contrasts: Sequence[dict[str, str]], recipes: Optional[dict[str, Any]] = None) -> str:
    """Markdown: chosen recipes, per-cell mean/std/95% CI with the plateau check, and the headline contrasts."""
    if not rows:
        return ""
    groups = _grouped(rows)
    metric = rows[0]["metric"]
    lower = lower_is_better(metric) is not False
    lines = []
    if recipes:
        lines += ["", "Chosen recipes (equal tuning budget per cell; tuning seeds disjoint from the final seeds):", "",
                  "| cell | recipe | tuning value | trials (diverged) |", "|---|---|---:|---:|"]
        for cell in order:
            r = recipes.get(cell)
            if r:
                lines.append(f"| {cell} | `{' '.join(r['recipe'])}` | {r['value']:.3f} | {r['trials']} ({r['diverged']}) |")
    lines += ["", f"{metric}: mean, sample std and {CONFIDENCE:.0%} percentile bootstrap interval of the mean over "
              f"seeds; converged = over the last third of the budget the cell's metric (the seed mean at each "
              f"evaluation point) improved by at most {PLATEAU_GAIN:.0%}. The largest single seed's gain is shown "
              "beside it: one seed's point-to-point noise is not the cell's trend.", "",
              "| cell | seeds | mean | std | 95% CI | last-third gain (seed mean) | (largest single seed) | converged |",
              "|---|---:|---:|---:|---|---:|---:|---|"]
    cis = {}
    for cell in order:
        rs = groups.get(cell, [])
        if not rs:
            continue
        vals = [r["metric_value"] for r in rs]
        m, s, n = mean_std(vals)
        cis[cell] = bootstrap_ci(vals)
        mine = [p for p in curves if p["cell"] == cell]
        gains = [plateau_gain([p for p in mine if p["seed"] == r["seed"]], lower) for r in rs]
        worst = max((g for g in gains if math.isfinite(g)), default=math.nan)
        gain = plateau_gain(mean_curve(mine, [r["seed"] for r in rs]), lower)
        ok = "yes" if math.isfinite(gain) and gain <= PLATEAU_GAIN else "**no: not converged**"
        lines.append(f"| {cell} | {n} | {m:.3f} | {s:.3f} | [{cis[cell][0]:.3f}, {cis[cell][1]:.3f}] "
                     f"| {gain:+.1%} | {worst:+.1%} | {ok} |")
    usable = [c for c in contrasts if c["a"] in groups and c["b"] in groups]
    if usable:
        lines += ["", f"Contrasts (a - b in {metric}; difference of means with its {CONFIDENCE:.0%} bootstrap "
                  "interval, Cohen's d with the pooled std, Welch's t-test p; cells whose intervals overlap: "
                  "no finding):", "", "| contrast | a | b | a - b | 95% CI | Cohen's d | Welch p | reading |",
                  "|---|---|---|---:|---|---:|---:|---|"]
        for c in usable:
            k = contrast([r["metric_value"] for r in groups[c["a"]]], [r["metric_value"] for r in groups[c["b"]]])
            (al, ah), (bl, bh) = cis[c["a"]], cis[c["b"]]
            if not all(math.isfinite(v) for v in (al, ah, bl, bh)) or (al <= bh and bl <= ah):
                reading = "no finding (intervals overlap)"
            else:
                better = c["a"] if (k["diff"] < 0) == lower else c["b"]
                reading = f"{better} better"
            lines.append(f"| {c['name']} | {c['a']} | {c['b']} | {k['diff']:+.3f} | [{k['low']:+.3f}, {k['high']:+.3f}] "
                         f"| {k['d']:+.2f} | {k['p']:.3g} | {reading} |")
    return "\n".join(lines) + "\n"
