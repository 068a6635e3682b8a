"""R3GAN snapshots (brownvc/R3GAN ``network-snapshot-*.pkl``) into this project's ``r3gan`` models.

A snapshot is the dict ``training/training_loop.py`` pickles: plain ``nn.Module`` objects ``G``,
``D``, ``G_ema`` (``training.networks.Generator`` / ``Discriminator`` wrapping ``R3GAN.Networks``;
released files use ``training.networks_baseline`` / ``BaselineGAN``), optimizer states and
``cur_nimg``. :func:`transgan.convert.unpickle.load_pickle` reads them as inert records; the
architecture is read from the tensors and the records' attributes (stage widths, blocks,
cardinality from the grouped convolutions' ``groups``, the class embedding, the stages kept in
bfloat16), and the weights are renamed to this project's modules. An attribute that changes the
network but has no counterpart here (another resampling filter) is an error naming it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transgan.convert.common import Converted, Tracked, load_converted
from transgan.convert.unpickle import ConvertError, PersistentObject
from transgan.models.r3gan import lowpass_taps
from transgan.nn.layers import fir_kernel
from transgan.registry import build_discriminator, build_generator

__all__ = ["is_r3gan", "r3gan_config", "convert_r3gan"]

_WRAPPERS = {"training.networks", "training.networks_baseline"}


def is_r3gan(net: Any) -> bool:
    """Whether ``net`` is a record of R3GAN's ``training.networks`` Generator or Discriminator."""
    return isinstance(net, PersistentObject) and net.class_name.rpartition(".")[0] in _WRAPPERS


def _stages(model: PersistentObject) -> list[PersistentObject]:
    main = model.child("MainLayers")
    return [main.child(str(i)) for i in range(len(main.state.get("_modules") or {}))]


def _layers(stage: PersistentObject) -> list[PersistentObject]:
    layers = stage.child("Layers")
    return [layers.child(str(i)) for i in range(len(layers.state.get("_modules") or {}))]


def _is_block(layer: PersistentObject) -> bool:
    return layer.class_name.endswith(".ResidualBlock")


