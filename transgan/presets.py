"""Where the package's config files are, and loading one option of a config group by name.

In a checkout ``transgan/configs`` links to the repository's ``configs/``; an installed package
holds a copy (package data), so nothing depends on where the source is. Every module that reads
a config file by name (training, evaluation presets, the eval command, the ablation tool) finds
it here.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transgan.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def option_names(group: str) -> list[str]:
    """The options of a config group: the stems of ``configs/<group>/*.yaml``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def load_option(group: str, name: str, what: str) -> DictConfig:
    """``configs/<group>/<name>.yaml``; an unknown name fails naming the available ones (``what`` names the kind)."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {what} {name!r}; available: {option_names(group)}")
    return OmegaConf.load(path)
