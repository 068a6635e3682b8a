"""stylegan2-ada-pytorch snapshots (``network-snapshot-*.pkl``) into this project's ``stylegan2`` models.

A snapshot is read by :func:`transgan.convert.unpickle.load_pickle` into inert records
(:class:`PersistentObject`): no official code runs. Supported: the ``skip`` generator (every
official config builds it) and the discriminator in each official architecture (``resnet``, the
default; ``orig``, the one of ``--cfg=cifar``; ``skip``), unconditional or class-conditional. The
generator is built with ``resample=fir`` (the official [1, 3, 3, 1] upfirdn2d with zero padding).
Official up=2 convolutions are true convolutions (their weights
enter a transposed convolution), this project's correlate, so those kernels are flipped here.

Not carried over: ``conv_clamp`` (the official layers clip activations to +-256 when trained
with mixed precision; a warning is logged) and the official fp16 layers (everything runs in
the precision asked for here). The mapping's single ``w_avg`` fills every class row of this
project's per-class average.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping

import torch
from torch import Tensor

from transgan.convert.common import Converted, Tracked, load_converted
from transgan.convert.unpickle import ConvertError, PersistentObject
from transgan.nn.layers import fir_kernel
from transgan.registry import build_discriminator, build_generator

__all__ = ["generator_config", "discriminator_config", "map_generator", "map_discriminator", "convert_stylegan2_ada"]

log = logging.getLogger("transgan.convert")


def _resolutions(sd: Mapping[str, Tensor], prefix: str) -> list[int]:
    return sorted({int(m.group(1)) for k in sd for m in [re.match(rf"{prefix}b(\d+)\.", k)] if m})


def _count(sd: Mapping[str, Tensor], prefix: str) -> int:
    return len({m.group(1) for k in sd for m in [re.match(rf"{prefix}fc(\d+)\.", k)] if m})


def _channel_plan(channels: dict[int, int], what: str) -> tuple[int, int]:
    """(channel_base, channel_max) with min(base // r, max) == channels[r] at every resolution."""
    channel_max = max(channels.values())
    below = [c * r for r, c in channels.items() if c < channel_max]
    channel_base = min(below) if below else channel_max * max(channels)
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise ConvertError(f"stylegan2-ada {what}: channels per resolution {channels} do not follow "
                           f"min(channel_base / r, channel_max)")
    return channel_base, channel_max


def _attr(net: PersistentObject, path: str, name: str, default: Any) -> Any:
    try:
        node = net.child(path) if path else net
    except ConvertError:
        return default
    return node.state.get(name, default)


def generator_config(G: PersistentObject) -> tuple[dict[str, Any], int, int]:
    """(model.generator config, resolution, number of classes) of an official Generator record."""
    sd = G.tensors()
    if "synthesis.b4.const" not in sd or "mapping.fc0.weight" not in sd:
        raise ConvertError(f"not a stylegan2-ada Generator: no synthesis.b4.const / mapping.fc0 "
                           f"(class {G.class_name}, tensors {sorted(sd)[:6]} ...)")
    res = _resolutions(sd, "synthesis.")
    if any(f"synthesis.b{r}.torgb.weight" not in sd for r in res):
        raise ConvertError("stylegan2-ada Generator: only the 'skip' architecture (a torgb in every block) "
                           "is supported")
    channels = {r: int(sd[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in res}
    base, cmax = _channel_plan(channels, "generator")
    c_dim = int(G.state.get("c_dim", 0) or 0)
    embed = sd.get("mapping.embed.weight")
    cfg = {"name": "stylegan2", "z_dim": int(G.state.get("z_dim", sd["mapping.fc0.weight"].shape[1])),
           "w_dim": int(sd["synthesis.b4.conv1.affine.weight"].shape[1]), "mapping_layers": _count(sd, "mapping."),
           "mapping_lr_multiplier": float(_attr(G, "mapping.fc0", "bias_gain", 0.01)),
           "w_avg_beta": float(_attr(G, "mapping", "w_avg_beta", 0.995)),
           "embed_dim": int(embed.shape[0]) if embed is not None else None,
           "channel_base": base, "channel_max": cmax, "resample": "fir"}
    if embed is not None:
        c_dim = int(embed.shape[1])
        cfg["z_dim"] = int(sd["mapping.fc0.weight"].shape[1]) - cfg["embed_dim"]
    return cfg, max(res), c_dim


def discriminator_config(D: PersistentObject) -> tuple[dict[str, Any], int, int]:
    """(model.discriminator config, resolution, number of classes) of an official Discriminator record."""
    sd = D.tensors()
    if "b4.out.weight" not in sd:
        raise ConvertError(f"not a stylegan2-ada Discriminator: no b4.out (class {D.class_name})")
    res = [r for r in _resolutions(sd, "") if r > 4]
    R = max(res)
    architecture = _d_architecture(sd, res)
    stated = _attr(D, f"b{R}", "architecture", architecture)
    if stated != architecture:
        raise ConvertError(f"stylegan2-ada Discriminator: its blocks say architecture {stated!r}, "
                           f"its tensors are those of {architecture!r}")
    channels = {r: int(sd[f"b{r}.conv0.weight"].shape[0]) for r in res}
    channels[4] = int(sd["b4.conv.weight"].shape[0])
    base, cmax = _channel_plan(channels, "discriminator")
    mbstd_channels = int(sd["b4.conv.weight"].shape[1]) - channels[4]
    embed = sd.get("mapping.embed.weight")
    cfg = {"name": "stylegan2", "channel_base": base, "channel_max": cmax,
           "mbstd_group_size": int(_attr(D, "b4.mbstd", "group_size", 4) or 4),
           "mbstd_channels": mbstd_channels,
           "cmap_dim": int(sd["b4.out.weight"].shape[0]) if embed is not None else None,
           "cmap_layers": _count(sd, "mapping.") if embed is not None else 2, "spectral_norm": False,
           "architecture": architecture}
    return cfg, R, int(embed.shape[1]) if embed is not None else 0


def _d_architecture(sd: Mapping[str, Tensor], res: list[int]) -> str:
    """The official D's ``architecture`` from its tensors: 1x1 skips (resnet), an image input at every
    block and the epilogue (skip), or the image only at the top block (orig, the cifar config)."""
    R = max(res)
    if f"b{R}.fromrgb.weight" not in sd:
        raise ConvertError(f"stylegan2-ada Discriminator: no b{R}.fromrgb (the image input of the top block)")
    skips = [f"b{r}.skip.weight" in sd for r in res]
    inputs = [f"b{r}.fromrgb.weight" in sd for r in res if r < R] + ["b4.fromrgb.weight" in sd]
    if all(skips) and not any(inputs):
        return "resnet"
    if not any(skips) and all(inputs):
        return "skip"
    if not any(skips) and not any(inputs):
        return "orig"
    raise ConvertError(f"stylegan2-ada Discriminator: a mix of architectures (1x1 skips at "
                       f"{[r for r, k in zip(res, skips) if k]}, image inputs at "
                       f"{[r for r, k in zip([r for r in res if r < R] + [4], inputs) if k]})")


def _check_filters(sd: Mapping[str, Tensor], what: str) -> None:
    want = fir_kernel()
    for k, v in sd.items():
        if k.endswith("resample_filter") and not torch.allclose(v.float(), want):
            raise ConvertError(f"stylegan2-ada {what}: {k} is not the [1, 3, 3, 1] filter this converter supports")


def _warn_clamp(net: PersistentObject, what: str) -> None:
    clamps = set()
    stack = [net]
    while stack:
        node = stack.pop()
        if node.state.get("conv_clamp") is not None:
            clamps.add(node.state["conv_clamp"])
        stack += [m for m in (node.state.get("_modules") or {}).values() if isinstance(m, PersistentObject)]
    if clamps:
        log.warning("stylegan2-ada %s: conv_clamp %s is not reproduced (activations are not clipped here)",
                    what, sorted(clamps))


def map_generator(G: PersistentObject) -> dict[str, Tensor]:
    """Official Generator tensors -> this project's StyleGAN2Generator state dict."""
    sd = Tracked(G.tensors(), "stylegan2-ada Generator")
    cfg, _, c_dim = generator_config(G)
    out = {"synthesis.const": sd["synthesis.b4.const"]}
    w_avg = sd["mapping.w_avg"]
    out["mapping.w_avg"] = w_avg.reshape(1, -1).repeat(max(c_dim, 1), 1)
    if c_dim:
        out["mapping.embed.weight"], out["mapping.embed.bias"] = sd["mapping.embed.weight"], sd["mapping.embed.bias"]
    for i in range(cfg["mapping_layers"]):
        for p in ("weight", "bias"):
            out[f"mapping.layers.{i}.{p}"] = sd[f"mapping.fc{i}.{p}"]
    for k, r in enumerate(_resolutions(sd, "synthesis.")):
        src, dst = f"synthesis.b{r}.", f"synthesis.blocks.{k}."
        layers = ["conv1"] if r == 4 else ["conv0", "conv1"]
        for j, name in enumerate(layers):
            s, d = f"{src}{name}.", f"{dst}convs.{j}."
            weight = sd[s + "weight"]
            # up=2: official convolution (transposed conv) vs this project's correlation.
            out[d + "conv.weight"] = weight.flip([2, 3]) if name == "conv0" else weight
            out[d + "conv.affine.weight"], out[d + "conv.affine.bias"] = sd[s + "affine.weight"], sd[s + "affine.bias"]
            out[d + "bias"] = sd[s + "bias"]
            out[d + "noise.strength"] = sd[s + "noise_strength"]
            out[d + "noise.noise_const"] = sd[s + "noise_const"]
        t = f"{src}torgb."
        out[dst + "torgb.conv.weight"] = sd[t + "weight"]
        out[dst + "torgb.conv.affine.weight"], out[dst + "torgb.conv.affine.bias"] = (sd[t + "affine.weight"],
                                                                                      sd[t + "affine.bias"])
        out[dst + "torgb.bias"] = sd[t + "bias"]
    _check_filters(sd, "Generator")
    left = sd.leftovers(("resample_filter",))
    if left:
        raise ConvertError(f"stylegan2-ada Generator: tensors this converter does not know: {left[:6]}")
    return out


def map_discriminator(D: PersistentObject) -> dict[str, Tensor]:
    """Official Discriminator tensors -> this project's StyleGAN2Discriminator state dict."""
    sd = Tracked(D.tensors(), "stylegan2-ada Discriminator")
    cfg, R, c_dim = discriminator_config(D)
    out = {"fromrgb.weight": sd[f"b{R}.fromrgb.weight"], "fromrgb.bias": sd[f"b{R}.fromrgb.bias"]}
    for k, r in enumerate(sorted((r for r in _resolutions(sd, "") if r > 4), reverse=True)):
        for name in ("conv0", "conv1"):
            out[f"blocks.{k}.{name}.weight"], out[f"blocks.{k}.{name}.bias"] = (sd[f"b{r}.{name}.weight"],
                                                                                 sd[f"b{r}.{name}.bias"])
        if cfg["architecture"] == "resnet":
            out[f"blocks.{k}.skip.weight"] = sd[f"b{r}.skip.weight"]
        if cfg["architecture"] == "skip":  # the image at this block's output size: the next block's fromrgb
            nxt = f"b{r // 2}.fromrgb."
            out[f"image_inputs.{k}.weight"], out[f"image_inputs.{k}.bias"] = sd[nxt + "weight"], sd[nxt + "bias"]
    for name in ("conv", "fc", "out"):
        out[f"epilogue.{name}.weight"], out[f"epilogue.{name}.bias"] = sd[f"b4.{name}.weight"], sd[f"b4.{name}.bias"]
    if c_dim:
        out["cmap.embed.weight"], out["cmap.embed.bias"] = sd["mapping.embed.weight"], sd["mapping.embed.bias"]
        for i in range(cfg["cmap_layers"]):
            for p in ("weight", "bias"):
                out[f"cmap.layers.{i}.{p}"] = sd[f"mapping.fc{i}.{p}"]
    _check_filters(sd, "Discriminator")
    left = sd.leftovers(("resample_filter",))
    if left:
        raise ConvertError(f"stylegan2-ada Discriminator: tensors this converter does not know: {left[:6]}")
    return out


def convert_stylegan2_ada(snapshot: Mapping[str, Any]) -> Converted:
    """Build and load G, D and G_ema from a loaded snapshot dict (``G``, ``D``, ``G_ema``)."""
    if not isinstance(snapshot, Mapping) or not isinstance(snapshot.get("G_ema", snapshot.get("G")), PersistentObject):
        keys = sorted(snapshot)[:8] if isinstance(snapshot, Mapping) else type(snapshot).__name__
        raise ConvertError(f"not a stylegan2-ada snapshot: expected network records G / D / G_ema, found {keys}")
    g_any = snapshot.get("G_ema") or snapshot["G"]
    g_cfg, res, num_classes = generator_config(g_any)
    nets: dict[str, Any] = {}
    for name in ("G", "G_ema"):
        rec = snapshot.get(name)
        if rec is not None:
            _warn_clamp(rec, name)
            nets[name] = load_converted(build_generator(g_cfg, res, int(rec.state.get("img_channels", 3)),
                                                        num_classes), map_generator(rec), f"stylegan2-ada {name}")
    d_cfg: dict[str, Any] = {}
    if snapshot.get("D") is not None:
        d_cfg, d_res, d_classes = discriminator_config(snapshot["D"])
        if (d_res, d_classes) != (res, num_classes):
            raise ConvertError(f"stylegan2-ada snapshot: G makes {res}x{res} images of {num_classes} classes, "
                               f"D reads {d_res}x{d_res} of {d_classes}")
        _warn_clamp(snapshot["D"], "D")
        nets["D"] = load_converted(build_discriminator(d_cfg, res, int(snapshot["D"].state.get("img_channels", 3)),
                                                       num_classes), map_discriminator(snapshot["D"]),
                                   "stylegan2-ada D")
    G = nets.get("G") or nets["G_ema"]
    return Converted(g_cfg, d_cfg, res, num_classes, G, nets.get("D"), nets.get("G_ema"))