def _plan(model: PersistentObject, transition_first: bool) -> dict[str, Any]:
    """Widths, cardinalities, blocks, expansion, kernel size and bf16 stages, in the network's own stage order."""
    widths, cards, blocks, bf16, expansion, kernel = [], [], [], [], None, None
    for i, stage in enumerate(_stages(model)):
        layers = _layers(stage)
        residual = [layer for layer in layers if _is_block(layer)]
        transition = layers[0] if transition_first else layers[-1]
        tensors = transition.tensors()
        if residual:
            conv1 = residual[0].child("LinearLayer1.Layer").tensors()["weight"]
            conv2 = residual[0].child("LinearLayer2.Layer")
            width, expansion = int(conv1.shape[1]), int(conv1.shape[0] // conv1.shape[1])
            kernel = int(conv2.tensors()["weight"].shape[-1])
            cards.append(int(conv2.state.get("groups", 1)))
        else:
            cards.append(1)  # no block: the stage's cardinality is never used
            width = _transition_width(tensors, transition_first, widths[-1] if widths else None)
        widths.append(width)
        blocks.append(len(residual))
        if stage.state.get("DataType") == torch.bfloat16:
            bf16.append(i)
        if "Resampler" in (transition.state.get("_modules") or {}):
            kernel_buffer = transition.child("Resampler").state.get("_buffers", {}).get("Kernel")
            if kernel_buffer is not None and not torch.allclose(kernel_buffer.float(),
                                                                fir_kernel(lowpass_taps((1, 2, 1)))):
                raise ConvertError("R3GAN: a resampling filter other than the official [1, 2, 1] is not supported")
    return {"widths": widths, "cardinalities": cards, "blocks": blocks, "expansion": expansion or 2,
            "kernel_size": kernel or 3, "bf16_stages": bf16}


def _transition_width(tensors: dict[str, Tensor], transition_first: bool, previous: int | None) -> int:
    """A block-less stage's width, from its transition: what it makes (G) or what it takes (D)."""
    if transition_first:  # G: the basis [C, 4, 4], or the width change [C, C_prev, 1, 1], or the previous width
        weight = tensors.get("Basis", tensors.get("LinearLayer.Layer.weight"))
        return int(weight.shape[0]) if weight is not None else int(previous)
    for key, dim in (("Basis.weight", 0), ("LinearLayer.Layer.weight", 1)):  # D: [C, 1, 4, 4] or [C_next, C, 1, 1]
        if key in tensors:
            return int(tensors[key].shape[dim])
    raise ConvertError("R3GAN discriminator: a stage without blocks whose width cannot be read")


def r3gan_config(G: PersistentObject, D: PersistentObject | None) -> tuple[dict, dict | None, int, int]:
    """(model.generator config, model.discriminator config, resolution, classes) of R3GAN records."""
    g_model = G.child("Model")
    plan = _plan(g_model, transition_first=True)
    sd = G.tensors()
    embed = sd.get("Model.EmbeddingLayer.weight")
    num_classes = int(G.state.get("c_dim", 0) or 0)
    resolution = int(G.state.get("img_resolution", 4 * 2 ** (len(plan["widths"]) - 1)))
    z_dim = int(G.state.get("z_dim", 0)) or int(sd["Model.MainLayers.0.Layers.0.LinearLayer.weight"].shape[1]) - (
        int(embed.shape[0]) if embed is not None else 0)
    g_cfg = {"name": "r3gan", "z_dim": z_dim, **plan, "class_embed_dim": int(embed.shape[0]) if embed is not None else 64,
             "resample_filter": [1, 2, 1]}
    d_cfg = None
    if D is not None:
        d_plan = _plan(D.child("Model"), transition_first=False)
        n = len(d_plan["widths"])
        # This project lists a discriminator's stages from 4x4 up, like the generator's.
        d_cfg = {"name": "r3gan", **{k: d_plan[k][::-1] for k in ("widths", "cardinalities", "blocks")},
                 "expansion": d_plan["expansion"], "kernel_size": d_plan["kernel_size"],
                 "bf16_stages": sorted(n - 1 - i for i in d_plan["bf16_stages"]), "resample_filter": [1, 2, 1]}
        d_embed = D.tensors().get("Model.EmbeddingLayer.weight")
        d_cfg["class_embed_dim"] = int(d_embed.shape[0]) if d_embed is not None else None
    return g_cfg, d_cfg, resolution, num_classes


_BLOCK = r"(LinearLayer[123])\.Layer\.weight|NonLinearity([12])\.Bias"


def map_generator(sd: Tracked, cfg: dict) -> dict[str, Tensor]:
    """Official G tensors -> this project's ``R3GANGenerator`` state dict."""
    out: dict[str, Tensor] = {}
    for i, n in enumerate(cfg["blocks"]):
        prefix = f"Model.MainLayers.{i}.Layers."
        if i == 0:
            out["stages.0.transition.basis"] = sd[prefix + "0.Basis"]
            out["stages.0.transition.linear.weight"] = sd[prefix + "0.LinearLayer.weight"]
        elif prefix + "0.LinearLayer.Layer.weight" in sd:
            out[f"stages.{i}.transition.conv.weight"] = sd[prefix + "0.LinearLayer.Layer.weight"]
        for j in range(n):
            out.update(_block(sd, f"{prefix}{j + 1}.", f"stages.{i}.blocks.{j}."))
    out["to_rgb.weight"] = sd["Model.AggregationLayer.Layer.weight"]
    if "Model.EmbeddingLayer.weight" in sd:
        out["embed.weight"] = sd["Model.EmbeddingLayer.weight"]
    return out


def map_discriminator(sd: Tracked, cfg: dict) -> dict[str, Tensor]:
    """Official D tensors -> this project's ``R3GANDiscriminator`` state dict (stages from the image down)."""
    out: dict[str, Tensor] = {"from_rgb.weight": sd["Model.ExtractionLayer.Layer.weight"]}
    blocks = cfg["blocks"][::-1]
    for i, n in enumerate(blocks):
        prefix = f"Model.MainLayers.{i}.Layers."
        for j in range(n):
            out.update(_block(sd, f"{prefix}{j}.", f"stages.{i}.blocks.{j}."))
        if i == len(blocks) - 1:
            out[f"stages.{i}.transition.basis.weight"] = sd[f"{prefix}{n}.Basis.weight"]
            out[f"stages.{i}.transition.linear.weight"] = sd[f"{prefix}{n}.LinearLayer.weight"]
        elif f"{prefix}{n}.LinearLayer.Layer.weight" in sd:
            out[f"stages.{i}.transition.conv.weight"] = sd[f"{prefix}{n}.LinearLayer.Layer.weight"]
    if "Model.EmbeddingLayer.weight" in sd:
        out["embed.weight"] = sd["Model.EmbeddingLayer.weight"]
    return out


def _block(sd: Tracked, official: str, ours: str) -> dict[str, Tensor]:
    """One residual block's five tensors."""
    out = {}
    for k in range(1, 4):
        out[f"{ours}conv{k}.weight"] = sd[f"{official}LinearLayer{k}.Layer.weight"]
    for k in range(1, 3):
        out[f"{ours}act{k}.bias"] = sd[f"{official}NonLinearity{k}.Bias"]
    return out


def _convert(record: PersistentObject, build, mapping, cfg: dict, resolution: int, num_classes: int, what: str):
    sd = Tracked(record.tensors(), f"R3GAN {what}")
    net = build(cfg, img_resolution=resolution, img_channels=int(_channels(record, what)), num_classes=num_classes)
    converted = mapping(sd, cfg)
    left = sd.leftovers(ignore=("Resampler.Kernel",))
    if left:
        raise ConvertError(f"R3GAN {what}: tensors this converter does not know: {left[:6]}")
    return load_converted(net, converted, f"R3GAN {what}")


def _channels(record: PersistentObject, what: str) -> int:
    sd = record.tensors()
    weight = sd.get("Model.AggregationLayer.Layer.weight") if what != "D" else sd.get("Model.ExtractionLayer.Layer.weight")
    return int(weight.shape[0] if what != "D" else weight.shape[1])


def convert_r3gan(data: dict[str, Any]) -> Converted:
    """Networks and configs from a loaded R3GAN snapshot (G_ema preferred for G's architecture)."""
    G_record = data.get("G_ema") if is_r3gan(data.get("G_ema")) else data.get("G")
    if not is_r3gan(G_record):
        raise ConvertError("not an R3GAN snapshot: no training.networks Generator record under G_ema or G")
    D_record = data.get("D") if is_r3gan(data.get("D")) else None
    g_cfg, d_cfg, resolution, num_classes = r3gan_config(G_record, D_record)
    nets = {}
    for name in ("G", "G_ema"):
        if is_r3gan(data.get(name)):
            nets[name] = _convert(data[name], build_generator, map_generator, g_cfg, resolution, num_classes, name)
    D = _convert(D_record, build_discriminator, map_discriminator, d_cfg, resolution, num_classes, "D") \
        if D_record is not None else None
    G = nets.get("G", nets.get("G_ema"))
    return Converted(g_cfg, d_cfg or {}, resolution, num_classes, G, D, nets.get("G_ema"))
