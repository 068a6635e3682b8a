"""Parameter counts and FLOPs per image of a model preset's generator and discriminator.

    python tools/model_stats.py model=transgan_32 dataset.channels=3 dataset.conditional=false
    python tools/model_stats.py model=swin_gan --classes 10 --json

Arguments are the Hydra overrides of tools/train.py (the same configs compose). The class count
is the trainer's: 0 unless ``dataset.conditional``, else the dataset's (read from the data, so
the data must be there; ``--classes N`` sets it without data). ``--json`` prints one JSON object
instead of the table.

FLOPs are those of one forward pass on one image, counted by ``torch.utils.flop_counter``
(a multiply-add = 2 FLOPs; MACs = FLOPs / 2, the unit of thop-style counters). Networks are
built on the meta device, so nothing is allocated and the largest presets cost no memory;
attention runs on the ``math`` kernel so its matrix products are counted whatever kernel
a run would use. "attention" is the FLOPs of batched matmuls: the q k^T and a v products
(and any other bmm, e.g. an einsum, a backbone may run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from transgan.registry import ConfigError  # noqa: E402


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(p.numel() for p in module.parameters())


def forward_flops(module: nn.Module, *inputs: Any) -> dict[str, int]:
    """FLOPs of ``module(*inputs)``: total and the attention products (batched matmuls)."""
    from transgan.nn.attention import attention_kernel

    with attention_kernel("math"), FlopCounterMode(display=False) as counter:
        module(*inputs)
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()),
            "attention": sum(n for op, n in per_op.items() if op.startswith(("aten.bmm", "aten.baddbmm")))}


def dataset_classes(dataset_cfg: Any, resolution: int) -> int:
    """Classes the trainer would condition on: 0 unless ``dataset.conditional``, else the dataset's count."""
    if not dataset_cfg.get("conditional", False):
        return 0
    from transgan.data import build_dataset

    try:
        return int(build_dataset(dataset_cfg, resolution=resolution).num_classes)
    except ConfigError as e:  # e.g. the data is not on this machine
        raise ConfigError(f"cannot count the classes of the conditional dataset ({e}); pass --classes N") from e


def model_stats(overrides: Sequence[str], num_classes: Optional[int] = None) -> dict[str, Any]:
    """Compose the run config from ``overrides``, build G and D (meta device) and measure them."""
    from transgan.registry import build_discriminator, build_generator
    from transgan.train.config import compose_config

    cfg, _ = compose_config(list(overrides))
    resolution, channels = int(cfg.model.resolution), int(cfg.dataset.channels)
    if num_classes is None:
        num_classes = dataset_classes(cfg.dataset, resolution)
    if num_classes < 0:
        raise ConfigError(f"--classes must be >= 0, got {num_classes}")
    shape = dict(img_resolution=resolution, img_channels=channels, num_classes=num_classes)
    with torch.device("meta"):
        # requires_grad_(False) rather than no_grad(): the FLOP counter's module tracker hooks
        # tensors that need gradients, and no_grad() leaves some of those without a grad_fn.
        G = build_generator(cfg.model.generator, **shape).eval().requires_grad_(False)
        D = build_discriminator(cfg.model.discriminator, **shape).eval().requires_grad_(False)
        c = torch.zeros(1, dtype=torch.long) if num_classes else None
        g_flops = forward_flops(G, torch.zeros(1, G.z_dim), c)
        d_flops = forward_flops(D, torch.zeros(1, channels, resolution, resolution), c)
    out: dict[str, Any] = {"resolution": resolution, "channels": channels, "num_classes": num_classes}
    for key, net, flops, name in (("generator", G, g_flops, cfg.model.generator.name),
                                  ("discriminator", D, d_flops, cfg.model.discriminator.name)):
        entry = {"name": str(name), "parameters": count_parameters(net), "flops_per_image": flops["total"],
                 "attention_flops_per_image": flops["attention"]}
        plan = getattr(net, "stages_plan", None)
        if plan is not None:  # backbones that describe their stages (e.g. transgan) get them listed
            entry["stages"] = [{"resolution": s.resolution, "dim": s.dim, "depth": s.depth, "heads": s.num_heads,
                                "attention": s.attention, "window": s.window} for s in plan]
        out[key] = entry
    return out


def format_stats(stats: dict[str, Any]) -> str:
    """The human-readable table of :func:`model_stats`."""
    lines = [f"resolution {stats['resolution']}, {stats['channels']} channels, {stats['num_classes']} classes",
             f"{'':<14} {'name':<20} {'parameters':>14} {'GFLOPs/image':>13} {'attention':>10} {'GMACs/image':>12}"]
    for key in ("generator", "discriminator"):
        e = stats[key]
        lines.append(f"{key:<14} {e['name']:<20} {e['parameters']:>14,} {e['flops_per_image'] / 1e9:>13.3f} "
                     f"{e['attention_flops_per_image'] / 1e9:>10.3f} {e['flops_per_image'] / 2e9:>12.3f}")
    for key in ("generator", "discriminator"):
        for i, s in enumerate(stats[key].get("stages", [])):
            where = f"  {key[0].upper()} stage {i + 1}: {s['resolution']}x{s['resolution']} x {s['dim']}, "
            if not s["depth"]:
                lines.append(where + "no blocks")
                continue
            cells = f" in {s['window']}x{s['window']} cells" if s["attention"] == "grid" else ""
            blocks = f"{s['depth']} block{'s' if s['depth'] > 1 else ''}"
            heads = f"{s['heads']} head{'s' if s['heads'] > 1 else ''}"
            lines.append(where + f"{blocks}, {heads}, {s['attention']} attention{cells}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Print the stats of the composed model; exit status 2 on a bad configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=None, help="class count (default: from the dataset config)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for tools/train.py")
    args = parser.parse_intermixed_args(list(argv))
    try:
        stats = model_stats(args.overrides, num_classes=args.classes)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
