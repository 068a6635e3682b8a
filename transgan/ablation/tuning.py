"""Equal tuning per cell with Optuna, then final runs at each cell's chosen recipe.

Every cell gets ``tuning.trials`` trials over the one declared ``tuning.space`` (loss family
with its penalty weight, learning rates, n_critic, batch), each trial a training run of
``tuning.budget`` at one of ``tuning.seeds``: seeds the final runs never use, and since the
trainer's evaluation draws its latents from the run seed, evaluation latents they never use
either. Trials live in an Optuna journal file (``out_dir/tuning/optuna.journal``), one study
per cell: a finished trial is never rerun, an interrupted one is asked again with the same
parameters and resumes its run from its checkpoint. The chosen recipes are written to
``out_dir/tuning/recipes.json``; the final runs then train every cell at its recipe for every
seed in ``seeds`` (resumable as any grid).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from transgan.ablation.grid import AblationError, Cell, cell_specs, plan_grid, selected, spec_label
from transgan.eval.metric_registry import lower_is_better
from transgan.runs.files import atomic_write_text

JOURNAL = "optuna.journal"
RECIPES = "recipes.json"
LOSS_KEY = "loss"  # the space's categorical over configs/loss options, each with its own penalty range


def check_tuning(cfg: DictConfig) -> None:
    """Refuse a tuning section that cannot give every cell the same, separate tuning budget."""
    t = cfg.tuning
    if t.trials <= 0:
        return
    if not t.seeds:
        raise AblationError("tuning.seeds must name the trial seeds (disjoint from seeds)")
    shared = sorted(set(t.seeds) & set(cfg.seeds))
    if shared:
        raise AblationError(f"tuning.seeds and seeds share {shared}: a final run must not reuse a tuning seed "
                            "(its evaluation latents come from the seed)")
    if t.budget.kind not in ("images", "seconds") or t.budget.value <= 0:
        raise AblationError("tuning.budget must be images or seconds > 0: with batch and n_critic tuned, a steps "
                            "budget would give trials unequal compute")
    if cfg.budget.kind == "steps" and any(k in t.space for k in ("train.batch_size", "train.n_critic")):
        raise AblationError("budget.kind=steps with a tuned batch or n_critic gives cells unequal compute; "
                            "use images or seconds")
    if not t.space:
        raise AblationError("tuning.space is empty")
    if t.method not in ("tpe", "halving"):
        raise AblationError(f"tuning.method must be tpe or halving, not {t.method!r}")
    if t.method == "halving":
        if len(t.seeds) < 2 or t.eta < 2 or not 1 <= t.survivors < t.trials:
            raise AblationError("tuning.method=halving needs >= 2 tuning.seeds (the survivors run at each), "
                                "tuning.eta >= 2 and 1 <= tuning.survivors < tuning.trials")
        if t.budget.kind != cfg.budget.kind or t.budget.value >= cfg.budget.value:
            raise AblationError("tuning.method=halving grows the trials' budget to the final runs' one: "
                                "tuning.budget must be of the same kind as budget and smaller")
    for s in cell_specs(cfg):
        if not (s.generator and s.discriminator):
            raise AblationError("a tuned grid names every cell's generator and discriminator")
    for key in t.space:
        if key != LOSS_KEY and not key.startswith("train."):
            raise AblationError(f"tuning.space key {key!r}: only loss and train.* keys are tuned")


def tuned_keys(cfg: DictConfig) -> list[str]:
    """Config keys whose values may differ between tuned cells (the space's keys; the loss section as a whole)."""
    return [LOSS_KEY if k == LOSS_KEY else k for k in cfg.tuning.space]


def suggest(trial: Any, space: DictConfig) -> list[str]:
    """Sample one recipe from the space as tools/train.py overrides (floats log-uniform, lists categorical)."""
    out: list[str] = []
    for key, dom in space.items():
        if key == LOSS_KEY:
            family = trial.suggest_categorical("loss", sorted(dom.keys()))
            out.append(f"loss={family}")
            for sub, rng in (dom[family] or {}).items():
                # "r1_gamma+r2_gamma": one draw for keys that move together (R3GAN's one gamma)
                value = _suggest_value(trial, f"{family}.{sub}", rng)
                out += [f"loss.{name}={value}" for name in sub.split("+")]
        else:
            out.append(f"{key}={_suggest_value(trial, key, dom)}")
    return out


def _suggest_value(trial: Any, name: str, dom: Any) -> Any:
    dom = list(dom)
    if len(dom) == 2 and all(isinstance(v, float) for v in dom):
        return trial.suggest_float(name, dom[0], dom[1], log=dom[0] > 0)
    return trial.suggest_categorical(name, dom)


def _trial_cfg(cfg: DictConfig, spec_index: int, recipe: Sequence[str], out_dir: Path,
               value: Optional[float] = None, seeds: Optional[Sequence[int]] = None) -> DictConfig:
    """The one-cell grid of a trial: its recipe at ``seeds`` (default: every tuning seed) for ``value`` images."""
    tree = OmegaConf.to_container(cfg)
    spec = OmegaConf.to_container(OmegaConf.structured(cell_specs(cfg)[spec_index]))
    budget = {**tree["tuning"]["budget"], "g_images": tree["budget"]["g_images"]}  # trials share G's share rule
    if value is not None:
        budget["value"] = value
    tree.update(cells=[spec], seeds=list(cfg.tuning.seeds if seeds is None else seeds), out_dir=str(out_dir),
                budget=budget,
                # the recipe after the shared args, as in final_plan
                extra_args=[*tree["extra_args"], *recipe], contrasts=[], only=[])
    tree["tuning"]["trials"] = 0
    return OmegaConf.create(tree)


def recipe_tag(recipe: Sequence[str]) -> str:
    """The folder name of a recipe's trial runs (every rung of a trial continues in it)."""
    return hashlib.sha256(json.dumps(list(recipe)).encode()).hexdigest()[:10]


def _metric(rows: Sequence[dict[str, Any]]) -> float:
    vals = [r["metric_value"] for r in rows]
    if any(v is None or not math.isfinite(v) for v in vals):
        return math.nan
    return sum(vals) / len(vals)


def tune(cfg: DictConfig, run_cells: Callable[[DictConfig, list[Cell]], list[dict[str, Any]]],
         echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run the missing trials of every cell (same count each), write and return the chosen recipes.

    ``run_cells(trial_cfg, cells)`` trains the planned cells (skipping finished ones) and returns
    their rows. A trial whose metric is not finite counts against the cell's budget as a failure.
    """
    check_tuning(cfg)
    root = Path(cfg.out_dir).expanduser() / "tuning"
    root.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(root / JOURNAL)))
    direction = "minimize" if lower_is_better(cfg.eval.metric) is not False else "maximize"
    declared_dict = {"space": OmegaConf.to_container(cfg.tuning.space), "budget": OmegaConf.to_container(
        cfg.tuning.budget), "seeds": list(cfg.tuning.seeds), "metric": cfg.eval.metric}
    if cfg.tuning.method != "tpe":  # (tpe journals written before the option existed stay valid)
        declared_dict.update(method=cfg.tuning.method, eta=cfg.tuning.eta, survivors=cfg.tuning.survivors,
                             final_budget=cfg.budget.value)
    declared = json.dumps(declared_dict, sort_keys=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    recipes: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(cell_specs(cfg)):  # i seeds the cell's sampler: the same in a part as in the whole
        label = spec_label(spec)
        if not selected(cfg, label):
            continue
        study = optuna.create_study(study_name=label, storage=storage, load_if_exists=True, direction=direction,
                                    sampler=optuna.samplers.TPESampler(seed=int(cfg.tuning.sampler_seed) + i))
        if study.user_attrs.get("declared", declared) != declared:
            raise AblationError(f"{root / JOURNAL} holds trials of cell {label} under another search space, trial "
                                "budget, rungs, final budget (halving), seeds or metric; choose another out_dir or "
                                "delete the tuning folder")
        study.set_user_attr("declared", declared)
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # an interrupted trial: closed as failed and asked again with its parameters (its run resumes)
            study.enqueue_trial(stale.params, skip_if_exists=False)
            storage.set_trial_user_attr(stale._trial_id, "interrupted", True)  # before it finishes: then read-only
            storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
        while len(counted_trials(study)) < cfg.tuning.trials:
            trial = study.ask()
            recipe = suggest(trial, cfg.tuning.space)
            tag = recipe_tag(recipe)
            trial.set_user_attr("recipe", recipe)
            first = cfg.tuning.seeds[:1] if cfg.tuning.method == "halving" else None  # halving: rung 0, one seed
            trial_cfg = _trial_cfg(cfg, i, recipe, root / label / tag, seeds=first)
            echo(f"tuning {label}: trial {len(counted_trials(study)) + 1}/{cfg.tuning.trials}: {' '.join(recipe)}")
            value = _metric(run_cells(trial_cfg, plan_grid(trial_cfg)))
            if math.isfinite(value):
                study.tell(trial, value)
            else:
                trial.set_user_attr("diverged", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        check_equal_tuning({label: study}, int(cfg.tuning.trials))
        done = [t for t in counted_trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            raise AblationError(f"cell {label}: every tuning trial diverged; widen or move tuning.space")
        sign = 1.0 if direction == "minimize" else -1.0
        if cfg.tuning.method == "halving":
            ranked = halve(cfg, i, root / label, [(t.number, t.user_attrs["recipe"], t.value) for t in done], sign,
                           run_cells, lambda m: echo(f"tuning {label}: {m}"))
        else:
            ranked = sorted(((t.value, t.number, t.user_attrs["recipe"]) for t in done), key=lambda r: sign * r[0])
        (value, number, recipe), second = ranked[0], (ranked[1][0] if len(ranked) > 1 else None)
        recipes[label] = {"recipe": recipe, "value": value, "trial": number, "second": second,
                          "method": cfg.tuning.method, "trials": len(counted_trials(study)),
                          "diverged": len(counted_trials(study)) - len(done)}
    if not cfg.only:  # a part's recipes are in the journal; the whole grid's run writes the file
        (root / RECIPES).write_text(json.dumps(recipes, indent=1) + "\n")
    return recipes


HALVING = "halving.json"  # per cell: each rung's value of each promoted trial (runs move on; values stay)


def rung_plan(trials: int, eta: int, survivors: int, first: float, final: float) -> list[tuple[int, float]]:
    """Successive halving's rungs as (trials run, images each): ``first`` images for all, eta x the images for
    the best 1/eta, ..., then ``survivors`` trials at the ``final`` budget."""
    plan, n, budget = [(trials, first)], trials, first
    while True:
        n, budget = max(survivors, math.ceil(n / eta)), budget * eta
        if n <= survivors or budget >= final:
            return [*plan, (survivors, final)]
        plan.append((n, budget))


def halve(cfg: DictConfig, spec_index: int, root: Path, done: Sequence[tuple[int, list[str], float]], sign: float,
          run_cells: Callable[[DictConfig, list[Cell]], list[dict[str, Any]]],
          echo: Callable[[str], None]) -> list[tuple[float, int, list[str]]]:
    """Promote the best trials rung by rung (each run continued from its checkpoint to the larger budget; the last
    rung also trains every other tuning seed); return the survivors as (mean at the final budget, trial, recipe),
    best first. Each rung's values are written down, so a restart reruns nothing."""
    t = cfg.tuning
    plan = rung_plan(int(t.trials), int(t.eta), int(t.survivors), float(t.budget.value), float(cfg.budget.value))
    record_path = root / HALVING
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    values = {number: value for number, _, value in done}  # rung 0: the trials' own values
    recipes = {number: recipe for number, recipe, _ in done}
    for r, (keep, images) in enumerate(plan[1:], 1):
        # rank by the last rung (ties: the earlier trial); a diverged trial never goes on
        promoted = sorted((n for n, v in values.items() if math.isfinite(v)), key=lambda n: (sign * values[n], n))[:keep]
        last = r == len(plan) - 1
        seeds = list(t.seeds) if last else list(t.seeds[:1])
        values = {}
        for number in promoted:
            key = f"{r}/{number}"
            if key not in record:
                tag = recipe_tag(recipes[number])
                echo(f"rung {r}/{len(plan) - 1}: trial {number} to {images:g} images at seeds {seeds}")
                trial_cfg = _trial_cfg(cfg, spec_index, recipes[number], root / tag, value=images, seeds=seeds)
                record[key] = _metric(run_cells(trial_cfg, plan_grid(trial_cfg)))
                atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
            values[number] = float(record[key])
    finite = [n for n, v in values.items() if math.isfinite(v)]
    if not finite:
        raise AblationError(f"{root.name}: every recipe diverged at the final budget; widen or move tuning.space")
    return sorted(((values[n], n, recipes[n]) for n in finite), key=lambda x: (sign * x[0], x[1]))


def counted_trials(study: Any) -> list[Any]:
    """The trials that spent the cell's tuning budget: finished, or failed by divergence (not by interruption)."""
    states = optuna.trial.TrialState
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == states.COMPLETE or (t.state == states.FAIL and t.user_attrs.get("diverged"))]


def check_equal_tuning(studies: dict[str, Any], trials: int) -> None:
    """Refuse cells whose studies spent other than exactly ``trials`` trials, or budgets that differ per trial."""
    counts = {label: len(counted_trials(s)) for label, s in studies.items()}
    unequal = {label: n for label, n in counts.items() if n != trials}
    if unequal:
        raise AblationError(f"unequal tuning budgets: every cell gets {trials} trials, but {unequal}")
    declared = {s.user_attrs.get("declared") for s in studies.values()}
    if len(declared) > 1:
        raise AblationError("unequal tuning budgets: the cells' studies were run under different search spaces, "
                            "trial budgets or seeds")


def final_plan(cfg: DictConfig, recipes: dict[str, dict[str, Any]]) -> list[Cell]:
    """Every cell at its chosen recipe for every final seed; configs may differ only in the tuned keys.

    Cells outside ``only`` have no recipe in a part's run: they are planned without one, and dropped
    by the caller.
    """
    return plan_grid(cfg, {label: r["recipe"] for label, r in recipes.items()}, tuned_keys(cfg))


def load_recipes(cfg: DictConfig) -> Optional[dict[str, dict[str, Any]]]:
    """recipes.json of an earlier tuning, if any."""
    path = Path(cfg.out_dir).expanduser() / "tuning" / RECIPES
    return json.loads(path.read_text()) if path.is_file() else None

