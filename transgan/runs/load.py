"""Loading a generator from what tools/train.py leaves behind: a run directory or one of its checkpoints.

Shared by tools/eval.py, tools/generate.py and tools/serve.py. Checkpoints are read with
``weights_only=True`` (``transgan.runs.checkpoint.load_checkpoint``); the web app itself never
imports this module — tools/serve.py hands it an already loaded generator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch.nn as nn
from omegaconf import OmegaConf

from transgan.data import build_dataset
from transgan.errors import CheckpointError, ConfigError
from transgan.models.common import NORM_STATS_BATCH_SIZE, NORM_STATS_BATCHES, check_finite, recompute_norm_statistics
from transgan.registry import build_generator
from transgan.runs.checkpoint import list_checkpoints, load_checkpoint, run_dir_of
from transgan.runs.export import GeneratorInfo, LoadedGenerator, is_export, load_exported_generator
from transgan.runs.state import saved_config, saved_num_classes, saved_progress

log = logging.getLogger("transgan.eval")


def find_checkpoint(source: Path) -> Optional[Path]:
    """The checkpoint a source names (a file, or a run directory's newest), or None for an image folder."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise FileNotFoundError(f"{source} does not exist")
    if (source / "config.yaml").is_file() or (source / "checkpoints").is_dir():
        found = list_checkpoints(source)
        if not found:  # not latest_checkpoint's message: these tools read a run, they do not resume it
            raise CheckpointError(f"{source} is a run directory without a checkpoint yet (no step-*.pt in "
                                  f"{source / 'checkpoints'}): train it first, or give a checkpoint file or an "
                                  "exported generator")
        return found[-1]
    return None


def load_generator(state: dict[str, Any], network: str, num_classes: Optional[int] = None,
                   attention: Optional[str] = None) -> nn.Module:
    """Build the run's generator from a loaded checkpoint and load its ``network`` weights (G_ema or G).

    Its attention kernel is ``attention`` if given, else the run's (``model.attention`` of the
    recorded config; the backbone's default where an older config has none).
    """
    cfg = saved_config(state)
    if num_classes is None:
        num_classes = 0
        if cfg.dataset.get("conditional", False):
            # The number of classes is the dataset's; read it from the checkpoint when it is recorded there.
            recorded = saved_num_classes(state)
            num_classes = recorded if recorded is not None else _dataset_num_classes(cfg)
    G = build_generator(cfg.model.generator, img_resolution=int(cfg.model.resolution),
                        img_channels=int(cfg.dataset.channels), num_classes=num_classes,
                        attention=attention or cfg.model.get("attention"))
    if network not in state:
        raise CheckpointError(f"the checkpoint holds no {network} weights")
    try:
        G.load_state_dict(state[network])
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches: the config is not the weights'
        raise CheckpointError(f"the checkpoint's {network} weights do not fit the generator its config "
                              f"describes: {str(e)[:400]}") from None
    check_finite(G, f"the checkpoint's {network}")
    if network == "G_ema" and "ema_norm_stats" not in cfg.get("train", {}):
        # Written before G_ema had statistics of its own: its BatchNorm layers hold the live G's.
        batch = int(cfg.train.get("batch_size", NORM_STATS_BATCH_SIZE)) // int(cfg.train.get("grad_accum", 1))
        if recompute_norm_statistics(G, NORM_STATS_BATCHES, max(1, batch), seed=int(cfg.get("seed", 0))):
            log.warning("this checkpoint was written before G_ema kept its own BatchNorm statistics (it holds "
                        "the live G's); recomputed them from G_ema's own outputs (%d batches of %d)",
                        NORM_STATS_BATCHES, batch)
    return G.eval().requires_grad_(False)


def _dataset_listing(cfg: Any) -> Any:
    """The run's dataset with caching off: file names and labels, no image decoded."""
    listing = OmegaConf.merge(cfg.dataset, {"cache": False})
    return build_dataset(listing, resolution=int(cfg.model.resolution))


def _dataset_num_classes(cfg: Any) -> int:
    """The run's number of classes, from its dataset's file list (cache off: no image is decoded)."""
    return int(_dataset_listing(cfg).num_classes)


def run_classes(cfg: Any, recorded: Optional[int] = None,
                recorded_names: Optional[list[str]] = None) -> tuple[int, list[str]]:
    """(number of classes, class names) of a run: the checkpoint's record, else the dataset's file list."""
    if not cfg.dataset.get("conditional", False):
        return 0, []
    if recorded is not None and recorded_names is not None and len(recorded_names) == int(recorded):
        return int(recorded), [str(n) for n in recorded_names]
    try:
        dataset = _dataset_listing(cfg)
    except ConfigError as e:  # data moved, deleted or unreadable: the recorded count is enough for G
        if recorded is None:
            raise
        log.warning("class names unavailable (%s); using class indices", e)
        return int(recorded), [str(k) for k in range(int(recorded))]
    num_classes = int(recorded) if recorded is not None else int(dataset.num_classes)
    names = [str(n) for n in (getattr(dataset, "class_names", []) or [])]
    return num_classes, (names if len(names) == num_classes else [str(k) for k in range(num_classes)])


def load_run(source: Path, network: str = "G_ema", attention: Optional[str] = None) -> LoadedGenerator:
    """The ``network`` of a run directory's newest checkpoint (or of one checkpoint file), with its info
    (``attention``: a kernel instead of the run's)."""


    source = Path(source).expanduser()
    checkpoint = find_checkpoint(source)
    if checkpoint is None:
        raise ConfigError(f"{source} is neither a run directory, a checkpoint nor an exported generator")
    state = load_checkpoint(checkpoint)
    cfg = saved_config(state)
    num_classes, names = run_classes(cfg, saved_num_classes(state), state.get("class_names"))
    G = load_generator(state, network, num_classes=num_classes, attention=attention)
    info = GeneratorInfo(
        generator=OmegaConf.to_container(cfg.model.generator, resolve=True),
        img_resolution=int(cfg.model.resolution), img_channels=int(cfg.dataset.channels),
        num_classes=num_classes, class_names=names,
        dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
        source={"run": str(run_dir_of(checkpoint)), "checkpoint": str(checkpoint), "step": saved_progress(state).step,
                "network": network},
        attention=attention or cfg.model.get("attention"),
        norm_stats="copy" if network == "G_ema" and cfg.get("train", {}).get("ema_norm_stats") == "copy" else "own")
    return LoadedGenerator(G, info)


def load_source(source: Path | str, network: str = "G_ema", attention: Optional[str] = None) -> LoadedGenerator:
    """A generator from an export (folder or .safetensors), a run directory or a checkpoint file, with
    the attention kernel it was trained with, or ``attention`` instead."""
    source = Path(source).expanduser()
    if is_export(source):
        if network != "G_ema":
            raise ConfigError(f"an export holds only G_ema; network={network} needs the run directory")
        return load_exported_generator(source, attention=attention)
    return load_run(source, network, attention)
