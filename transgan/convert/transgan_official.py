"""TransGAN (VITA-Group/TransGAN) checkpoints into this project's ``transgan`` models.

The public CIFAR-10 run (exps/cifar_train.py) pairs ``models_search/ViT_custom_rp.Generator``
with ``ViT_custom_scale2_rp_noise.Discriminator``; its checkpoint (``train_derived.py``) is a
dict with ``gen_state_dict``, ``dis_state_dict`` and ``avg_gen_state_dict`` (the EMA generator),
each possibly with DistributedDataParallel's ``module.`` prefix. The architecture is read from
the tensors' shapes, so any width and depth of that pair converts; the output is linear (no
tanh) and the discriminator has per-attention noise, both set as options of the models here.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch import Tensor
from timm.models.swin_transformer import get_relative_position_index

from transgan.convert.common import Converted, Tracked, load_converted
from transgan.convert.unpickle import ConvertError
from transgan.registry import build_discriminator, build_generator

__all__ = ["generator_config", "discriminator_config", "map_generator", "map_discriminator",
           "convert_transgan", "strip_module_prefix"]

# Renames inside one official transformer block (Block / DisBlock) -> TransformerBlock here.
_BLOCK = {
    "norm1.norm.weight": "norm1.weight", "norm1.norm.bias": "norm1.bias",
    "norm2.norm.weight": "norm2.weight", "norm2.norm.bias": "norm2.bias",
    "attn.qkv.weight": "{attn}.qkv.weight", "attn.qkv.bias": "{attn}.qkv.bias",
    "attn.proj.weight": "{attn}.proj.weight", "attn.proj.bias": "{attn}.proj.bias",
    "attn.relative_position_bias_table": "attn.rel_pos.table",
    "attn.noise_strength_1": "noise_strength",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}


def strip_module_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop DistributedDataParallel's ``module.`` prefix from every key that has it."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _count(sd: Mapping[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def _need(sd: Mapping[str, Tensor], key: str, what: str) -> Tensor:
    if key not in sd:
        raise ConvertError(f"not a TransGAN {what} state dict: it has no {key!r} (keys: {sorted(sd)[:8]} ...)")
    return sd[key]


def _block_options(sd: Mapping[str, Tensor], prefix: str, what: str) -> dict[str, Any]:
    """Heads, MLP ratio, qkv bias and norm of the block at ``prefix`` (all blocks share them)."""
    qkv = _need(sd, f"{prefix}attn.qkv.weight", what)
    dim = qkv.shape[1]
    table = sd.get(f"{prefix}attn.relative_position_bias_table")
    if table is None:
        raise ConvertError(f"{what}: block {prefix!r} has no relative position table, so its number of heads is "
                           f"unknown (only the *_rp models are supported)")
    if f"{prefix}norm1.norm.weight" not in sd:
        raise ConvertError(f"{what}: only LayerNorm blocks (g_norm/d_norm=ln) are supported")
    return {"num_heads": int(table.shape[1]), "mlp_ratio": sd[f"{prefix}mlp.fc1.weight"].shape[0] / dim,
            "qkv_bias": f"{prefix}attn.qkv.bias" in sd}


def generator_config(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int]:
    """This project's generator config (and image resolution) for an official ViT_custom_rp state dict."""
    what = "generator"
    l1 = _need(sd, "l1.weight", what)
    pos1 = _need(sd, "pos_embed_1", what)
    bottom, embed_dim = math.isqrt(pos1.shape[1]), int(pos1.shape[2])
    n_up = _count(sd, r"upsample_blocks\.(\d+)\.")
    depths = [_count(sd, r"blocks\.block\.(\d+)\.")] + [_count(sd, rf"upsample_blocks\.{j}\.block\.(\d+)\.")
                                                        for j in range(n_up)]
    if "deconv.0.weight" not in sd:
        raise ConvertError("generator: no deconv.0 output layer; only ViT_custom_rp (the CIFAR-10 generator) "
                           "is supported")
    resolution = bottom * 2 ** n_up
    cfg = {"name": "transgan", "z_dim": int(l1.shape[1]), "class_embed_dim": None, "embed_dim": embed_dim,
           "bottom_resolution": bottom, "depths": depths, **_block_options(sd, "blocks.block.0.", what),
           "upsample": "pixel_shuffle", "pos_embed": "learned", "rel_pos": True, "norm": "layer",
           "global_attention_tokens": resolution * resolution, "grid_size": 16, "drop_path": 0.0,
           "attention_kernel": None, "gradient_checkpointing": False, "output": "linear"}
    return cfg, resolution


