"""An ablation grid: its config (Hydra, configs/ablation/), its cells, and the equal-budget guard.

A grid is generator x discriminator x seed. Every cell is one ``tools/train.py`` run whose
overrides are the grid's shared ``train_args``, the cell's own ``overrides``, its
``model/generator=`` and ``model/discriminator=`` choices, the seed, and the keys the grid
derives from its budget and evaluation protocol. Every cell's full training config is
composed before anything runs, and :func:`check_equal_budget` refuses the grid unless the
configs agree on everything outside ``model.generator`` and ``model.discriminator`` (and
the seed): same data, resolution, batch, loss, schedule, augmentation, evaluation, budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transgan.errors import ConfigError
from transgan.eval.metric_registry import METRICS, training_keys
from transgan.presets import CONFIG_DIR
from transgan.train.config import compose_config, validate_config

ABLATION_CONFIG_DIR = CONFIG_DIR / "ablation"
ABLATED = ("generator", "discriminator")  # the factor: model.<key> may differ between cells
BUDGET_KINDS = ("images", "steps", "seconds")
# What the trainer's own evaluation can record, and the eval.json keys of tools/eval.py with the
# eval.metrics entry (or flag) that produces each: both from the one metric registry.
TRAINER_METRICS = tuple(training_keys())
TOOL_METRICS = {**{key: m.name for m in METRICS.values() for key in m.keys}, "intra_fid": "intra_fid"}
# Keys the grid sets for every cell from its budget, evaluation, seeds and output folder.
RESERVED = ("train.max_steps", "train.max_seconds", "train.eval_every", "train.sample_every", "train.ckpt_every",
            "train.keep_checkpoints", "seed", "resume", "hydra")
JUDGED_DATASETS = ("digits", "stacked_digits")  # what the trainer's own evaluation measures cheaply on CPU
NO_STEP_LIMIT = 10 ** 12  # max_steps of a seconds budget: the clock stops the run


class AblationError(ConfigError):
    """A grid that cannot give a fair comparison, or an ablation folder that belongs to another grid."""


@dataclasses.dataclass
class BudgetSpec:
    """The one budget every cell gets."""

    kind: str = "images"   # images (real images shown to D) | steps (G steps) | seconds (training time)
    value: float = 0.0
    # free: G's batch is each cell's own (G sees images / n_critic generated images, or its batch_size_g's);
    # equal: train.batch_size_g = batch_size x n_critic in every cell, so G is shown as many generated
    # images as D is shown real ones whatever recipe a cell runs (tuned n_critic no longer changes G's share).
    g_images: str = "free"


@dataclasses.dataclass
class EvalSpec:
    """The one evaluation protocol every cell gets."""

    source: str = "trainer"            # trainer: the run's own eval records (digits) | tool: tools/eval.py
    metric: str = "fd_digits"          # the reported metric: a trainer metric or an eval.json key
    points: int = 5                    # evaluations per cell, evenly spaced over a steps/images budget
    every_steps: Optional[int] = None  # evaluation interval under a seconds budget (steps unknown ahead)
    noise_seeds: int = 0               # evaluation seeds of each cell's final checkpoint for the metric's evaluation SD
    memorization: bool = False         # every run's final checkpoint: nearest-neighbour copying (metric memorization),
                                       # and the metric of the training / held-out images themselves as rows
    preset: Optional[str] = None       # tool source: configs/eval/<preset>.yaml
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # tool source: eval.<key>=<value>


@dataclasses.dataclass
class TuningSpec:
    """Equal tuning per cell (transgan/ablation/tuning.py): ``trials`` Optuna trials over one ``space``."""

    trials: int = 0                  # trials per cell; 0 = no tuning (the shared train_args recipe)
    seeds: list[int] = dataclasses.field(default_factory=list)  # trial seeds: disjoint from the final seeds
    budget: BudgetSpec = dataclasses.field(default_factory=BudgetSpec)  # per trial; images keeps compute equal
    sampler_seed: int = 0            # TPE sampler seed (cell i uses sampler_seed + i)
    # tpe: every trial a run of ``budget`` at every tuning seed, the best value wins. halving: successive
    # halving (Jamieson & Talwalkar 2016): the trials run ``budget`` at the first tuning seed, the best
    # 1/eta go on at eta x the images, and so on, until ``survivors`` recipes train to the final
    # runs' budget at every tuning seed; the best mean there wins (the second's is the recipe sensitivity).
    method: str = "tpe"
    eta: int = 3
    survivors: int = 2
    # The one search space: {loss: {<configs/loss option>: {<loss key>: [low, high]}}, train.<key>: [low, high]
    # (log-uniform floats), or a list of choices}; see docs/ablation.md.
    space: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ContrastSpec:
    """A headline contrast: cell ``a`` (e.g. attention) against cell ``b`` (e.g. convolution)."""

    name: str = ""
    a: str = ""
    b: str = ""


@dataclasses.dataclass
class CellSpec:
    """One (generator, discriminator) cell; ``overrides`` may only touch the ablated factor."""

    generator: Optional[str] = None      # a configs/model/generator/ option (None: the base model's)
    discriminator: Optional[str] = None  # a configs/model/discriminator/ option
    label: Optional[str] = None          # row name; default "<generator>+<discriminator>"
    overrides: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AblationConfig:
    """Schema of configs/ablation/config.yaml: unknown keys and wrong types fail at composition."""

    name: str = "ablation"
    description: str = ""
    out_dir: str = "ablations/${name}"
    train_args: list[str] = dataclasses.field(default_factory=list)  # tools/train.py overrides of every cell
    extra_args: list[str] = dataclasses.field(default_factory=list)  # appended to train_args (command line)
    data_root: Optional[str] = None  # dataset.root of every cell (appended to train_args when set)
    generators: list[str] = dataclasses.field(default_factory=list)  # with discriminators: the full product
    discriminators: list[str] = dataclasses.field(default_factory=list)
    cells: Optional[list[CellSpec]] = None  # explicit cells instead of the product
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    budget: BudgetSpec = dataclasses.field(default_factory=BudgetSpec)
    eval: EvalSpec = dataclasses.field(default_factory=EvalSpec)
    launcher: list[str] = dataclasses.field(default_factory=lambda: [
        "accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no"])
    plots: bool = True
    tuning: TuningSpec = dataclasses.field(default_factory=TuningSpec)
    contrasts: list[ContrastSpec] = dataclasses.field(default_factory=list)
    declared_budget: Optional[float] = None  # the budget.value the contrasts were declared at; another: exploratory
    # Run (tune and train) only these cells, by label: a grid split into parts that run side by side
    # (each with train.cpu_threads set), then reported by one run of the whole grid. [] = every cell.
    only: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Cell:
    """One planned run: a (generator, discriminator) cell at one seed, with its composed config."""

    label: str
    seed: int
    overrides: list[str]  # tools/train.py arguments, run dir included
    cfg: DictConfig       # the training config those arguments compose to
    run_dir: Path

    @property
    def generator(self) -> str:
        """Family (registered name) of the generator."""
        return str(self.cfg.model.generator.name)

    @property
    def discriminator(self) -> str:
        """Family (registered name) of the discriminator."""
        return str(self.cfg.model.discriminator.name)

    @property
    def key(self) -> str:
        """Folder name of the cell's run: ``<label>__seed<k>``."""
        return f"{self.label}__seed{self.seed}"


