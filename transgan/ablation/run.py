"""Running an ablation grid: one training process (``transgan-train``) per cell and seed, resumable, then the report.

Before any cell runs: every cell's config is composed and the equal-budget guard passes,
every generator/discriminator pairing is built on the meta device (parameters, FLOPs), the
evaluation weights are found, and no existing cell folder belongs to another grid. A cell
is finished when its ``ablation_cell.json`` holds the fingerprint of its config: then it is
not rerun. An interrupted cell resumes from its newest checkpoint (``resume=<run dir>``), or
restarts from nothing when it never wrote one. A cell folder holding a run of the same
configuration under a smaller budget (a finished grid rerun with a larger ``budget.value``) is
continued to the new budget rather than refused: its training schedule is all that differs,
and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

import transgan
from transgan.ablation.grid import TOOL_METRICS, AblationError, Cell, compose_ablation, fingerprint, plan_grid, selected
from transgan.ablation.report import (COLUMNS, CURVE_COLUMNS, markdown_table, memorization_section, plot_curves,
                                      statistics_section, write_csv)
from transgan.ablation.tuning import check_tuning, final_plan, tune
from transgan.commands import eval as eval_command
from transgan.commands import train as train_command
from transgan.data import build_dataset
from transgan.errors import ConfigError
from transgan.eval.complexity import dataset_classes, measure_models
from transgan.eval.metric_registry import METRICS, training_key
from transgan.eval.metrics import eval_config, evaluate, load_preset, protocol_weights
from transgan.eval.training import training_evaluator
from transgan.runs import checkpoint as ckpt
from transgan.runs.files import atomic_write_text
from transgan.train.config import validate_config

# The commands run as modules of this same copy of transgan (installed or a checkout), never as files;
# imported, so the import contracts see what the grid depends on.
TRAIN_COMMAND = ["-m", train_command.__name__]
EVAL_COMMAND = ["-m", eval_command.__name__]
PACKAGE_PARENT = Path(transgan.__file__).resolve().parents[1]
MARKER = "ablation_cell.json"      # in a cell's run dir: fingerprint, row and curve of a finished cell
ATTEMPTS = "ablation_attempts.jsonl"  # in a cell's run dir: one line per training process
EVAL_DIR = "ablation_eval"         # in a cell's run dir: tools/eval.py results per checkpoint


def run_ablation(overrides: Sequence[str], dry_run: bool = False, echo: Callable[[str], None] = print) -> Path:
    """Compose, check and run the grid (or only plan it with ``dry_run``); write the report; return its folder.

    With ``tuning.trials`` > 0, every cell is first tuned (transgan/ablation/tuning.py) and the
    final runs train each cell at its chosen recipe.
    """
    cfg = compose_ablation(overrides)
    check_tuning(cfg)
    out_dir = Path(cfg.out_dir).expanduser()
    if cfg.tuning.trials > 0:
        t = cfg.tuning
        echo(f"tuning: {t.trials} trials per cell at seeds {list(t.seeds)}, {t.budget.kind} {t.budget.value:g} per "
             f"trial, over {list(t.space)}; final runs at seeds {list(cfg.seeds)}")
    if dry_run:
        prepare(cfg, plan_grid(cfg), echo, folders=cfg.tuning.trials == 0)
        return out_dir
    recipes = None
    if cfg.tuning.trials > 0:
        # every pairing builds and the data is there before any trial (the final runs' folders are
        # checked once their recipes are known)
        prepare(cfg, plan_grid(cfg), echo, folders=False)
        recipes = tune(cfg, lambda trial_cfg, cells: run_cells(trial_cfg, cells, lambda m: echo(f"  {m}"),
                                                                report=False), echo)
        cells = final_plan(cfg, recipes)
    else:
        cells = plan_grid(cfg)
    cells = [c for c in cells if selected(cfg, c.label)]
    if cfg.only:
        echo(f"running the cells {list(cfg.only)} only: no report (run the whole grid to write it)")
    run_cells(cfg, cells, echo, report=not cfg.only, recipes=recipes)
    return out_dir


def prepare(cfg: DictConfig, cells: Sequence[Cell], echo: Callable[[str], None] = print,
            folders: bool = True) -> dict[str, dict[str, Any]]:
    """The checks before anything runs (data, pairings, evaluation weights, cell folders); print the plan."""
    check_data(cells[0])
    stats = measure_cells(cells)
    if cfg.eval.source == "tool":
        check_eval_protocol(cfg)
    for c in cells if folders else ():
        check_cell_folder(c, cfg)
    echo(describe(cfg, cells, stats))
    return stats


def run_cells(cfg: DictConfig, cells: Sequence[Cell], echo: Callable[[str], None] = print, report: bool = True,
              recipes: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Train every planned cell not finished earlier; return the rows of all of them (and write the report)."""
    stats = prepare(cfg, cells, echo)
    out_dir = Path(cfg.out_dir).expanduser()
    prints = {c.key: fingerprint(c, cfg) for c in cells}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.yaml").write_text(OmegaConf.to_yaml(cfg))
    failed = []
    for i, c in enumerate(cells, 1):
        where = f"[{i}/{len(cells)}] {c.label} seed {c.seed}"
        if finished(c, prints[c.key]):
            echo(f"{where}: finished earlier, not rerun")
            continue
        t0 = time.perf_counter()
        try:
            run_cell(c, cfg, out_dir / "logs" / f"{c.key}.log", echo=lambda m: echo(f"{where}: {m}"))
            row, curve = collect(c, cfg, stats[c.label])
        except AblationError as e:
            failed.append(c.key)
            echo(f"{where}: FAILED: {e}")
            continue
        _write_json(c.run_dir / MARKER, {"fingerprint": prints[c.key], "row": row, "curve": curve})
        echo(f"{where}: {cfg.eval.metric}={row['metric_value']} after {row['images_seen']} images, "
             f"{row['train_s']:.0f} s training ({time.perf_counter() - t0:.0f} s for the cell)")
        if report:
            write_report(cfg, cells, out_dir, recipes)
    if report:
        measure_eval_noise(cfg, cells, echo)
        measure_memorization(cfg, cells, echo)
        paths = write_report(cfg, cells, out_dir, recipes)
        echo("wrote " + ", ".join(str(p) for p in paths))
    if failed:
        raise AblationError(f"{len(failed)} cell(s) failed: {', '.join(failed)} (logs in {out_dir / 'logs'}); "
                            "rerun the same command to retry them, finished cells are kept")
    return [json.loads((c.run_dir / MARKER).read_text())["row"] for c in cells]


