"""StyleSwin (microsoft/StyleSwin) checkpoints into this project's ``swin_gan`` generator.

A checkpoint of ``train_styleswin.py`` is a ``torch.save`` dict with ``g``, ``g_ema``, ``d``,
optimizer states and the run's ``args`` (an ``argparse.Namespace``, which the weights-only
loader is allowed to rebuild as plain data). The generator's architecture is read from the
tensor shapes and built with ``to_rgb=upsampled`` and ``resample=fir`` (the official to-RGB
placement and skip-image filter); the discriminator as ``styleswin`` (models/swin.py
StyleSwinDiscriminator: the official widths, plain wavelet blocks, spectral norm with the
stored power-iteration vectors).

Mapped: mapping ``style.{i}`` -> ``mapping.layers``; the constant; per block the AdaIN affine
(rows [gamma; beta] -> scale, shift), the shared qkv / proj, the two halves' relative position
tables (concatenated along heads: regular windows first), the MLP; the upsampling's norm,
reduction and SPE gain; to-RGB 1x1 conv and its separate bias. StyleSwin keeps no w average:
``w_avg`` stays 0. The mapping's ``--lr_mlp`` (which scales its forward pass but leaves no trace in
the weights) is read from the stored ``args``; arguments the weights also tell (size, style_dim,
n_mlp) must agree with them, and an argument train_styleswin.py does not have is refused.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Mapping

import torch
from torch import Tensor

from transgan.convert.common import Converted, Tracked, load_converted
from transgan.convert.unpickle import ConvertError
from transgan.registry import build_discriminator, build_generator

__all__ = ["generator_config", "map_generator", "discriminator_config", "map_discriminator", "stored_args",
           "convert_styleswin"]

log = logging.getLogger("transgan.convert")

_IGNORED = ("relative_position_index", "attn_mask", "_float_tensor", "upsample.kernel")

# train_styleswin.py's arguments (microsoft/StyleSwin @ a7c28b3: its parser and what it sets after
# parsing). An ``args`` with any other attribute comes from code this converter does not know, which
# may build another network: refused, naming it.
_NETWORK_ARGS = frozenset({"size", "style_dim", "n_mlp", "G_channel_multiplier", "D_channel_multiplier", "D_sn",
                           "lr_mlp", "enable_full_resolution", "mlp_ratio", "use_checkpoint", "start_dim"})
_TRAINING_ARGS = frozenset({
    "path", "iter", "batch", "r1", "d_reg_every", "ckpt", "G_lr", "D_lr", "beta1", "beta2", "local_rank", "print_freq",
    "save_freq", "eval_freq", "workers", "checkpoint_path", "sample_path", "start_iter", "tf_log", "gan_weight",
    "val_num_batches", "val_batch_size", "ttur", "eval", "eval_iters", "eval_gt_path", "bcr", "bcr_fake_lambda",
    "bcr_real_lambda", "auto_resume", "lmdb", "use_flip", "wandb", "project_name", "lr_decay", "lr_decay_start_steps",
    "distributed", "latent", "g_reg_every"})
LR_MLP_DEFAULT = 0.01  # --lr_mlp's default


def stored_args(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``args`` (train_styleswin.py's namespace) as a dict; unknown attributes are refused."""
    args = checkpoint.get("args")
    if args is None:
        return {}
    values = dict(args) if isinstance(args, Mapping) else dict(getattr(args, "__dict__", {}))
    unknown = sorted(set(values) - _NETWORK_ARGS - _TRAINING_ARGS)
    if unknown:
        raise ConvertError(f"StyleSwin checkpoint: its args hold {unknown}, which train_styleswin.py (a7c28b3) "
                           f"does not have; they may change the network, so it is not converted")
    return values


def _check_args(args: Mapping[str, Any], cfg: Mapping[str, Any], resolution: int) -> None:
    """The stored arguments that the tensors also say must agree with them."""
    told = {"size": (args.get("size"), resolution), "style_dim": (args.get("style_dim"), cfg["w_dim"]),
            "n_mlp": (args.get("n_mlp"), cfg["mapping_layers"])}
    wrong = [f"{k}={a!r} (the weights say {t!r})" for k, (a, t) in told.items() if a is not None and a != t]
    if wrong:
        raise ConvertError(f"StyleSwin checkpoint: its args do not fit its weights: {', '.join(wrong)}")


