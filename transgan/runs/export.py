"""A generator exported for serving: weights as safetensors plus a small JSON config, no trainer needed.

An export is a folder with two files::

    generator.safetensors   the state dict of G_ema (parameters and buffers: w_avg, constant noise,
                            BatchNorm statistics); the JSON config is also stored in its header
    generator.json          {"format", "generator": {name, options...}, "img_resolution",
                             "img_channels", "num_classes", "class_names", "dataset", "source",
                             "attention", "norm_stats"}

``attention`` is the run's attention kernel (``model.attention``); an export written before it was
recorded has none and rebuilds with the backbone's default (``auto``).

:func:`load_exported_generator` rebuilds the network through the backbone registry and loads the
weights with safetensors — no pickle, no checkpoint, nothing from ``transgan.train`` is imported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from transgan.errors import ConfigError
from transgan.models.common import NORM_STATS_BATCH_SIZE, NORM_STATS_BATCHES, check_finite, recompute_norm_statistics
from transgan.registry import build_generator
from transgan.runs.files import atomic_write, atomic_write_text

log = logging.getLogger("transgan.eval")

EXPORT_FORMAT = "transgan-generator-v1"
MAX_GENERATOR_BYTES = 4 * 2**30  # parameters + buffers; the largest registered configs are well under 1 GB
WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "generator.json"


@dataclass
class GeneratorInfo:
    """What is needed to rebuild a generator and present it: its build config, shape and class names."""

    generator: dict[str, Any]          # the registry config: {"name": ..., options...}
    img_resolution: int
    img_channels: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    dataset: Optional[dict[str, Any]] = None   # the training dataset's config (nearest-neighbour reports)
    source: dict[str, Any] = field(default_factory=dict)  # run directory, checkpoint, step, network
    attention: Optional[str] = None    # the run's attention kernel (model.attention); None: the default
    # "own": BatchNorm statistics (if any) computed from this generator's outputs; "copy": the live G's, as
    # train.ema_norm_stats=copy chose; None: an export written before G_ema had its own, corrected on load
    norm_stats: Optional[str] = None

    def __post_init__(self) -> None:
        # Checked before anything is built from them: a size from a file must not size an allocation unchecked.
        for key, lo, hi in (("img_resolution", 4, 4096), ("img_channels", 1, 4), ("num_classes", 0, 100_000)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{key} must be an integer in {lo}..{hi}, got {short_value(value)}")
        if not isinstance(self.generator, dict):
            raise ConfigError(f"the generator config must be an object, got {short_value(self.generator)}")
        if not isinstance(self.class_names, list) or not all(isinstance(n, str) for n in self.class_names):
            raise ConfigError("class_names must be a list of strings")
        if not self.class_names:
            self.class_names = [str(k) for k in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ConfigError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if "name" not in self.generator:
            raise ConfigError("the generator config has no 'name' (a registered generator)")

    def to_json(self) -> dict[str, Any]:
        """The config as written to generator.json."""
        return {"format": EXPORT_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "generator config") -> "GeneratorInfo":
        """Parse generator.json; a wrong format or missing key fails with a message naming ``where``."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise ConfigError(f"{where} is not a transgan generator export (format {EXPORT_FORMAT!r} expected)")
        keys = {"generator", "img_resolution", "img_channels", "num_classes", "class_names", "dataset", "source",
                "attention", "norm_stats"}
        missing = {"generator", "img_resolution", "img_channels", "num_classes"} - set(data)
        if missing:
            raise ConfigError(f"{where} lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in keys})


@dataclass
class LoadedGenerator:
    """A generator in eval mode with gradients off, and what it is."""

    G: nn.Module
    info: GeneratorInfo


def short_value(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (error messages never echo a huge input)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def build_from_info(info: GeneratorInfo, max_bytes: int = MAX_GENERATOR_BYTES) -> nn.Module:
    """An untrained generator of the architecture ``info`` describes, refused when its weights would pass
    ``max_bytes`` (counted on the meta device first, so e.g. z_dim 1e9 allocates nothing)."""
    build = lambda: build_generator(info.generator, img_resolution=info.img_resolution,  # noqa: E731
                                    img_channels=info.img_channels, num_classes=info.num_classes,
                                    attention=info.attention)
    try:
        with torch.device("meta"):
            tensors = [*build().state_dict().values()]
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:
        raise ConfigError(f"the generator config {short_value(info.generator, 200)} cannot be built: "
                          f"{str(e)[:200]}") from None
    size = sum(t.numel() * t.element_size() for t in tensors)
    if size > max_bytes:
        raise ConfigError(f"the generator config describes {size / 2**30:.1f} GiB of weights (at most "
                          f"{max_bytes / 2**30:.0f} GiB): a size in it is wrong")
    return build()


def export_generator(G: nn.Module, info: GeneratorInfo, out_dir: Path) -> Path:
    """Write ``out_dir/generator.safetensors`` and ``generator.json`` (each atomically); return ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.dumps(info.to_json(), indent=2) + "\n"
    # save_model (not save_file) drops tensors that share storage and keeps the rest contiguous.
    atomic_write(out_dir / WEIGHTS_FILE, lambda tmp: save_model(G, str(tmp), metadata={"transgan": config}))
    atomic_write_text(out_dir / CONFIG_FILE, config)
    return out_dir


def is_export(path: Path) -> bool:
    """True for an export folder (or its safetensors file)."""
    path = Path(path)
    return (path.is_dir() and (path / WEIGHTS_FILE).is_file()) or (path.is_file() and path.suffix == ".safetensors")


def load_exported_generator(path: Path | str, device: torch.device | str = "cpu",
                            attention: Optional[str] = None) -> LoadedGenerator:
    """Rebuild and load an exported generator from its folder or its ``.safetensors`` file
    (``attention``: a kernel instead of the recorded one)."""

    path = Path(path).expanduser()
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"no exported generator at {path} (expected {WEIGHTS_FILE} and {CONFIG_FILE}, "
                                "written by `python tools/generate.py export`)")
    sidecar = weights.with_name(CONFIG_FILE) if weights.name == WEIGHTS_FILE else weights.with_suffix(".json")
    try:
        if sidecar.is_file():
            text, where = sidecar.read_text(), str(sidecar)
        else:  # the header copy makes a lone .safetensors file self-describing
            with safe_open(str(weights), framework="pt") as f:
                text, where = (f.metadata() or {}).get("transgan"), f"the header of {weights}"
            if text is None:
                raise ConfigError(f"{weights} has no {CONFIG_FILE} beside it and no transgan config in its header")
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where} is not valid JSON: {str(e)[:200]}") from None
    except SafetensorError as e:
        raise ConfigError(f"{weights} is not a readable safetensors file (corrupt or truncated?): {e}") from None
    info = _info_from_json(data, where)
    if attention is not None:
        info.attention = attention
    G = build_from_info(info)
    try:
        load_model(G, str(weights), strict=True, device="cpu")
    except SafetensorError as e:
        raise ConfigError(f"{weights} is not a readable safetensors file (corrupt or truncated?): {e}") from None
    except RuntimeError as e:
        raise ConfigError(f"{weights} does not fit the generator of {where}: {str(e)[:500]}") from None
    check_finite(G, str(weights))
    if info.norm_stats is None and recompute_norm_statistics(G):
        log.warning("%s was exported before G_ema kept its own BatchNorm statistics (it holds the live G's); "
                    "recomputed them from its own outputs (%d batches of %d)", weights, NORM_STATS_BATCHES,
                    NORM_STATS_BATCH_SIZE)
    info.norm_stats = "own"
    return LoadedGenerator(G.to(device).eval().requires_grad_(False), info)


def _info_from_json(data: Any, where: str) -> GeneratorInfo:
    """:meth:`GeneratorInfo.from_json`, with a wrong field type (a string resolution) as a ConfigError."""
    try:
        return GeneratorInfo.from_json(data, where)
    except TypeError as e:
        raise ConfigError(f"{where}: {str(e)[:200]}") from None