def discriminator_config(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int]:
    """This project's discriminator config (and image resolution) for a ViT_custom_scale2_rp_noise state dict."""
    what = "discriminator"
    f1, f2 = _need(sd, "fRGB_1.weight", what), _need(sd, "fRGB_2.weight", what)
    pos1 = _need(sd, "pos_embed_1", what)
    patch = int(f1.shape[-1])
    resolution = patch * math.isqrt(pos1.shape[1])
    cfg = {"name": "transgan", "patch_size": patch, "embed_dims": [int(f1.shape[0]), int(f2.shape[0])],
           "depths": [_count(sd, r"blocks_1\.(\d+)\."), _count(sd, r"blocks_2\.(\d+)\.")],
           "last_depth": _count(sd, r"last_block\.(\d+)\."), **_block_options(sd, "blocks_1.0.", what),
           "pos_embed": "learned", "rel_pos": True, "norm": "layer",
           "global_attention_tokens": (resolution // patch) ** 2, "grid_size": 16, "drop_path": 0.0,
           "attention_kernel": None, "gradient_checkpointing": False,
           "attention_noise": "blocks_1.0.attn.noise_strength_1" in sd}
    return cfg, resolution


def _map_block(sd: Mapping[str, Tensor], src: str, dst: str, attn: str, out: dict[str, Tensor]) -> None:
    """Copy one official block at ``src`` into ``out`` at ``dst``; check the derived position index."""
    for key in [k for k in sd if k.startswith(src)]:
        value, rest = sd[key], key[len(src):]
        if rest == "attn.relative_position_index":
            w = math.isqrt(value.shape[0])
            if not torch.equal(value.view(-1).long(), get_relative_position_index(w, w).view(-1)):
                raise ConvertError(f"{key}: relative position index differs from the Swin layout used here")
            continue
        if rest not in _BLOCK:
            raise ConvertError(f"unexpected tensor {key!r} in a TransGAN block")
        out[dst + _BLOCK[rest].format(attn=attn)] = value


def map_generator(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official ViT_custom_rp generator tensors -> this project's TransGANGenerator state dict."""
    sd = Tracked(strip_module_prefix(sd), "TransGAN")
    cfg, _ = generator_config(sd)
    out = {"to_tokens.weight": sd["l1.weight"], "to_tokens.bias": sd["l1.bias"],
           "to_image.weight": sd["deconv.0.weight"], "to_image.bias": sd["deconv.0.bias"]}
    for i in range(len(cfg["depths"])):
        out[f"pos_embeds.{i}.embedding"] = _need(sd, f"pos_embed_{i + 1}", "generator")[0]
        src = "blocks.block." if i == 0 else f"upsample_blocks.{i - 1}.block."
        for b in range(cfg["depths"][i]):
            _map_block(sd, f"{src}{b}.", f"stages.{i}.{b}.", "attn.attn", out)
    _check_all_used(sd, out, "generator", ignore=("relative_position_index",))
    return out


def map_discriminator(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official ViT_custom_scale2_rp_noise discriminator tensors -> this project's TransGANDiscriminator."""
    sd = Tracked(strip_module_prefix(sd), "TransGAN")
    cfg, _ = discriminator_config(sd)
    out = {"cls_token": sd["cls_token"], "norm.weight": _need(sd, "norm.norm.weight", "discriminator"),
           "norm.bias": sd["norm.norm.bias"], "head.weight": sd["head.weight"], "head.bias": sd["head.bias"]}
    for s in range(2):
        out[f"patch_embeds.{s}.weight"] = sd[f"fRGB_{s + 1}.weight"]
        out[f"patch_embeds.{s}.bias"] = sd[f"fRGB_{s + 1}.bias"]
        out[f"pos_embeds.{s}.embedding"] = sd[f"pos_embed_{s + 1}"][0]
        for b in range(cfg["depths"][s]):
            _map_block(sd, f"blocks_{s + 1}.{b}.", f"stages.{s}.{b}.", "attn.attn", out)
    for b in range(cfg["last_depth"]):
        _map_block(sd, f"last_block.{b}.", f"last_blocks.{b}.", "attn", out)
    _check_all_used(sd, out, "discriminator", ignore=("relative_position_index", "Hz_fbank", "Hz_geom"))
    return out


def _check_all_used(sd: Tracked, out: Mapping[str, Tensor], what: str, ignore: tuple[str, ...]) -> None:
    left = sd.leftovers(ignore)
    if left:
        raise ConvertError(f"TransGAN {what}: tensors this converter does not know: {left[:6]}"
                           f"{' ...' if len(left) > 6 else ''}")


def convert_transgan(checkpoint: Mapping[str, Any]) -> Converted:
    """Build and load G, D and G_ema from an official TransGAN checkpoint dict (train_derived.py layout)."""
    if not isinstance(checkpoint, Mapping) or not any(
            k in checkpoint for k in ("gen_state_dict", "avg_gen_state_dict")):
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ConvertError(f"not a TransGAN checkpoint: expected gen_state_dict / avg_gen_state_dict / "
                           f"dis_state_dict, found {keys}")
    g_src = checkpoint.get("gen_state_dict") or checkpoint["avg_gen_state_dict"]
    g_cfg, res = generator_config(strip_module_prefix(g_src))
    nets: dict[str, nn.Module | None] = {}
    for key, name in (("gen_state_dict", "G"), ("avg_gen_state_dict", "G_ema")):
        sd = checkpoint.get(key)
        nets[name] = None if sd is None else load_converted(build_generator(g_cfg, res, 3, 0), map_generator(sd),
                                                            f"TransGAN {name}")
    d_cfg: dict[str, Any] = {}
    nets["D"] = None
    if checkpoint.get("dis_state_dict") is not None:
        d_sd = strip_module_prefix(checkpoint["dis_state_dict"])
        d_cfg, d_res = discriminator_config(d_sd)
        if d_res != res:
            raise ConvertError(f"TransGAN checkpoint: G makes {res}x{res} images but D reads {d_res}x{d_res}")
        nets["D"] = load_converted(build_discriminator(d_cfg, res, 3, 0), map_discriminator(d_sd), "TransGAN D")
    G = nets["G"] or nets["G_ema"]
    return Converted(g_cfg, d_cfg, res, 0, G, nets["D"], nets["G_ema"])