def _stages(sd: Mapping[str, Tensor]) -> int:
    return len({m.group(1) for k in sd for m in [re.match(r"layers\.(\d+)\.", k)] if m})


def generator_config(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int]:
    """(model.generator config, resolution) for an official StyleSwin generator state dict."""
    if "input.input" not in sd or "style.1.weight" not in sd:
        raise ConvertError(f"not a StyleSwin generator state dict: no input.input / style.1 "
                           f"(keys {sorted(sd)[:6]} ...)")
    n = _stages(sd)
    resolution = 4 * 2 ** (n - 1)
    channels = {4 * 2 ** i: int(sd[f"layers.{i}.blocks.0.qkv.weight"].shape[1]) for i in range(n)}
    channel_max = max(channels.values())
    below = [c * r for r, c in channels.items() if c < channel_max]
    channel_base = min(below) if below else channel_max * resolution
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise ConvertError(f"StyleSwin generator: channels per resolution {channels} do not follow "
                           f"min(channel_base / r, channel_max)")
    windows = [math.isqrt(sd[f"layers.{i}.blocks.0.attn.0.relative_position_bias_table"].shape[0]) // 2 + 1
               for i in range(n)]
    heads = {r: 2 * int(sd[f"layers.{i}.blocks.0.attn.0.relative_position_bias_table"].shape[1])
             for i, r in enumerate(channels)}
    if any(h != max(channels[r] // 32, 4) for r, h in heads.items()):
        raise ConvertError(f"StyleSwin generator: heads per stage {heads} are not max(C / 32, 4)")
    depth = len({m.group(1) for k in sd for m in [re.match(r"layers\.0\.blocks\.(\d+)\.", k)] if m})
    w_dim = int(sd["style.1.weight"].shape[0])
    cfg = {"name": "swin_gan", "z_dim": int(sd["style.1.weight"].shape[1]), "w_dim": w_dim,
           "mapping_layers": len({m.group(1) for k in sd for m in [re.match(r"style\.(\d+)\.", k)] if m}),
           "mapping_lr_multiplier": LR_MLP_DEFAULT,  # --lr_mlp is not in the weights: from args (convert_styleswin)
           "w_avg_beta": 0.995, "embed_dim": None, "channel_base": channel_base, "channel_max": channel_max,
           "window": max(windows), "head_dim": 32, "min_heads": 4, "depth": depth,
           "mlp_ratio": sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / channels[4],
           "qkv_bias": "layers.0.blocks.0.qkv.bias" in sd, "spe": "layers.0.upsample.alpha" in sd,
           "gradient_checkpointing": False, "attention_kernel": None, "adain_scale_init": 0.0,
           "to_rgb": "upsampled", "resample": "fir", "shift_mask": "swin"}
    return cfg, resolution


def map_generator(sd_in: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official StyleSwin generator tensors -> this project's SwinGenerator state dict."""
    sd = Tracked(sd_in, "StyleSwin generator")
    cfg, _ = generator_config(sd_in)
    const = sd["input.input"]
    out = {"const": const[0].permute(1, 2, 0).reshape(-1, const.shape[1])}  # [1, C, 4, 4] -> 16 tokens
    for i in range(cfg["mapping_layers"]):
        out[f"mapping.layers.{i}.weight"], out[f"mapping.layers.{i}.bias"] = sd[f"style.{i + 1}.weight"], sd[
            f"style.{i + 1}.bias"]
    out["mapping.w_avg"] = sd_in["style.1.weight"].new_zeros(1, cfg["w_dim"])
    for s in range(_stages(sd)):
        for b in range(cfg["depth"]):
            src, dst = f"layers.{s}.blocks.{b}.", f"stages.{s}.blocks.{b}."
            for norm in ("norm1", "norm2"):
                w, bias = sd[f"{src}{norm}.style.weight"], sd[f"{src}{norm}.style.bias"]
                C = w.shape[0] // 2
                out[f"{dst}{norm}.style.scale.weight"], out[f"{dst}{norm}.style.shift.weight"] = w[:C], w[C:]
                out[f"{dst}{norm}.style.scale.bias"], out[f"{dst}{norm}.style.shift.bias"] = bias[:C], bias[C:]
            for p in ("weight", "bias"):
                out[f"{dst}attn.attn.proj.{p}"] = sd[f"{src}proj.{p}"]
                out[f"{dst}mlp.fc1.{p}"], out[f"{dst}mlp.fc2.{p}"] = sd[f"{src}mlp.fc1.{p}"], sd[f"{src}mlp.fc2.{p}"]
                if f"{src}qkv.{p}" in sd:
                    out[f"{dst}attn.attn.qkv.{p}"] = sd[f"{src}qkv.{p}"]
            # One table for all heads here: the regular-window half's heads first, then the shifted half's.
            out[f"{dst}attn.rel_pos.table"] = torch.cat([sd[f"{src}attn.0.relative_position_bias_table"],
                                                         sd[f"{src}attn.1.relative_position_bias_table"]], dim=1)
        if f"layers.{s}.upsample.norm.weight" in sd:
            up, dst = f"layers.{s}.upsample.", f"stages.{s}.upsample."
            out[dst + "norm.weight"], out[dst + "norm.bias"] = sd[up + "norm.weight"], sd[up + "norm.bias"]
            out[dst + "reduction.weight"] = sd[up + "reduction.weight"]
            if cfg["spe"]:
                out[dst + "spe_gain"] = sd[up + "alpha"].reshape(())
        rgb = f"to_rgbs.{s}."
        out[f"stages.{s}.to_rgb.weight"] = sd[rgb + "conv.weight"].flatten(1)
        out[f"stages.{s}.to_rgb.bias"] = sd[rgb + "conv.bias"]
        out[f"stages.{s}.rgb_bias"] = sd[rgb + "bias"].flatten()
    left = sd.leftovers(_IGNORED)
    if left:
        raise ConvertError(f"StyleSwin generator: tensors this converter does not know: {left[:6]}")
    return out


def discriminator_config(sd: Mapping[str, Tensor]) -> tuple[dict[str, Any], int]:
    """(model.discriminator config, resolution) for an official StyleSwin discriminator state dict."""
    sn = "final_conv.0.weight_orig" in sd
    suffix = "weight_orig" if sn else "weight"
    if f"final_conv.0.{suffix}" not in sd or f"from_rgbs.0.conv.0.{suffix}" not in sd:
        raise ConvertError(f"not a StyleSwin discriminator state dict: no final_conv / from_rgbs "
                           f"(keys {sorted(sd)[:6]} ...)")
    levels = len({m.group(1) for k in sd for m in [re.match(r"convs\.(\d+)\.", k)] if m})
    resolution = 2 ** (levels + 3)
    widths = {resolution: int(sd[f"from_rgbs.0.conv.0.{suffix}"].shape[0])}
    for i in range(levels):  # level i on a (R/2^(i+1))-map ends at channels[R/2^(i+2)]
        widths[resolution // 2 ** (i + 2)] = int(sd[f"convs.{i}.conv2.1.{suffix}"].shape[0])
    channel_max = max(widths.values())
    below = [c * r for r, c in widths.items() if c < channel_max]
    channel_base = min(below) if below else channel_max * resolution
    mbstd = int(sd[f"final_conv.0.{suffix}"].shape[1]) - int(sd[f"final_conv.0.{suffix}"].shape[0])
    cfg = {"name": "styleswin", "channel_base": channel_base, "channel_max": channel_max, "mbstd_group_size": 4,
           "mbstd_channels": mbstd, "spectral_norm": sn}
    return cfg, resolution


def _layer(sd: Tracked, src: str, dst: str, out: dict[str, Tensor], sn: bool) -> None:
    """One official conv / linear (spectrally normalized or equalized) into this project's equalized layer."""
    if sn:
        out[dst + "parametrizations.weight.original"] = sd[src + "weight_orig"]
        out[dst + "parametrizations.weight.0._u"] = sd[src + "weight_u"]
        out[dst + "parametrizations.weight.0._v"] = sd[src + "weight_v"]
    else:
        out[dst + "weight"] = sd[src + "weight"]


def map_discriminator(sd_in: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official StyleSwin discriminator tensors -> this project's StyleSwinDiscriminator state dict.

    An official conv layer is a conv without bias followed by a biased activation; here one
    equalized conv with that bias. The first linear with spectral norm keeps both its biases.
    """
    sd = Tracked(sd_in, "StyleSwin discriminator")
    cfg, _ = discriminator_config(sd_in)
    sn, out = cfg["spectral_norm"], {}
    levels = len({m.group(1) for k in sd for m in [re.match(r"convs\.(\d+)\.", k)] if m})
    for i in range(levels + 1):
        _layer(sd, f"from_rgbs.{i}.conv.0.", f"from_rgbs.{i}.", out, sn)
        out[f"from_rgbs.{i}.bias"] = sd[f"from_rgbs.{i}.conv.1.bias"]
    for i in range(levels):
        _layer(sd, f"convs.{i}.conv1.0.", f"blocks.{i}.0.", out, sn)
        out[f"blocks.{i}.0.bias"] = sd[f"convs.{i}.conv1.1.bias"]
        _layer(sd, f"convs.{i}.conv2.1.", f"blocks.{i}.1.", out, sn)
        out[f"blocks.{i}.1.bias"] = sd[f"convs.{i}.conv2.2.bias"]
    _layer(sd, "final_conv.0.", "final_conv.", out, sn)
    out["final_conv.bias"] = sd["final_conv.1.bias"]
    _layer(sd, "final_linear.0.", "fc.", out, sn)
    out["fc.bias"] = sd["final_linear.0.bias"]
    last = "final_linear.2." if sn else "final_linear.1."
    if sn:
        out["fc_act_bias"] = sd["final_linear.1.bias"]
    _layer(sd, last, "out.", out, sn)
    out["out.bias"] = sd[last + "bias"]
    left = sd.leftovers(("kernel", ".ll", ".lh", ".hl", ".hh"))
    if left:
        raise ConvertError(f"StyleSwin discriminator: tensors this converter does not know: {left[:6]}")
    return out


def convert_styleswin(checkpoint: Mapping[str, Any]) -> Converted:
    """Build and load G and G_ema from an official StyleSwin checkpoint dict (``g``, ``g_ema``)."""
    if not isinstance(checkpoint, Mapping) or not any(k in checkpoint for k in ("g_ema", "g")):
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ConvertError(f"not a StyleSwin checkpoint: expected g / g_ema state dicts, found {keys}")
    cfg, res = generator_config(checkpoint.get("g_ema") or checkpoint["g"])
    args = stored_args(checkpoint)
    _check_args(args, cfg, res)
    if "lr_mlp" in args:
        cfg["mapping_lr_multiplier"] = float(args["lr_mlp"])  # scales the mapping's forward pass
    else:
        log.warning("StyleSwin checkpoint without args.lr_mlp: assuming %s (train_styleswin.py's default)",
                    LR_MLP_DEFAULT)
    nets = {name: load_converted(build_generator(cfg, res, 3, 0), map_generator(checkpoint[key]), f"StyleSwin {name}")
            for key, name in (("g", "G"), ("g_ema", "G_ema")) if checkpoint.get(key) is not None}
    d_cfg, D = {}, None
    if checkpoint.get("d"):
        d_cfg, d_res = discriminator_config(checkpoint["d"])
        if d_res != res:
            raise ConvertError(f"StyleSwin checkpoint: G makes {res}x{res} images, D reads {d_res}x{d_res}")
        D = load_converted(build_discriminator(d_cfg, res, 3, 0), map_discriminator(checkpoint["d"]), "StyleSwin D")
    return Converted(cfg, d_cfg, res, 0, nets.get("G") or nets["G_ema"], D, nets.get("G_ema"))
