"""Limited-data comparison: no augmentation vs DiffAugment vs ADA, several seeds, one budget.

    python tools/limited_data.py --out runs/limited_data --jobs 2 -- dataset.max_images=200
    python tools/limited_data.py --out runs/limited_data --summarize-only

Every (mode, seed) is a ``tools/train.py`` run under OUT/runs/<mode>__seed<k> with the shared
overrides: DEFAULT_ARGS below, each replaced by an override after ``--`` of the same key, plus
``train.augment=<mode>`` and ``seed=<k>``. Rerunning the same command skips finished runs and
resumes interrupted ones. Then the eval records of every run (fd_digits, digits_class_acc, the
overfitting monitor; on other data only the monitor) are summarized per mode and step: mean, standard deviation and a 95% Student-t interval of the mean over seeds,
into OUT/summary.json, OUT/summary.md and OUT/curves.png. See docs/limited_data.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transgan.cli import run_cli  # noqa: E402
from transgan.errors import ConfigError  # noqa: E402

MODES = ("none", "diffaugment", "ada")
# digits at 16x16 (the images are 8x8: nothing is lost) with a half-width StyleGAN2 (channel_max 32)
# and its recipe (NS + lazy R1, lr 2e-3, batch 32): sized to run 9 times on two CPU cores shared with
# other work; one thread per run, two runs at a time. ADA's p may go 0 -> 1 in 20k images here: the
# paper's 500k would leave p near 0 in a budget of 16k images.
DEFAULT_ARGS = ["model=stylegan2", "model.resolution=16", "model.generator.channel_max=32",
                "model.discriminator.channel_max=32", "dataset=digits", "dataset.max_images=200",
                "train.cpu_threads=1", "train.max_steps=500", "train.eval_every=100", "train.log_every=50",
                "train.sample_every=250", "train.ckpt_every=100", "train.ada_kimg=20", "dataset.num_workers=0"]
METRICS = ("fd_digits", "digits_class_acc", "fid", "kid_mean", "d_overfit_gap", "d_train_real", "d_heldout_real")
TRAIN_METRICS = ("r_t", "ada_p")


def shared_overrides(given: Sequence[str]) -> list[str]:
    """DEFAULT_ARGS with every key the command line sets replaced by the command line's value."""
    keys = {a.split("=", 1)[0].lstrip("+~") for a in given}
    for key in ("train.augment", "seed", "hydra.run.dir", "resume"):
        if key in keys:
            raise ConfigError(f"{key} is set by the grid, per run; leave it out of the overrides")
    return [a for a in DEFAULT_ARGS if a.split("=", 1)[0] not in keys] + list(given)


def run_dir(out: Path, mode: str, seed: int) -> Path:
    """Folder of one run of the grid."""
    return out / "runs" / f"{mode}__seed{seed}"


def train_one(out: Path, mode: str, seed: int, shared: Sequence[str]) -> str:
    """Train (or resume, or skip when finished) one run; return a one-line status."""
    from transgan.ablation.run import TRAIN_COMMAND, run_process
    from transgan.runs import checkpoint as ckpt

    folder = run_dir(out, mode, seed)
    max_steps = next((int(a.split("=", 1)[1]) for a in reversed(shared) if a.startswith("train.max_steps=")), None)
    found = ckpt.list_checkpoints(folder) if folder.is_dir() else []
    if found and max_steps is not None and ckpt.load_checkpoint(found[-1])["progress"]["step"] >= max_steps:
        return f"{folder.name}: finished earlier"
    if found:
        args = [f"resume={folder}"] + [a for a in shared if a.startswith("train.max_steps=")]
    else:
        if folder.exists():
            import shutil

            shutil.rmtree(folder)  # started but never checkpointed: start again
        args = [*shared, f"train.augment={mode}", f"seed={seed}", f"hydra.run.dir={folder}"]
    result = run_process([sys.executable, *TRAIN_COMMAND, *args], out / "logs" / f"{folder.name}.log")
    if result["rc"] != 0:
        raise ConfigError(f"{folder.name}: training exited with status {result['rc']}; see {out / 'logs'}")
    return f"{folder.name}: trained in {result['wall_s']:.0f} s"


