"""A converted official model as a normal transgan run directory (config.yaml + a step-0 checkpoint).

The checkpoint is written by :class:`transgan.runs.state.TrainingState`, as a trained run's is, so
``tools/eval.py``, ``tools/generate.py``, ``tools/serve.py`` and ``resume=<run dir>`` (fine-tuning)
take it like any run: the converted G, D and G_ema, fresh Adam states for the preset's learning
rates, the loss's and ADA's initial states and the current RNG state, written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from transgan.convert.common import Converted
from transgan.convert.unpickle import ConvertError
from transgan.registry import build_discriminator
from transgan.runs import checkpoint as ckpt
from transgan.runs.state import TrainingState
from transgan.train.config import compose_config, validate_config

__all__ = ["write_run"]

log = logging.getLogger("transgan.convert")


def write_run(conv: Converted, out: Path, overrides: Sequence[str]) -> Path:
    """Compose ``overrides`` (a preset and its data), put the converted networks in, write ``out``; return the file."""
    out = Path(out)
    if ckpt.list_checkpoints(out):
        raise ConvertError(f"{out} already holds a run; choose an empty folder")
    cfg, _ = compose_config(list(overrides))
    plain: dict[str, Any] = OmegaConf.to_container(cfg)
    # The converted architecture replaces the preset's (which must describe the same networks to
    # fine-tune them; it is kept as given for settings the checkpoint cannot tell, such as the kernel).
    for role, converted in (("generator", conv.generator), ("discriminator", conv.discriminator)):
        if converted:
            preset = plain["model"][role]
            plain["model"][role] = {k: preset[k] if k == "attention_kernel" and k in preset else v
                                    for k, v in converted.items()}
    plain["model"]["resolution"] = conv.resolution
    if int(plain["dataset"]["channels"]) != 3:
        raise ConvertError(f"the official models make RGB images, but dataset.channels="
                           f"{plain['dataset']['channels']}")
    if conv.num_classes and not plain["dataset"].get("conditional"):
        raise ConvertError(f"the checkpoint is class-conditional ({conv.num_classes} classes); "
                           f"set dataset.conditional=true")
    if not conv.num_classes:
        plain["dataset"]["conditional"] = False
    cfg = validate_config(OmegaConf.create(plain))
    D = conv.D
    if D is None:
        # No (convertible) discriminator: the preset's, freshly initialized, so the run still resumes.
        log.warning("the checkpoint's discriminator is not converted: the run gets a fresh %s discriminator",
                    cfg.model.discriminator.name)
        torch.manual_seed(int(cfg.seed))
        D = build_discriminator(cfg.model.discriminator, img_resolution=int(cfg.model.resolution),
                                img_channels=int(cfg.dataset.channels), num_classes=conv.num_classes)
    state = TrainingState.build(cfg, conv.num_classes, [str(k) for k in range(conv.num_classes)],
                                networks=(conv.G, D, conv.G_ema))
    path = ckpt.checkpoint_path(out, 0)
    ckpt.save_atomic(state.state_dict(rng=[ckpt.capture_rng_state()]), path)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return path