def compose_ablation(overrides: Sequence[str], config_dir: Path = ABLATION_CONFIG_DIR) -> DictConfig:
    """Compose configs/ablation/config.yaml (``experiment=<preset>`` and ``key=value`` overrides) and validate it."""
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            raw = compose(config_name="config", overrides=list(overrides))
        cfg = OmegaConf.merge(OmegaConf.structured(AblationConfig), raw)
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"bad ablation config: {str(e).strip()}") from e
    _check_ablation(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _check_ablation(cfg: DictConfig) -> None:
    b, e = cfg.budget, cfg.eval
    checks = [
        (b.kind in BUDGET_KINDS, f"budget.kind must be one of {'|'.join(BUDGET_KINDS)}, not {b.kind!r}"),
        (b.value > 0, "budget.value must be > 0"),
        (b.g_images in ("free", "equal"), f"budget.g_images must be free or equal, not {b.g_images!r}"),
        (b.kind == "seconds" or float(b.value).is_integer(), f"a {b.kind} budget must be a whole number"),
        (len(cfg.seeds) >= 1 and len(set(cfg.seeds)) == len(cfg.seeds), "seeds must be a non-empty list without repeats"),
        (e.source in ("trainer", "tool"), f"eval.source must be trainer or tool, not {e.source!r}"),
        (e.points >= 1, "eval.points must be >= 1"),
        (b.kind != "seconds" or (e.every_steps or 0) >= 1, "a seconds budget needs eval.every_steps >= 1"),
        (e.source != "trainer" or e.metric in TRAINER_METRICS,
         f"eval.source=trainer reports {list(TRAINER_METRICS)}, not {e.metric!r}"),
        (e.source != "tool" or e.metric in TOOL_METRICS, f"eval.source=tool reports {list(TOOL_METRICS)}, not {e.metric!r}"),
        (len(cfg.launcher) >= 1, "launcher must name a command (e.g. [accelerate, launch] or [python])"),
    ]
    for ok, message in checks:
        if not ok:
            raise AblationError(message)
    _refuse_reserved([*cfg.train_args, *cfg.extra_args], "train_args/extra_args")
    if b.g_images == "equal":
        setters = [o for o in (*cfg.train_args, *cfg.extra_args) if _override_key(o) == "train.batch_size_g"]
        if setters or "train.batch_size_g" in (cfg.tuning.space or {}):
            raise AblationError("budget.g_images=equal sets train.batch_size_g (batch_size x n_critic) in every cell; "
                                "do not set or tune it as well")


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _refuse_reserved(overrides: Sequence[str], where: str) -> None:
    for o in overrides:
        key = _override_key(o)
        if any(key == r or key.startswith(r + ".") for r in RESERVED):
            raise AblationError(f"{where} sets {key!r}, which the grid sets for every cell from budget, eval, seeds "
                                "and out_dir; change those instead")


def cell_specs(cfg: DictConfig) -> list[CellSpec]:
    """The grid's cells: ``cells`` if given, else ``generators`` x ``discriminators``."""
    if cfg.cells is not None:
        specs = [CellSpec(**OmegaConf.to_container(c)) for c in cfg.cells]
    else:
        specs = [CellSpec(generator=g, discriminator=d) for g in cfg.generators for d in cfg.discriminators]
    if not specs:
        raise AblationError("the grid is empty: give generators and discriminators, or cells")
    for s in specs:
        _refuse_reserved(s.overrides, f"cell {s.label or (s.generator, s.discriminator)}")
        if s.label is not None and (not s.label or "/" in s.label or s.label.startswith(".")):
            raise AblationError(f"cell label {s.label!r} cannot name a folder")
    unknown = sorted(set(cfg.get("only") or ()) - {spec_label(s) for s in specs})
    if unknown:
        raise AblationError(f"only names {unknown}, which are not cells of this grid "
                            f"({', '.join(spec_label(s) for s in specs)})")
    return specs


def selected(cfg: DictConfig, label: str) -> bool:
    """Whether this invocation runs the cell ``label`` (``only`` empty: every cell)."""
    return not cfg.get("only") or label in cfg.only


def budget_overrides(cfg: DictConfig, train: DictConfig) -> dict[str, Any]:
    """The ``train.*`` keys a cell gets from the budget and the evaluation protocol."""
    b, e = cfg.budget, cfg.eval
    if b.kind == "seconds":
        keys: dict[str, Any] = {"max_steps": NO_STEP_LIMIT, "max_seconds": float(b.value)}
        every = int(e.every_steps)
    else:
        per_step = int(train.batch_size) * int(train.n_critic)  # real images shown to D per G step
        steps = int(b.value) if b.kind == "steps" else math.ceil(int(b.value) / per_step)
        keys = {"max_steps": steps, "max_seconds": None}
        every = max(1, math.ceil(steps / e.points))
    keys.update(eval_every=every, sample_every=every, ckpt_every=every)
    if b.g_images == "equal":  # one G step sees as many generated images as its n_critic D steps see real ones
        keys["batch_size_g"] = int(train.batch_size) * int(train.n_critic)
    if e.source == "tool":  # every evaluation point is a checkpoint that tools/eval.py reads afterwards
        keys["keep_checkpoints"] = e.points + 1
    return keys


def plan_grid(cfg: DictConfig, recipes: Optional[dict[str, list[str]]] = None,
              tuned: Sequence[str] = ()) -> list[Cell]:
    """Compose every cell's training config (nothing runs); the equal-budget guard passes or raises.

    ``recipes`` maps a cell label to the overrides its tuning chose; the configs may then differ
    in the ``tuned`` keys (and the steps a per-cell batch and n_critic derive from the budget).
    """
    out_dir = Path(cfg.out_dir).expanduser()
    specs = cell_specs(cfg)
    recipes = recipes or {}
    composed = []
    for s in specs:
        chosen = [f"model/generator={s.generator}"] * bool(s.generator) + \
                 [f"model/discriminator={s.discriminator}"] * bool(s.discriminator)
        shared = [*cfg.train_args, *cfg.extra_args, *([f"dataset.root={cfg.data_root}"] if cfg.data_root else [])]
        args = [*shared, *recipes.get(spec_label(s), []), *s.overrides, *chosen]
        try:
            base, _ = compose_config(args)
        except ConfigError as err:
            raise AblationError(f"cell {s.label or (s.generator, s.discriminator)}: {err}") from err
        label = s.label or f"{s.generator or base.model.generator.name}+{s.discriminator or base.model.discriminator.name}"
        composed.append((label, args, base))
    labels = [label for label, _, _ in composed]
    if len(set(labels)) != len(labels):
        raise AblationError(f"two cells share a label ({sorted({x for x in labels if labels.count(x) > 1})}); "
                            "give cells distinct labels")
    check_equal_budget([(label, base) for label, _, base in composed], tuned)
    if cfg.eval.source == "trainer" and composed[0][2].dataset.name not in JUDGED_DATASETS:
        raise AblationError(f"eval.source=trainer measures {' and '.join(JUDGED_DATASETS)} runs only (the digits "
                            "judge's protocols); use eval.source=tool with an eval.preset")
    # With the tool source, tools/eval.py evaluates the checkpoints afterwards: the runs evaluate nothing themselves.
    quiet = ["eval.metrics=[]"] if cfg.eval.source == "tool" else []
    cells = []
    for label, args, base in composed:
        train_keys = budget_overrides(cfg, base.train)  # equal images; steps follow the cell's batch x n_critic
        for seed in cfg.seeds:
            run_dir = out_dir / "runs" / f"{label}__seed{seed}"
            full = OmegaConf.to_container(base)
            full["seed"] = int(seed)
            full["train"].update(train_keys)
            if quiet:
                full["eval"]["metrics"] = []
            overrides = [*args, f"seed={seed}", *(f"train.{k}={_hydra_value(v)}" for k, v in train_keys.items()),
                         *quiet, f"hydra.run.dir={run_dir}"]
            cells.append(Cell(label=label, seed=int(seed), overrides=overrides,
                              cfg=validate_config(OmegaConf.create(full)), run_dir=run_dir))
    return cells


def spec_label(s: CellSpec) -> str:
    """A cell's row name: its label, or ``<generator>+<discriminator>``."""
    return s.label or f"{s.generator}+{s.discriminator}"


def _hydra_value(v: Any) -> str:
    return "null" if v is None else str(v)


def outside_factor(cfg: DictConfig, tuned: Sequence[str] = ()) -> dict[str, Any]:
    """A training config as flat ``key: value`` pairs, less the ablated factor, the seed and the ``tuned`` keys."""
    tree = OmegaConf.to_container(cfg)
    for key in ABLATED:
        tree["model"].pop(key, None)
    tree.pop("seed", None)
    flat = _flatten(tree)
    return {k: v for k, v in flat.items() if not any(k == t or k.startswith(t + ".") for t in tuned)}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def check_equal_budget(cells: Sequence[tuple[str, DictConfig]], tuned: Sequence[str] = ()) -> None:
    """Refuse cells whose training configs differ anywhere but in model.generator/discriminator, seed and ``tuned``."""
    (ref_label, ref_cfg), *rest = cells
    ref = outside_factor(ref_cfg, tuned)
    for label, cfg in rest:
        other = outside_factor(cfg, tuned)
        diff = [f"{k}: {ref.get(k, '<absent>')!r} in {ref_label}, {other.get(k, '<absent>')!r} in {label}"
                for k in sorted(ref.keys() | other.keys()) if ref.get(k, "<absent>") != other.get(k, "<absent>")]
        if diff:
            raise AblationError(
                f"unequal grid: cell {label} differs from cell {ref_label} outside the ablated factor "
                f"(model.generator / model.discriminator), so the comparison would not be fair:\n  "
                + "\n  ".join(diff) + "\nput shared settings in train_args and keep cell overrides to "
                "model.generator.* / model.discriminator.*")


def fingerprint(cell: Cell, cfg: DictConfig) -> str:
    """Hash of everything that decides a cell's result: its training config and the evaluation protocol."""
    tree = OmegaConf.to_container(cell.cfg)
    tree.pop("resume", None)
    blob = {"train": tree, "eval": OmegaConf.to_container(cfg.eval), "budget": OmegaConf.to_container(cfg.budget)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]
