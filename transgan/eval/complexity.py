"""Parameter counts and forward FLOPs per image of a generator and discriminator; ATen operator counts.

FLOPs are those of one forward pass on one image, counted by ``torch.utils.flop_counter``
(a multiply-add = 2 FLOPs; MACs = FLOPs / 2, the unit of thop-style counters). Networks are
built on the meta device, so nothing is allocated and the largest presets cost no memory;
they are built with the ``math`` attention kernel so its matrix products are counted whatever
kernel a run would use. "attention" is the FLOPs of batched matmuls: the q k^T and a v products
(and any other bmm, e.g. an einsum, a backbone may run).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from transgan.data import build_dataset
from transgan.data.datasets import KNOWN_CLASSES
from transgan.errors import ConfigError
from transgan.registry import build_discriminator, build_generator


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched inside the block: per name, kernels (views excluded), host syncs."""

    # Calls that make the host wait for the device: .item() / bool() reads, and nonzero (its
    # output size depends on the data).
    SYNCS = ("_local_scalar_dense", "nonzero")

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.kernels, self.syncs = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        name = func._overloadpacket.__name__
        self.counts[name] += 1
        if name in self.SYNCS:
            self.syncs += 1
        elif not func.is_view and name != "_unsafe_view":  # views launch no kernel
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(p.numel() for p in module.parameters())


def forward_flops(module: nn.Module, *inputs: Any) -> dict[str, int]:
    """FLOPs of ``module(*inputs)``: total and the attention products (batched matmuls of the ``math`` kernel)."""
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()),
            "attention": sum(n for op, n in per_op.items() if op.startswith(("aten.bmm", "aten.baddbmm")))}


def dataset_classes(dataset_cfg: Any, resolution: int) -> int:
    """Classes the trainer would condition on: 0 unless ``dataset.conditional``, else the dataset's count."""
    if not dataset_cfg.get("conditional", False):
        return 0

    if dataset_cfg.get("name") in KNOWN_CLASSES:
        return KNOWN_CLASSES[dataset_cfg.get("name")]
    try:
        return int(build_dataset(dataset_cfg, resolution=resolution).num_classes)
    except ConfigError as e:  # e.g. the data is not on this machine
        raise ConfigError(f"cannot count the classes of the conditional dataset ({e}); pass --classes N") from e


def measure_models(generator: Mapping[str, Any], discriminator: Mapping[str, Any], resolution: int, channels: int,
                   num_classes: int) -> dict[str, Any]:
    """Build G and D from their configs on the meta device; return parameters and FLOPs per image of each."""
    shape = dict(img_resolution=resolution, img_channels=channels, num_classes=num_classes, attention="math")
    # Without their own kernel setting, the networks take ``attention`` (math) from the builder.
    generator, discriminator = ({k: v for k, v in dict(net).items() if k != "attention_kernel"}
                                for net in (generator, discriminator))
    with torch.device("meta"):
        # requires_grad_(False) rather than no_grad(): the FLOP counter's module tracker hooks
        # tensors that need gradients, and no_grad() leaves some of those without a grad_fn.
        G = build_generator(generator, **shape).eval().requires_grad_(False)
        D = build_discriminator(discriminator, **shape).eval().requires_grad_(False)
        c = torch.zeros(1, dtype=torch.long) if num_classes else None
        g_flops = forward_flops(G, torch.zeros(1, G.z_dim), c)
        d_flops = forward_flops(D, torch.zeros(1, channels, resolution, resolution), c)
    out: dict[str, Any] = {"resolution": resolution, "channels": channels, "num_classes": num_classes}
    for key, net, flops, name in (("generator", G, g_flops, generator["name"]),
                                  ("discriminator", D, d_flops, discriminator["name"])):
        entry = {"name": str(name), "parameters": count_parameters(net), "flops_per_image": flops["total"],
                 "attention_flops_per_image": flops["attention"]}
        plan = getattr(net, "stages_plan", None)
        if plan is not None:  # backbones that describe their stages (e.g. transgan) get them listed
            entry["stages"] = [{"resolution": s.resolution, "dim": s.dim, "depth": s.depth, "heads": s.num_heads,
                                "attention": s.attention, "window": s.window} for s in plan]
        out[key] = entry
    return out