# ---------------------------------------------------------------------------- before anything runs
def check_data(cell: Cell) -> None:
    """The (shared) dataset is where the config says: list it without decoding an image."""
    build_dataset({**OmegaConf.to_container(cell.cfg.dataset), "cache": False}, int(cell.cfg.model.resolution))


def measure_cells(cells: Sequence[Cell]) -> dict[str, dict[str, Any]]:
    """Parameters and forward FLOPs per image of each cell's G and D (built on the meta device)."""
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        if c.label in out:
            continue
        m = c.cfg.model
        try:
            s = measure_models(m.generator, m.discriminator, int(m.resolution), int(c.cfg.dataset.channels),
                               dataset_classes(c.cfg.dataset, int(m.resolution)))
        except AblationError:
            raise
        except Exception as e:  # a pairing that cannot be built fails here, before any training
            raise AblationError(f"cell {c.label}: cannot build its generator and discriminator: {e}") from e
        g, d = s["generator"], s["discriminator"]
        out[c.label] = {"params_g": g["parameters"], "params_d": d["parameters"], "flops_g": g["flops_per_image"],
                        "flops_d": d["flops_per_image"], "flops_per_image": g["flops_per_image"] + d["flops_per_image"],
                        "attention_flops_per_image": g["attention_flops_per_image"] + d["attention_flops_per_image"]}
    return out


def eval_tool_args(cfg: DictConfig) -> list[str]:
    """The tools/eval.py arguments of the grid's protocol (tool source)."""
    args = [f"eval={cfg.eval.preset}"] if cfg.eval.preset else []
    for k, v in cfg.eval.overrides.items():
        value = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
        args.append(f"eval.{k}={json.dumps(value) if isinstance(value, (list, dict)) else _plain(value)}")
    return args


