"""Composing and validating a run's configuration (Hydra), before anything is written.

``tools/train.py`` takes Hydra overrides on its command line. We use Hydra's compose
API rather than ``@hydra.main`` because ``@hydra.main`` creates the run directory
before the task starts, and a bad value must fail before any output exists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from transgan.errors import CheckpointError, ConfigError
from transgan.losses import GANLoss
from transgan.nn.attention import check_kernel
from transgan.presets import CONFIG_DIR, option_names
from transgan.runs import checkpoint as ckpt
from transgan.train.ema import EMA_NORM_STATS


@dataclasses.dataclass
class CosineSchedules:
    """Settings that move from their value in the config to an end value along a cosine over ``images``
    real images (R3GAN: learning rates, Adam beta2, the R1/R2 weight, the G_ema half-life, ADA's fixed p)."""

    images: Optional[float] = None       # null: nothing is scheduled
    lr_g_end: Optional[float] = None     # from train.lr_g
    lr_d_end: Optional[float] = None     # from train.lr_d
    beta2_end: Optional[float] = None    # Adam beta2 of both optimizers, from train.betas_g[1] / betas_d[1]
    gamma_end: Optional[float] = None    # loss.r1_gamma and loss.r2_gamma (those > 0), from their values
    ema_kimg_end: Optional[float] = None  # from train.ema_kimg
    ada_p_end: Optional[float] = None    # ADA's fixed p (train.ada_target=null), from train.ada_p


@dataclasses.dataclass
class TrainConfig:
    """Schema of the ``train`` group: unknown keys and wrong types fail at composition."""

    max_steps: int = 2000
    max_seconds: Optional[float] = None
    batch_size: int = 64
    batch_size_g: Optional[int] = None  # G step's batch (TransGAN: twice D's); null = batch_size
    grad_accum: int = 1
    n_critic: int = 3
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    betas_g: tuple[float, float] = (0.5, 0.9)
    betas_d: tuple[float, float] = (0.5, 0.9)
    grad_clip: Optional[float] = None
    grad_clip_d_main: Optional[float] = None  # D's main step only (StyleSwin: 5); null = grad_clip
    mixed_precision: str = "no"
    compile: bool = False
    channels_last: Optional[bool] = None
    ema_kimg: float = 10.0
    ema_rampup: Optional[float] = 0.05
    ema_beta: Optional[float] = None  # a fixed decay per G step instead of ema_kimg (TransGAN 256: 0.995)
    ema_norm_stats: str = "recompute"  # G_ema's BatchNorm statistics: its own (recompute) or the live G's (copy)
    ema_norm_batches: int = 40  # batches (of G's training batch size) that G_ema's own statistics average
    augment: str = "none"
    diffaugment: str = "color,translation,cutout"
    ada_p: float = 0.0
    ada_target: Optional[float] = 0.6
    ada_kimg: float = 500.0
    ada_interval: int = 4
    heldout_images: int = 64
    log_every: int = 50
    sample_every: int = 500
    eval_every: int = 500
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    sample_grid_cols: int = 8
    device: str = "auto"
    cpu_threads: Optional[int] = None
    max_nonfinite_in_row: int = 20
    cosine: CosineSchedules = dataclasses.field(default_factory=CosineSchedules)


AUGMENT_MODES = ("none", "diffaugment", "ada")


@dataclasses.dataclass
class RunEvalConfig:
    """Schema of the ``eval`` section: the evaluation during training (built by transgan/eval/training.py)."""

    preset: str = "auto"
    metrics: Optional[list[str]] = None
    num_samples: Optional[int] = None
    best: Optional[str] = "auto"
    extractor: Optional[str] = None
    batch_size: Optional[int] = None
    inception_weights: Optional[str] = None
    vgg16_weights: Optional[str] = None
    extractor_weights: Optional[str] = None
    download_weights: bool = False
    allow_unverified_weights: bool = False
    cache_dir: Optional[str] = None


def _check_train(train: DictConfig) -> None:
    checks = [
        (train.max_steps >= 0, "train.max_steps must be >= 0"),
        (train.max_seconds is None or train.max_seconds > 0, "train.max_seconds must be > 0 (or null)"),
        (train.batch_size >= 1, "train.batch_size must be >= 1"),
        (train.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (train.batch_size_g is None or train.batch_size_g >= 1, "train.batch_size_g must be >= 1 (or null)"),
        (train.ema_beta is None or 0.0 <= train.ema_beta < 1.0, "train.ema_beta must be in [0, 1) (or null)"),
        (train.n_critic >= 1, "train.n_critic must be >= 1"),
        (train.ema_norm_batches >= 1, "train.ema_norm_batches must be >= 1"),
        (train.ema_norm_stats in EMA_NORM_STATS,
         f"train.ema_norm_stats must be one of {'|'.join(EMA_NORM_STATS)}, got {train.ema_norm_stats!r}"),
        (all(c is None or c > 0 for c in (train.grad_clip, train.grad_clip_d_main)),
         "train.grad_clip and train.grad_clip_d_main must be > 0 (or null)"),
        (train.mixed_precision in ("no", "fp16", "bf16"), "train.mixed_precision must be one of no|fp16|bf16"),
        (train.device in ("auto", "cpu"), "train.device must be auto or cpu"),
        (train.augment in AUGMENT_MODES, f"train.augment must be one of {'|'.join(AUGMENT_MODES)}, got {train.augment!r}"),
        (train.augment != "diffaugment" or bool(train.diffaugment.strip()),
         "train.augment=diffaugment needs a train.diffaugment policy, e.g. color,translation,cutout"),
        (0.0 <= train.ada_p <= 1.0, "train.ada_p must be in [0, 1]"),
        (train.ada_target is None or -1.0 < train.ada_target < 1.0, "train.ada_target must be in (-1, 1) or null"),
        (train.ada_kimg > 0 and train.ada_interval >= 1, "train.ada_kimg must be > 0 and train.ada_interval >= 1"),
        (train.heldout_images >= 0, "train.heldout_images must be >= 0"),
        (train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
        (train.max_nonfinite_in_row >= 1, "train.max_nonfinite_in_row must be >= 1"),
        (min(train.log_every, train.sample_every, train.eval_every, train.ckpt_every) >= 1,
         "train.log_every, sample_every, eval_every and ckpt_every must be >= 1"),
    ]
    c = train.cosine
    checks += [
        (c.images is None or c.images > 0, "train.cosine.images must be > 0 (or null)"),
        (c.images is not None or all(v is None for k, v in c.items() if k != "images"),
         "train.cosine.*_end needs train.cosine.images (the images over which they move)"),
        (c.ada_p_end is None or (train.augment == "ada" and train.ada_target is None and 0 <= c.ada_p_end <= 1),
         "train.cosine.ada_p_end schedules ADA's fixed p: needs train.augment=ada, train.ada_target=null, "
         "and a value in [0, 1]"),
        (all(v is None or v >= 0 for v in (c.lr_g_end, c.lr_d_end, c.gamma_end, c.ema_kimg_end)),
         "train.cosine end values must be >= 0"),
        (c.beta2_end is None or 0 <= c.beta2_end < 1, "train.cosine.beta2_end must be in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


RECIPE_DIR = "recipes"  # configs/recipes/<model>.yaml: a model's measured training recipe


def compose_config(overrides: Sequence[str], config_dir: Path = CONFIG_DIR) -> tuple[DictConfig, str]:
    """Compose ``configs/config.yaml`` with command-line overrides; return (cfg, run_dir pattern).

    The run directory comes from ``hydra.run.dir`` (with ``${now:...}`` unresolved until the
    main process resolves it), so one command-line contract serves Hydra users. With
    ``recipe=auto`` (the default) the chosen model's recipe is added first (see ``recipe_overrides``).
    """
    overrides = list(overrides)
    full = _compose(overrides, config_dir)
    extra = recipe_overrides(full.recipe, full.hydra.runtime.choices, overrides, config_dir)
    if extra:
        full = _compose(extra + overrides, config_dir)
    run_dir = OmegaConf.to_container(full.hydra.run, resolve=False)["dir"]
    with open_dict(full):
        del full["hydra"]
    return validate_config(full), run_dir


def _compose(overrides: list[str], config_dir: Path) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(str(e).strip()) from e


def recipe_overrides(recipe: str, choices: Any, overrides: Sequence[str], config_dir: Path = CONFIG_DIR) -> list[str]:
    """The overrides of ``configs/recipes/<model>.yaml`` that the command line leaves alone.

    A recipe is the loss and schedule measured to work for a model on its default data (the
    numbers are in the model's doc). It yields to the user: a recipe line is dropped when the
    command line sets the same key, chooses that key's group (``loss=...`` drops every
    ``loss.*`` line), or picks ``experiment=...``; ``recipe=none`` drops all of it.
    """
    if recipe == "none":
        return []
    if recipe != "auto":
        raise ConfigError(f"recipe must be auto or none, got {recipe!r}")
    path = config_dir / RECIPE_DIR / f"{choices.get('model')}.yaml"
    if not path.is_file():
        return []
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    if "experiment" in given:
        return []
    kept = []
    for line in OmegaConf.to_container(OmegaConf.load(path))["overrides"]:
        key = line.split("=", 1)[0]
        if key not in given and key.split(".", 1)[0] not in given:
            kept.append(line)
    return kept


# Overrides without a dot that a command may carry: config group choices and top-level keys.
CHOICE_KEYS = ("model", "dataset", "loss", "train", "experiment", "seed", "recipe")


def is_choice(override: str) -> bool:
    """Whether ``override`` picks a group option or sets a top-level key (``model=cwgan_gp``, ``seed=1``)."""
    return "=" in override and override.split("=", 1)[0] in CHOICE_KEYS


def check_choices_match_run(run_cfg: DictConfig, overrides: Sequence[str], config_dir: Path = CONFIG_DIR) -> None:
    """On resume, accept the choices of ``overrides`` that give the run's config; refuse others, naming both.

    The command is composed afresh (its choices, its key=value overrides, the recipe); every section a
    choice decides must equal that of ``run_cfg`` (the run's saved config with the same overrides).
    """
    choices = [o for o in overrides if is_choice(o)]
    if not choices:
        return
    fresh, _ = compose_config(overrides, config_dir)
    for choice in choices:
        key, value = choice.split("=", 1)
        sections = _decided_by(key, fresh)
        diffs = [d for s in sections for d in _differences(run_cfg.get(s), fresh.get(s), s)]
        if not diffs:
            continue
        shown = "; ".join(f"{path}: run {a!r}, requested {b!r}" for path, a, b in diffs[:4])
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise ConfigError(f"on resume, {key}={value} differs from the run's {key}="
                          f"{_run_choice(key, run_cfg, overrides, config_dir)}: {shown}{more}; "
                          f"leave {key}={value} out to continue the run as it was")


def _decided_by(key: str, cfg: DictConfig) -> list[str]:
    # An experiment is a global preset: it may set any section.
    return [k for k in cfg if k != "resume"] if key == "experiment" else [key]


def _differences(a: Any, b: Any, path: str) -> list[tuple[str, Any, Any]]:
    """Leaves where two config sections differ, as (dotted path, a's value, b's value)."""
    a = OmegaConf.to_container(a, resolve=True) if OmegaConf.is_config(a) else a
    b = OmegaConf.to_container(b, resolve=True) if OmegaConf.is_config(b) else b
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys(), key=str)
                for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [(path, a, b)]


def _run_choice(key: str, run_cfg: DictConfig, overrides: Sequence[str], config_dir: Path) -> str:
    """The option of group ``key`` that composes to the run's config, else a pointer to config.yaml."""
    if key in ("seed", "recipe"):
        return str(run_cfg[key])
    others = [o for o in overrides if not o.startswith(f"{key}=")]
    for option in sorted(p.stem for p in (config_dir / key).glob("*.yaml")):
        try:
            candidate, _ = compose_config([*others, f"{key}={option}"], config_dir)
        except ConfigError:
            continue
        if not any(_differences(run_cfg.get(s), candidate.get(s), s) for s in _decided_by(key, candidate)):
            return option
    return "(no stock option; see the run's config.yaml)"


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check the top-level keys and the ``train`` schema; return a resolved, read-only copy."""
    expected = {"model", "dataset", "loss", "train", "eval", "seed", "resume", "recipe"}
    keys = set(cfg.keys()) | {"eval"}  # runs from before the eval section get its defaults
    if keys - expected:
        raise ConfigError(f"unknown top-level config key(s) {sorted(keys - expected)}; expected {sorted(expected)}")
    if expected - keys:
        raise ConfigError(f"missing top-level config key(s) {sorted(expected - keys)}")
    try:
        given = cfg.train
        if "augment" not in given and given.get("diffaugment"):
            # A run saved before train.augment existed turned DiffAugment on by a non-empty policy alone.
            given = OmegaConf.merge(given, {"augment": "diffaugment"})
        train = OmegaConf.merge(OmegaConf.structured(TrainConfig), given)
        evaluation = OmegaConf.merge(OmegaConf.structured(RunEvalConfig), cfg.get("eval") or {})
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except Exception as e:  # OmegaConf raises several types for the same kind of mistake
        raise ConfigError(f"bad config: {e}".strip()) from e
    resolved.train = train
    resolved.eval = evaluation
    _check_train(resolved.train)
    for key in ("generator", "discriminator", "resolution"):
        if key not in resolved.model:
            raise ConfigError(f"model config needs a {key!r} entry (see configs/model/)")
    if resolved.model.get("attention") is not None:
        check_kernel(resolved.model.attention, "model.attention")
    OmegaConf.set_readonly(resolved, True)
    OmegaConf.set_struct(resolved, True)
    return resolved


def resolve_run(argv: Sequence[str]) -> tuple[DictConfig, str, Optional[Path]]:
    """Turn command-line overrides into (config, run-dir pattern, checkpoint to resume).

    With ``resume=<run dir>`` the run's saved config.yaml is the base and plain
    ``key=value`` overrides (e.g. ``train.max_steps=4000``) apply on top. The original
    command's group choices (``model=...``) and ``hydra.run.dir`` may be repeated; a choice
    that would change the run is refused.
    """
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume or resume[-1] in ("resume=", "resume=null"):
        cfg, run_dir = compose_config([a for a in argv if not a.startswith("resume=")])
        return cfg, run_dir, None
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise CheckpointError(f"cannot resume from {run_dir}: no config.yaml there (is it a transgan run directory?)")
    latest = ckpt.latest_checkpoint(run_dir)
    base = OmegaConf.load(saved)
    rest = []
    for override in argv:
        key = override.split("=", 1)[0]
        if override.startswith("resume="):
            continue
        if key == "hydra.run.dir":  # the original command names the run's own directory
            given = Path(override.split("=", 1)[1]).expanduser()
            if given.resolve() != run_dir.resolve():
                raise ConfigError(f"on resume, hydra.run.dir={given} differs from the run's directory {run_dir}")
            continue
        rest.append(override)
        key = key.lstrip("+~")
        if not is_choice(override) and ("=" not in override or "." not in key or key.startswith("hydra")):
            raise ConfigError(f"on resume only key=value overrides of existing keys and the run's own group "
                              f"choices are allowed, not {override!r}")
    OmegaConf.set_struct(base, True)
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([o for o in rest if not is_choice(o)]))
    except Exception as e:
        raise ConfigError(f"bad override on resume: {e}") from e
    with_resume = OmegaConf.to_container(cfg)
    with_resume["resume"] = str(run_dir)
    cfg = validate_config(OmegaConf.create(with_resume))
    check_choices_match_run(cfg, rest)
    return cfg, str(run_dir), latest



def run_config_keys() -> dict[str, str]:
    """The keys tools/train.py (and the commands that compose a run: model_stats, convert) take, for --help."""
    return {
        "model": "a model preset: " + ", ".join(option_names("model")),
        "model/generator": "any generator of configs/model/generator/: " + ", ".join(option_names("model/generator")),
        "model/discriminator": "any discriminator: " + ", ".join(option_names("model/discriminator")),
        "model.*": "model.resolution, model.attention (auto|sdpa|xformers|math|chunked), "
                   "model.generator.<option>, model.discriminator.<option>",
        "dataset": "one of " + ", ".join(option_names("dataset")),
        "dataset.*": "the dataset's keys, e.g. dataset.root, dataset.conditional, dataset.max_images",
        "loss": "one of " + ", ".join(option_names("loss")),
        "loss.*": ", ".join(GANLoss.OPTIONS),
        "train.*": ", ".join(f.name for f in dataclasses.fields(TrainConfig)),
        "eval.*": ", ".join(f.name for f in dataclasses.fields(RunEvalConfig)),
        "experiment": "a paper recipe: " + ", ".join(option_names("experiment")),
        "recipe": "auto (configs/recipes/<model>.yaml where the command line is silent) | none",
        "seed": "the run's seed (weights, data order, every draw)",
        "resume": "a run directory: continue from its newest checkpoint",
        "hydra.run.dir": "the run directory (default runs/<date>/<time>)",
    }
