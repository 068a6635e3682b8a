"""Print the converters' parity on the golden fixtures: ``python -m tests.convert.parity`` (docs/reproduction.md)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from tests.convert.test_stylegan2_ada_convert import _part, _snapshot
from tests.convert.test_styleswin_convert import _io
from tests.convert.test_styleswin_convert import _official_checkpoint as _styleswin_checkpoint
from tests.convert.test_transgan_convert import _official_checkpoint, _split
from transgan.convert.stylegan2_ada import convert_stylegan2_ada
from transgan.convert.styleswin import convert_styleswin
from transgan.convert.transgan_official import convert_transgan
from transgan.convert.unpickle import load_official


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def main() -> None:
    """Convert each fixture through a checkpoint file and print max abs differences and parameter counts."""
    tmp = Path(tempfile.mkdtemp())
    conv = convert_transgan(load_official(_official_checkpoint(tmp)))
    io = _split("io.")
    with torch.no_grad():
        g = (conv.G_ema(io["z"]) - io["images"]).abs().max().item()
        d = (conv.D(io["x"]) - io["logits"].squeeze(1)).abs().max().item()
    print(f"TransGAN CIFAR-10 (reduced): G {g:.1e}  D {d:.1e}  params {_count(conv.G_ema):,} / {_count(conv.D):,}")
    for name in ("uncond", "cond"):
        conv = convert_stylegan2_ada(load_official(_snapshot(tmp, name)))
        io = _part(f"{name}.io.")
        c = io.get("labels")
        with torch.no_grad():
            g = (conv.G_ema(io["z"], c, noise_mode="const") - io["images"]).abs().max().item()
            d = (conv.D(io["x"], c) - io["logits"].squeeze(1)).abs().max().item()
        print(f"StyleGAN2-ADA 16x16 {name}: G {g:.1e}  D {d:.1e}  params {_count(conv.G_ema):,} / {_count(conv.D):,}")
    conv = convert_styleswin(load_official(_styleswin_checkpoint(tmp)))
    with torch.no_grad():
        g = (conv.G_ema(_io()["z"]) - _io()["images"]).abs().max().item()
        d = (conv.D(_io()["x"]) - _io()["logits"].squeeze(1)).abs().max().item()
    print(f"StyleSwin 16x16 (reduced): G {g:.1e}  D {d:.1e}  params {_count(conv.G_ema):,} / {_count(conv.D):,}")


if __name__ == "__main__":
    main()