def _plain(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def check_eval_protocol(cfg: DictConfig) -> None:
    """The tool source's protocol is valid, reports the metric, and its extractor weights are on disk."""
    preset = None
    if cfg.eval.preset:
        try:
            preset = load_preset(cfg.eval.preset)
        except ConfigError as e:
            raise AblationError(str(e)) from None
    protocol = eval_config(preset, **OmegaConf.to_container(cfg.eval.overrides))
    needs = TOOL_METRICS[cfg.eval.metric]
    if not (needs in protocol.metrics or (needs == "intra_fid" and protocol.intra_fid)):
        raise AblationError(f"eval.metric={cfg.eval.metric} needs {needs!r} in the protocol's metrics "
                            f"({protocol.metrics})")
    protocol_weights(protocol)  # a missing Inception file fails now, not after hours of training


def check_cell_folder(cell: Cell, cfg: DictConfig) -> None:
    """Refuse a cell folder that holds a finished or started run of another configuration (one that
    differs from this cell's in more than a smaller training budget); a finished run that a changed
    budget value leaves step for step the same is re-recorded under the new budget."""
    marker = cell.run_dir / MARKER
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("fingerprint") == fingerprint(cell, cfg):
            return
        relation = saved_run(cell)
        # A larger budget that rounds to the same steps (tiny budgets, or a larger batch x n_critic) trains
        # the very same run: it is the finished run, if nothing but the budget's value changed.
        same_run = relation == SAME and done.get("fingerprint") == fingerprint(
            cell, OmegaConf.merge(cfg, {"budget": {"value": float(done["row"]["budget"])}}))  # as composed: float
        if relation != SMALLER_BUDGET and not same_run:
            raise AblationError(f"{cell.run_dir} holds a finished cell of another configuration (data, model, "
                                "evaluation or a larger budget changed); choose another out_dir or delete that folder")
        if same_run:  # recorded under this budget, so it counts as finished (nothing to train or evaluate)
            done["fingerprint"], done["row"]["budget"] = fingerprint(cell, cfg), budget_value(cfg)
            _write_json(marker, done)
    elif ckpt.list_checkpoints(cell.run_dir) and saved_run(cell) not in (SAME, SMALLER_BUDGET):
        raise AblationError(f"{cell.run_dir} holds a started run of another configuration; choose another "
                            "out_dir or delete that folder")


# What the budget sets in a cell's config (train.*): a run that differs from the cell only in these,
# with fewer steps than the cell's, is continued to the cell's budget.
SCHEDULE_KEYS = ("max_steps", "eval_every", "sample_every", "ckpt_every")
SAME, SMALLER_BUDGET, OTHER = "same", "smaller budget", "other"


def saved_run(cell: Cell) -> Optional[str]:
    """How the run saved in the cell folder relates to the cell: ``SAME`` config, ``SMALLER_BUDGET`` (the
    same apart from ``SCHEDULE_KEYS``, with fewer steps: it is continued), ``OTHER``; None when nothing is saved."""
    saved = cell.run_dir / "config.yaml"
    if not saved.is_file():
        return None
    # The saved config through the schema: keys added since it was written take their defaults, so a grid
    # continues across versions unless a value really differs.
    a = OmegaConf.to_container(validate_config(OmegaConf.load(saved)))
    b = OmegaConf.to_container(cell.cfg)

    def key(c: dict[str, Any], drop: Sequence[str] = ()) -> str:
        c = {**c, "resume": None, "train": {k: v for k, v in c["train"].items() if k not in drop}}
        return json.dumps(c, sort_keys=True, default=str)

    if key(a) == key(b):
        return SAME
    if int(a["train"]["max_steps"]) < int(b["train"]["max_steps"]) and key(a, SCHEDULE_KEYS) == key(b, SCHEDULE_KEYS):
        return SMALLER_BUDGET
    return OTHER


def finished(cell: Cell, print_: str) -> bool:
    """Whether the cell finished earlier under this very configuration."""
    marker = cell.run_dir / MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == print_


def describe(cfg: DictConfig, cells: Sequence[Cell], stats: dict[str, dict[str, Any]]) -> str:
    """The plan, printed before anything runs."""
    t, b = cells[0].cfg.train, cfg.budget
    per = (f"{t.max_steps} steps = {t.max_steps * t.batch_size * t.n_critic} real images to D, "
           f"{t.max_steps * (t.batch_size_g or t.batch_size)} generated to G" if b.kind != "seconds"
           else f"{b.value:g} s of training")
    lines = [f"ablation {cfg.name}: {len(stats)} cells x {len(cfg.seeds)} seeds = {len(cells)} runs into "
             f"{cfg.out_dir}",
             f"budget: {b.kind} {b.value:g} -> {per} per run (batch {t.batch_size}, n_critic {t.n_critic}); "
             f"{cfg.eval.metric} every {t.eval_every} steps ({cfg.eval.source})"]
    for label, s in stats.items():
        lines.append(f"  {label:<28} params G {s['params_g']:>11,}  D {s['params_d']:>11,}  "
                     f"GFLOPs/img {s['flops_per_image'] / 1e9:.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- one cell
def _launcher(cfg: DictConfig) -> list[str]:
    cmd = [str(a) for a in cfg.launcher]
    if cmd[0] in ("python", "python3"):
        cmd[0] = sys.executable
    elif shutil.which(cmd[0]) is None and (Path(sys.executable).parent / cmd[0]).is_file():
        cmd[0] = str(Path(sys.executable).parent / cmd[0])  # e.g. accelerate of this virtual environment
    return cmd


def run_process(cmd: Sequence[str], log_path: Path) -> dict[str, Any]:
    """Run ``cmd`` (importing this transgan), output appended to ``log_path``; return rc, wall time and peak RSS.

    The peak RSS is that of the process tree (the launcher and the training process it waits
    for), from ``wait4``'s resource usage of this child alone.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "rss_bytes": usage.ru_maxrss * scale}


def _tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(lines[-n:])


def run_cell(cell: Cell, cfg: DictConfig, log_path: Path, echo: Callable[[str], None] = print) -> None:
    """Train the cell to its budget (resuming or restarting an interrupted run), then evaluate if the tool does."""
    found = ckpt.list_checkpoints(cell.run_dir)
    if found and _budget_spent(ckpt.load_checkpoint(found[-1])["progress"], cell.cfg.train):
        echo("training finished earlier")
    else:
        if found:
            echo(f"{'continuing to the larger budget' if saved_run(cell) == SMALLER_BUDGET else 'resuming'} from {found[-1].name}")
            # The cell's schedule on top of the run's own config: the same values for an interrupted
            # run, the larger budget's for a run of a smaller one.
            args = [f"resume={cell.run_dir}", *(f"train.{k}={cell.cfg.train[k]}" for k in SCHEDULE_KEYS)]
        else:
            if cell.run_dir.exists():
                shutil.rmtree(cell.run_dir)  # started but never checkpointed: start again from nothing
            echo(f"training (log: {log_path})")
            args = cell.overrides
        attempt = run_process([*_launcher(cfg), *TRAIN_COMMAND, *args], log_path)
        if cell.run_dir.is_dir():
            with open(cell.run_dir / ATTEMPTS, "a") as f:
                f.write(json.dumps({**attempt, "resumed": bool(found)}) + "\n")
        if attempt["rc"] != 0:
            raise AblationError(f"training exited with status {attempt['rc']}; last lines of {log_path}:\n"
                                + _tail(log_path))
    if cfg.eval.source == "tool":
        evaluate_checkpoints(cell, cfg, log_path, echo)


def _budget_spent(progress: dict[str, Any], train: DictConfig) -> bool:
    if train.max_seconds is not None and progress["elapsed_s"] - progress.get("overhead_s", 0.0) >= train.max_seconds:
        return True
    return progress["step"] >= train.max_steps


def evaluate_checkpoints(cell: Cell, cfg: DictConfig, log_path: Path, echo: Callable[[str], None] = print) -> None:
    """tools/eval.py on every kept checkpoint of the cell not yet evaluated (results in ablation_eval/)."""
    for path in ckpt.list_checkpoints(cell.run_dir):
        out = cell.run_dir / EVAL_DIR / f"{path.stem}.json"
        if out.is_file():
            continue
        echo(f"evaluating {path.name}")
        res = run_process([sys.executable, *EVAL_COMMAND, str(path), *eval_tool_args(cfg), "--out", str(out)], log_path)
        if res["rc"] != 0:
            raise AblationError(f"tools/eval.py exited with status {res['rc']} on {path}; last lines of "
                                f"{log_path}:\n" + _tail(log_path))


NOISE_DIR = "ablation_eval_noise"  # in the first seed's run dir: its final checkpoint under other evaluation seeds


def measure_eval_noise(cfg: DictConfig, cells: Sequence[Cell], echo: Callable[[str], None] = print) -> None:
    """Each cell's final checkpoint (its first seed's run) evaluated under ``eval.noise_seeds`` more evaluation
    seeds with the protocol of its metric (tools/eval.py), so the report can give the metric's evaluation SD."""
    if not cfg.eval.noise_seeds:
        return
    firsts = {}
    for c in cells:
        if c.label not in firsts and (c.run_dir / MARKER).is_file():
            firsts[c.label] = c
    for label, c in firsts.items():
        path = ckpt.latest_checkpoint(c.run_dir)
        protocol = ["eval=run"] if cfg.eval.source == "trainer" else eval_tool_args(cfg)
        for k in range(int(cfg.eval.noise_seeds)):
            out = c.run_dir / NOISE_DIR / path.stem / f"seed-{NOISE_SEED + k}.json"  # per checkpoint: never stale
            if out.is_file():
                continue
            echo(f"{label}: evaluation noise, evaluation seed {NOISE_SEED + k} of {path.name}")
            res = run_process([sys.executable, *EVAL_COMMAND, str(path), *protocol, f"eval.seed={NOISE_SEED + k}",
                               "--out", str(out)], c.run_dir.parent.parent / "logs" / f"{c.key}.eval_noise.log")
            if res["rc"] != 0:
                raise AblationError(f"tools/eval.py exited with status {res['rc']} measuring the evaluation noise of "
                                    f"{path}")


MEMORIZATION_DIR = "ablation_memorization"  # in each run dir: <checkpoint stem>.json, the copying figures
REFERENCE_ROWS = "reference_rows.json"       # in out_dir: the metric of the data itself as the generator
MEMORIZATION_KEYS = ("nn_ratio", "copy_fraction")


def measure_memorization(cfg: DictConfig, cells: Sequence[Cell], echo: Callable[[str], None] = print) -> None:
    """Every finished run's final checkpoint scored for copying (metric ``memorization``, tools/eval.py), and
    the reported metric of the training images and of held-out images evaluated as if they were generated."""
    if not cfg.eval.memorization:
        return
    done = [c for c in cells if (c.run_dir / MARKER).is_file()]
    protocol = ["eval=run"] if cfg.eval.source == "trainer" else eval_tool_args(cfg)
    for c in done:
        path = ckpt.latest_checkpoint(c.run_dir)
        out = c.run_dir / MEMORIZATION_DIR / f"{path.stem}.json"  # a continued run's new final checkpoint: scored anew
        if out.is_file():
            continue
        echo(f"{c.label} seed {c.seed}: nearest-neighbour memorization of {path.name}")
        res = run_process([sys.executable, *EVAL_COMMAND, str(path), *protocol, "eval.metrics=[memorization]",
                           "eval.intra_fid=false", "--out", str(out)],
                          c.run_dir.parent.parent / "logs" / f"{c.key}.memorization.log")
        if res["rc"] != 0:
            raise AblationError(f"tools/eval.py exited with status {res['rc']} scoring memorization of {path}")
    rows_path = Path(cfg.out_dir).expanduser() / REFERENCE_ROWS
    if done and cfg.eval.source == "trainer" and not rows_path.is_file():
        run = done[0].cfg
        protocol_cfg = training_evaluator(run).protocol
        # data has no "class asked of the generator": the metrics that read one are left out of these rows
        protocol_cfg = eval_config(protocol_cfg, metrics=[m for m in protocol_cfg.metrics if not METRICS[m].classes])
        rows = {}
        for split in ("train", "test"):
            if split == protocol_cfg.split:  # the reference against itself says nothing
                continue
            echo(f"reference row: the {split} images as the generator")
            images = build_dataset({**OmegaConf.to_container(run.dataset), "split": split}, int(run.model.resolution))
            res = evaluate(images, OmegaConf.to_container(run.dataset), protocol_cfg)
            extractor = res["protocol"].get("extractor", "")
            rows[split] = {"images": len(images), **{training_key(k, extractor): v for k, v in res.items()
                                                     if k != "protocol"}}
        _write_json(rows_path, rows)


def memorization(cfg: DictConfig, cells: Sequence[Cell]) -> dict[str, list[dict[str, float]]]:
    """Per cell, each finished run's copying figures."""
    out: dict[str, list[dict[str, float]]] = {}
    for c in cells:
        if not (c.run_dir / MARKER).is_file():
            continue
        path = c.run_dir / MEMORIZATION_DIR / f"{ckpt.latest_checkpoint(c.run_dir).stem}.json"
        if path.is_file():
            res = json.loads(path.read_text())
            out.setdefault(c.label, []).append({k: float(res[k]) for k in MEMORIZATION_KEYS})
    return out


NOISE_SEED = 1000  # evaluation seeds of the noise measurement: none of them is a run's own (its seed)


def eval_noise(cfg: DictConfig, cells: Sequence[Cell]) -> dict[str, float]:
    """Per cell, the SD of its metric over the final checkpoint's evaluations (the run's own and the noise seeds')."""
    out = {}
    for c in cells:
        if c.label in out or not (c.run_dir / MARKER).is_file():
            continue
        folder = c.run_dir / NOISE_DIR / ckpt.latest_checkpoint(c.run_dir).stem  # the checkpoint the row reports
        if not folder.is_dir():
            continue
        values = [json.loads((c.run_dir / MARKER).read_text())["row"]["metric_value"]]
        for f in sorted(folder.glob("seed-*.json")):
            res = json.loads(f.read_text())
            extractor = res.get("protocol", {}).get("extractor", "")
            values += [_number(v) for k, v in res.items() if training_key(k, extractor) == cfg.eval.metric]
        xs = [v for v in values if v is not None and math.isfinite(v)]
        if len(xs) > 1:
            out[c.label] = statistics.stdev(xs)
    return out


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _number(v: Any) -> Optional[float]:
    """A metric value as float (JSON writes non-finite floats as strings)."""
    return None if v is None else float(v)


def curve_points(cell: Cell, cfg: DictConfig) -> list[dict[str, Any]]:
    """The cell's evaluation points: step, images seen, training seconds, metric (and class accuracy)."""
    metric = cfg.eval.metric
    points: dict[int, dict[str, Any]] = {}
    if cfg.eval.source == "trainer":
        for r in _read_jsonl(cell.run_dir / "metrics.jsonl"):
            if metric in r:  # an eval record; a resumed run may repeat a step: the last one wins
                points[int(r["step"])] = {"step": int(r["step"]), "images_seen": r["images_seen"],
                                          "train_s": r.get("train_s", r["time_s"]), "time_s": r["time_s"],
                                          "metric_value": _number(r[metric]), "metric_samples": r.get("num_samples"),
                                          "class_acc": _number(r.get("digits_class_acc"))}
    else:
        for path in ckpt.list_checkpoints(cell.run_dir):
            res = json.loads((cell.run_dir / EVAL_DIR / f"{path.stem}.json").read_text())
            p = ckpt.load_checkpoint(path)["progress"]
            points[int(p["step"])] = {"step": int(p["step"]), "images_seen": p["images_seen"],
                                      "train_s": p["elapsed_s"] - p.get("overhead_s", 0.0), "time_s": p["elapsed_s"],
                                      "metric_value": _number(res.get(metric)),
                                      "metric_samples": (res.get("protocol") or {}).get("num_samples"), "class_acc": None}
    return [{"cell": cell.label, "seed": cell.seed, **points[s]} for s in sorted(points)]


def collect(cell: Cell, cfg: DictConfig, stats: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cell's CSV row and curve, from its final checkpoint, metrics.jsonl and process records."""
    progress = ckpt.load_checkpoint(ckpt.latest_checkpoint(cell.run_dir))["progress"]
    curve = curve_points(cell, cfg)
    if not curve or curve[-1]["step"] != progress["step"]:
        raise AblationError(f"{cell.run_dir}: no evaluation at the final step {progress['step']}")
    train_s = progress["elapsed_s"] - progress.get("overhead_s", 0.0)
    g_batch = int(cell.cfg.train.batch_size_g or cell.cfg.train.batch_size)  # generated images per G step
    cuda_peaks = [r["peak_mem_bytes"] for r in _read_jsonl(cell.run_dir / "metrics.jsonl") if "peak_mem_bytes" in r]
    if cuda_peaks:
        peak, kind = max(cuda_peaks), "cuda_max_allocated"
    else:
        peak = max((a["rss_bytes"] for a in _read_jsonl(cell.run_dir / ATTEMPTS)), default=None)
        kind = "cpu_peak_rss" if peak is not None else None
    row = {"cell": cell.label, "generator": cell.generator, "discriminator": cell.discriminator, "seed": cell.seed,
           "budget_kind": cfg.budget.kind, "budget": budget_value(cfg), "metric": cfg.eval.metric,
           "metric_value": curve[-1]["metric_value"], "metric_samples": curve[-1].get("metric_samples"),
           "class_acc": curve[-1]["class_acc"], **stats,
           "images_per_s": progress["images_seen"] / max(train_s, 1e-9), "peak_mem_bytes": peak,
           "peak_mem_kind": kind, "wall_s": progress["elapsed_s"], "train_s": train_s, "steps": progress["step"],
           "images_seen": progress["images_seen"], "images_g": progress["step"] * g_batch, "run_dir": str(cell.run_dir)}
    return row, curve


# ---------------------------------------------------------------------------- report
def budget_value(cfg: DictConfig) -> float:
    """The budget as written: whole images or steps as int, seconds as float."""
    return float(cfg.budget.value) if cfg.budget.kind == "seconds" else int(cfg.budget.value)


def report_header(cfg: DictConfig, cells: Sequence[Cell]) -> str:
    """The report's first line: the budget and each run's schedule (per cell when tuned recipes differ)."""
    b = cfg.budget
    schedules = {c.label: (c.cfg.train.max_steps, c.cfg.train.batch_size, c.cfg.train.n_critic) for c in cells}
    if b.kind == "seconds":
        runs = {label: f"batch {batch}, n_critic {k}" for label, (_, batch, k) in schedules.items()}
        head = f"Ablation `{cfg.name}`: {b.value:g} s of training per run"
    else:
        runs = {label: f"{steps} steps of batch {batch}, n_critic {k}" for label, (steps, batch, k) in schedules.items()}
        head = f"Ablation `{cfg.name}`: {b.kind} budget {b.value:g} per run"
    if len(set(runs.values())) == 1:
        head += f" ({next(iter(runs.values()))})"
    else:  # tuned recipes choose their own batch and n_critic, so each cell has its own step count
        head += " (" + "; ".join(f"{label}: {run}" for label, run in runs.items()) + ")"
    return head + f"; seeds {list(cfg.seeds)}; mean ± sample std over seeds"


def write_report(cfg: DictConfig, cells: Sequence[Cell], out_dir: Path,
                 recipes: Optional[dict[str, Any]] = None) -> list[Path]:
    """ablation.csv, curves.csv, ablation.md (with recipes, intervals, plateau check, contrasts) and the plots."""
    rows, curves = [], []
    for c in cells:
        marker = c.run_dir / MARKER
        if marker.is_file():
            done = json.loads(marker.read_text())
            rows.append(done["row"])
            curves += done["curve"]
    order = list(dict.fromkeys(c.label for c in cells))
    b = cfg.budget
    header = report_header(cfg, cells) + f"; {len(rows)}/{len(cells)} runs finished."
    paths = [write_csv(out_dir / "ablation.csv", rows, COLUMNS), write_csv(out_dir / "curves.csv", curves, CURVE_COLUMNS)]
    md = out_dir / "ablation.md"
    exploratory = cfg.declared_budget is not None and float(cfg.budget.value) != float(cfg.declared_budget)
    md.write_text(markdown_table(rows, order, header) + statistics_section(
        rows, curves, order, [OmegaConf.to_container(c) for c in cfg.contrasts], recipes,
        eval_sd=eval_noise(cfg, cells), exploratory=exploratory) + memorization_section(
        memorization(cfg, cells), order, _read_json(out_dir / REFERENCE_ROWS), cfg.eval.metric))
    paths.append(md)
    if cfg.plots and curves:
        paths += plot_curves(curves, order, cfg.eval.metric, out_dir, title=f"{cfg.name}: {b.kind} budget {b.value:g}")
    return paths


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")