def read_records(folder: Path) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]]:
    """(eval records, train records) of a run by step; a step logged twice (resume) keeps its last record."""
    evals: dict[int, dict[str, float]] = {}
    trains: dict[int, dict[str, float]] = {}
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return evals, trains
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "fd_digits" in r or "fid" in r or "d_overfit_gap" in r:
            evals[int(r["step"])] = r
        elif "loss_d" in r:
            trains[int(r["step"])] = r
    return evals, trains


def interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and 95% Student-t interval of the mean of ``values``."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n, "ci95": [mean - half, mean + half]}


def summarize(out: Path, modes: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per mode, per step, per metric: the interval over seeds (only steps every seed has reached)."""
    summary: dict[str, Any] = {}
    for mode in modes:
        runs = [read_records(run_dir(out, mode, s)) for s in seeds]
        per_mode: dict[str, Any] = {}
        for kind, names in ((0, METRICS), (1, TRAIN_METRICS)):
            steps = sorted(set.intersection(*(set(r[kind]) for r in runs))) if runs else []
            for name in names:
                points = []
                for step in steps:
                    values = [r[kind][step][name] for r in runs if r[kind][step].get(name) is not None]
                    if len(values) == len(runs):
                        points.append({"step": step, **interval(values), "values": values})
                if points:
                    per_mode[name] = points
        summary[mode] = per_mode
    return summary


def markdown(summary: dict[str, Any],
             metrics: Sequence[str] = ("fd_digits", "digits_class_acc", "d_overfit_gap", "r_t", "ada_p")) -> str:
    """One table per metric: rows are steps, columns modes, cells mean ± std [95% interval]."""
    modes = [m for m in summary if summary[m]]
    text = []
    for name in metrics:
        rows: dict[int, dict[str, str]] = {}
        for mode in modes:
            for p in summary[mode].get(name, []):
                lo, hi = p["ci95"]
                rows.setdefault(p["step"], {})[mode] = f"{p['mean']:.3f} ± {p['std']:.3f} [{lo:.3f}, {hi:.3f}]"
        if not rows:
            continue
        text += [f"**{name}** (mean ± std over seeds [95% t-interval of the mean])", "",
                 "| step | " + " | ".join(modes) + " |", "|---:|" + "---:|" * len(modes)]
        text += [f"| {s} | " + " | ".join(rows[s].get(m, "") for m in modes) + " |" for s in sorted(rows)]
        text.append("")
    return "\n".join(text)


def plot(summary: dict[str, Any], path: Path,
         metrics: Sequence[str] = ("fd_digits", "digits_class_acc", "d_overfit_gap", "r_t")) -> Optional[Path]:
    """Mean curves with their 95% intervals shaded, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(summary[mode].get(m) for mode in summary)]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    for ax, name in zip(list(axes) if len(metrics) > 1 else [axes], metrics):
        for mode in summary:
            pts = summary[mode].get(name, [])
            if not pts:
                continue
            steps = [p["step"] for p in pts]
            ax.plot(steps, [p["mean"] for p in pts], label=mode)
            lo, hi = zip(*(p["ci95"] for p in pts))
            ax.fill_between(steps, lo, hi, alpha=0.2)
        ax.set_title(name)
        ax.set_xlabel("step")
    axes_list = list(axes) if len(metrics) > 1 else [axes]
    axes_list[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    """Run the grid (unless --summarize-only), then write the summary; return the exit status."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--summarize-only", action="store_true")

    def job() -> None:
        cut = argv.index("--") if "--" in argv else len(argv)
        own, rest = list(argv[:cut]), list(argv[cut + 1:])
        try:
            args = parser.parse_args(own)
        except SystemExit as e:
            raise ConfigError("bad arguments (see --help)") from e
        unknown = set(args.modes) - set(MODES)
        if unknown or args.jobs < 1:
            raise ConfigError(f"--modes must be among {', '.join(MODES)} and --jobs >= 1")
        shared = shared_overrides(rest)
        if not args.summarize_only:
            grid = [(m, s) for s in args.seeds for m in args.modes]
            with ThreadPoolExecutor(args.jobs) as pool:
                for line in pool.map(lambda ms: train_one(args.out, ms[0], ms[1], shared), grid):
                    print(line, flush=True)
        summary = summarize(args.out, args.modes, args.seeds)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps({"args": shared, "seeds": args.seeds,
                                                           "summary": summary}, indent=1))
        (args.out / "summary.md").write_text(markdown(summary))
        plot(summary, args.out / "curves.png")
        print(f"done: {args.out}/summary.md, summary.json, curves.png")

    return run_cli(job, usage=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
