"""Registries of generator and discriminator backbones, and builders from config.

The registries start from the tables of ``transgan/models/__init__.py`` (the package's backbones);
``register_generator`` / ``register_discriminator`` add others (a user's backbone, a test's). The
trainer, evaluation and serving code only ever call :func:`build_generator` and
:func:`build_discriminator`, so none of them knows a backbone by name.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, TypeVar

import torch.nn as nn

from transgan import models
from transgan.errors import ConfigError

T = TypeVar("T", bound=type)

GENERATORS: dict[str, type[nn.Module]] = dict(models.GENERATORS)
DISCRIMINATORS: dict[str, type[nn.Module]] = dict(models.DISCRIMINATORS)


def _register(table: dict[str, type[nn.Module]], kind: str, name: str) -> Callable[[T], T]:
    def decorator(cls: T) -> T:
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name]} and {cls})")
        table[name] = cls
        return cls

    return decorator


def register_generator(name: str) -> Callable[[T], T]:
    """Class decorator: make a generator buildable as ``model/generator=<name>``."""
    return _register(GENERATORS, "generator", name)


def register_discriminator(name: str) -> Callable[[T], T]:
    """Class decorator: make a discriminator buildable as ``model/discriminator=<name>``."""
    return _register(DISCRIMINATORS, "discriminator", name)


def _build(table: dict[str, type[nn.Module]], kind: str, cfg: Mapping[str, Any], attention: str | None,
           **shape: Any) -> nn.Module:
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; registered: {sorted(table)}")
    cls = table[name]
    params = inspect.signature(cls.__init__).parameters
    if attention is not None and "attention_kernel" in params and cfg.get("attention_kernel") is None:
        # The run's kernel (model.attention, checked by the config schema) for backbones with attention
        # whose config names none.
        cfg["attention_kernel"] = attention
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in cfg if k not in params and not takes_any]
    if unknown:
        allowed = sorted(k for k in params if k not in ("self", *shape))
        raise ConfigError(f"{kind} {name!r} has no option(s) {unknown}; its options are {allowed}")
    try:
        return cls(**shape, **cfg)
    except ConfigError:
        raise
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"{kind} {name!r}: {e}") from e


def channels_last_on_cpu(model_cfg: Mapping[str, Any]) -> bool:
    """Whether both networks of ``model_cfg`` train faster in NHWC on CPU (``cpu_channels_last = False`` says not)."""
    names = ((GENERATORS, model_cfg["generator"]["name"]), (DISCRIMINATORS, model_cfg["discriminator"]["name"]))
    return all(getattr(table.get(name), "cpu_channels_last", True) for table, name in names)


def build_generator(cfg: Mapping[str, Any], img_resolution: int, img_channels: int, num_classes: int,
                    attention: str | None = None) -> nn.Module:
    """Build the generator named by ``cfg.name`` with the remaining keys as keyword arguments.

    ``attention`` (the config's ``model.attention``) is the kernel of a backbone with attention
    whose ``attention_kernel`` is null; the network carries it from construction.
    """
    return _build(GENERATORS, "generator", cfg, attention, img_resolution=img_resolution,
                  img_channels=img_channels, num_classes=num_classes)


def build_discriminator(cfg: Mapping[str, Any], img_resolution: int, img_channels: int, num_classes: int,
                        attention: str | None = None) -> nn.Module:
    """Build the discriminator named by ``cfg.name`` with the remaining keys as keyword arguments
    (``attention`` as for :func:`build_generator`)."""
    return _build(DISCRIMINATORS, "discriminator", cfg, attention, img_resolution=img_resolution,
                  img_channels=img_channels, num_classes=num_classes)
