"""What an ablation writes: ablation.csv (a row per cell and seed), curves.csv, ablation.md, PNG plots."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from transgan.ablation.stats import (ALPHA, CONFIDENCE, detectable_difference, finite, hedges_g, holm, permutation_p,
                                     pooled_sd, t_interval, trend_over_last_points, welch_interval)
from transgan.eval.metric_registry import lower_is_better

# The issue's columns first, in its order; then what else a reader needs to check a row.
COLUMNS = ["generator", "discriminator", "seed", "budget_kind", "budget", "metric", "metric_value", "metric_samples",
           "class_acc", "params_g", "params_d", "flops_per_image", "images_per_s", "peak_mem_bytes", "wall_s",
           "cell", "steps", "images_seen", "images_g", "train_s", "flops_g", "flops_d", "attention_flops_per_image",
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
    samples = sorted({r.get("metric_samples") for r in rows} - {None})
    if samples:  # the sample count is part of the metric's name: a FID of 1k samples is not a FID of 50k
        metric += f" ({', '.join(f'{n:,}' for n in samples)} samples)"
    better = " (lower is better)" if lower_is_better(rows[0]["metric"] if rows else "metric") else ""
    mem_kind = {r.get("peak_mem_kind") for r in rows} - {None}
    lines = [header.rstrip(), ""] if header else []
    lines += [f"| cell | G | D | seeds | {metric}{better} | class acc | params G | params D | GFLOPs/img (G+D fwd) "
              f"| images D / G | images/s | peak mem (MiB) | wall s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in order:
        rs = groups.get(cell, [])
        if not rs:
            lines.append(f"| {cell} | | | 0 | not run | | | | | | | | |")
            continue
        r0 = rs[0]
        lines.append(
            f"| {cell} | {r0['generator']} | {r0['discriminator']} | {len(rs)} "
            f"| {_pm([r['metric_value'] for r in rs], '.3f')} | {_pm([r['class_acc'] for r in rs], '.3f')} "
            f"| {r0['params_g']:,} | {r0['params_d']:,} | {r0['flops_per_image'] / 1e9:.3f} | {_images(rs)} "
            f"| {_pm([r['images_per_s'] for r in rs], '.1f')} | {_pm([r['peak_mem_bytes'] for r in rs], '.0f', 2 ** 20)} "
            f"| {_pm([r['wall_s'] for r in rs], '.0f')} |")
    if mem_kind:
        lines += ["", "peak mem: " + ", ".join(sorted(mem_kind)) + " (see docs/ablation.md)"]
    return "\n".join(lines) + "\n"


def _images(rs: Sequence[dict[str, Any]]) -> str:
    """Real images shown to D / generated images shown to G (seed mean; "?" where a row predates the count)."""
    def one(key: str) -> str:
        mean, _, n = mean_std([None if r.get(key) in (None, "") else float(r[key]) for r in rs])
        return f"{mean:,.0f}" if n else "?"
    return f"{one('images_seen')} / {one('images_g')}"


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
PLATEAU_POINTS = 4  # the plateau check fits a line through a cell's last evaluations (seed means)


def plateau(curve: Sequence[dict[str, Any]], noise_sd: float, lower_better: bool = True) -> dict[str, Any]:
    """A cell's mean curve read for convergence: the fitted change over the last third of the images, its
    standard error, and whether it still improves beyond both (transgan.ablation.stats)."""
    pts = sorted((p for p in curve if p["metric_value"] is not None), key=lambda p: p["images_seen"])
    fit = trend_over_last_points([p["images_seen"] for p in pts], [p["metric_value"] for p in pts], noise_sd,
                                 PLATEAU_POINTS)
    better = fit["change"] < 0 if lower_better else fit["change"] > 0
    improving = bool(fit["beyond_noise"] == 1.0 and better)
    return {**fit, "converged": (not improving) if math.isfinite(fit["change"]) else None}


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


def contrast_rows(groups: dict[str, list[dict[str, Any]]], contrasts: Sequence[dict[str, str]],
                  lower: bool) -> list[dict[str, Any]]:
    """Each declared contrast a - b: Welch's interval, the exact permutation p and its Holm adjustment over
    the contrasts, Hedges' g, the difference the seeds could detect (80% power at Holm's first level)."""
    usable = [c for c in contrasts if c["a"] in groups and c["b"] in groups]
    out = []
    for c in usable:
        a = finite([r["metric_value"] for r in groups[c["a"]]])
        b = finite([r["metric_value"] for r in groups[c["b"]]])
        sd = pooled_sd([a, b])
        out.append({**c, **welch_interval(a, b), "p_perm": permutation_p(a, b), "g": hedges_g(a, b),
                    "n_a": len(a), "n_b": len(b),
                    "detectable": detectable_difference(sd, len(a), len(b), alpha=ALPHA / max(1, len(usable)))})
    for row, adjusted in zip(out, holm([r["p_perm"] for r in out])):
        row["p_holm"] = adjusted
        if math.isfinite(adjusted) and adjusted < ALPHA:
            row["reading"] = f"{row['a'] if (row['diff'] < 0) == lower else row['b']} better"
        else:
            row["reading"] = "no finding"
    return out


def statistics_section(rows: Sequence[dict[str, Any]], curves: Sequence[dict[str, Any]], order: Sequence[str],
                       contrasts: Sequence[dict[str, str]], recipes: Optional[dict[str, Any]] = None,
                       eval_sd: Optional[dict[str, float]] = None, exploratory: bool = False) -> str:
    """Markdown: chosen recipes, per-cell mean with its Student-t interval and the plateau check, and the
    declared contrasts with exact permutation p (Holm), Welch interval, Hedges' g and detectable difference.

    ``eval_sd``: the evaluation SD of the metric per cell (the same checkpoint under several evaluation
    seeds), where measured; ``exploratory``: the grid ran past the budget its contrasts were declared at.
    """
    if not rows:
        return ""
    groups = _grouped(rows)
    metric = rows[0]["metric"]
    lower = lower_is_better(metric) is not False
    eval_sd = eval_sd or {}
    lines = []
    if recipes:
        halving = any(r.get("method") == "halving" for r in recipes.values())
        lines += ["", "Chosen recipes (equal tuning budget per cell; tuning seeds disjoint from the final seeds"
                  + ("; successive halving: the value is the mean over the tuning seeds at the final budget" if halving
                     else "") + "). Recipe sensitivity: the value of the second-best recipe.", "",
                  "| cell | recipe | tuning value | 2nd-best recipe | trials (diverged) |", "|---|---|---:|---:|---:|"]
        for cell in order:
            r = recipes.get(cell)
            if r:
                second = "n/a" if r.get("second") is None else f"{r['second']:.3f}"
                lines.append(f"| {cell} | `{' '.join(r['recipe'])}` | {r['value']:.3f} | {second} "
                             f"| {r['trials']} ({r['diverged']}) |")
    lines += ["", f"{metric}: mean over seeds with its {CONFIDENCE:.0%} Student-t interval (df = seeds - 1); "
              f"eval SD: the metric's spread over evaluation seeds of one checkpoint. Converged: a line through the "
              f"cell's last {PLATEAU_POINTS} evaluations (seed means) does not improve over the last third of the "
              "images by more than two of its standard errors and twice the evaluation SD.", "",
              "| cell | seeds | mean | std | 95% t-interval | eval SD | last-third change (fit ± SE) | converged |",
              "|---|---:|---:|---:|---|---:|---|---|"]
    for cell in order:
        rs = groups.get(cell, [])
        if not rs:
            continue
        vals = [r["metric_value"] for r in rs]
        m, s, n = mean_std(vals)
        _, low, high = t_interval(vals)
        noise = eval_sd.get(cell, math.nan)
        fit = plateau(mean_curve([p for p in curves if p["cell"] == cell], [r["seed"] for r in rs]), noise, lower)
        state = {True: "yes", False: "**no: still improving**", None: "n/a"}[fit["converged"]]
        lines.append(f"| {cell} | {n} | {m:.3f} | {s:.3f} | [{low:.3f}, {high:.3f}] | "
                     f"{noise:.3f} | {fit['change']:+.3f} ± {fit['se']:.3f} | {state} |")
    table = contrast_rows(groups, contrasts, lower)
    if table:
        lines += ["", f"Contrasts a - b in {metric}, declared before the runs"
                  + (" — **exploratory: this grid ran past the budget they were declared at**" if exploratory else "")
                  + f": Welch {CONFIDENCE:.0%} interval of the difference, exact permutation p (every relabelling "
                  f"of the seeds; Holm-adjusted over the {len(table)} contrasts), Welch p, Hedges' g, and the "
                  "smallest difference these seeds detect with 80% power at Holm's first level. A finding needs "
                  f"Holm p < {ALPHA}.", "",
                  "| contrast | a | b | a - b | 95% Welch CI | perm p | Holm p | Welch p | Hedges' g | detectable | reading |",
                  "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in table:
            lines.append(f"| {r['name']} | {r['a']} | {r['b']} | {r['diff']:+.3f} | [{r['low']:+.3f}, {r['high']:+.3f}] "
                         f"| {r['p_perm']:.3g} | {r['p_holm']:.3g} | {r['p_welch']:.3g} | {r['g']:+.2f} "
                         f"| {r['detectable']:.3f} | {r['reading']}{' (exploratory)' if exploratory else ''}"
                         f"{_loss_note(recipes, r['a'], r['b'])} |")
    return "\n".join(lines) + "\n"


def _loss_note(recipes: Optional[dict[str, Any]], a: str, b: str) -> str:
    """A warning when the tuning chose different loss families for the two cells of a contrast."""
    def loss(cell: str) -> Optional[str]:
        recipe = (recipes or {}).get(cell, {}).get("recipe", [])
        return next((o.split("=", 1)[1] for o in recipe if o.startswith("loss=")), None)
    la, lb = loss(a), loss(b)
    return f"; **confounded with the loss** ({la} vs {lb})" if la and lb and la != lb else ""


def memorization_section(figures: dict[str, list[dict[str, float]]], order: Sequence[str],
                         reference: Optional[dict[str, Any]], metric: str) -> str:
    """Markdown: the data itself as the generator (what copying scores), then each cell's copying figures."""
    if not figures and not reference:
        return ""
    lines = ["", "Memorization. Nearest-neighbour distances in the judge's feature space (metric `memorization`, "
             "each run's final checkpoint): `nn_ratio` = median distance of a generated image to its nearest "
             "training image over the same median for held-out images (1: as far as fresh data, 0: copies); "
             "`copy fraction` = share of generated images nearer to the training set than 95% of held-out images "
             "are (held-out data: 0.05, the training images: 1). Mean ± sample std over seeds.", "",
             f"| generator | seeds | nn_ratio | copy fraction | {metric} |", "|---|---:|---:|---:|---:|"]
    names = {"train": "the training images themselves (pure copying)", "test": "held-out real images"}
    for split, row in (reference or {}).items():
        value = row.get(metric)
        lines.append(f"| {names.get(split, split)} ({row['images']:,}) | | {0.0 if split == 'train' else 1.0:.2f} "
                     f"| {1.0 if split == 'train' else 0.05:.2f} | {'n/a' if value is None else format(value, '.3f')} |")
    for cell in order:
        fs = figures.get(cell)
        if fs:
            lines.append(f"| {cell} | {len(fs)} | {_pm([f['nn_ratio'] for f in fs], '.3f')} "
                         f"| {_pm([f['copy_fraction'] for f in fs], '.3f')} | |")
    return "\n".join(lines) + "\n"
