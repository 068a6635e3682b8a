"""Image decoding (deterministic, per file) and random augmentation (per batch, on device)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def load_image(path: Path) -> "PIL.Image.Image":  # noqa: F821
    """Open an image file and bring any mode (16-bit, CMYK, palette, alpha) to RGB."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit gray: scale to 8 bit instead of clipping at 255 (what convert("L") does).
            a = np.asarray(im, dtype=np.float64)
            peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
            return Image.fromarray((a / peak * 255.0).round().astype(np.uint8), "L").convert("RGB")
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            # Composite on black rather than dropping alpha, so transparent regions are defined.
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")


class ImageDecoder:
    """PIL image -> float tensor [C, R, R] in [-1, 1]: optional center crop, then resize."""

    def __init__(self, resolution: int, channels: int, center_crop: Optional[int] = None) -> None:
        self.resolution, self.channels, self.center_crop = resolution, channels, center_crop

    def __call__(self, image: "PIL.Image.Image") -> Tensor:  # noqa: F821
        from torchvision.transforms import functional as TF  # deferred: torchvision takes ~1.3 s to import

        image = image.convert("RGB")
        if self.center_crop:
            image = TF.center_crop(image, [self.center_crop, self.center_crop])
        else:  # square the image by its shorter side so resizing keeps the aspect ratio
            side = min(image.size)
            image = TF.center_crop(image, [side, side])
        image = image.resize((self.resolution, self.resolution), resample=3)  # bicubic, as PIL/torchvision
        x = TF.pil_to_tensor(image).float() / 127.5 - 1.0
        return x.mean(0, keepdim=True) if self.channels == 1 else x


def random_augment(x: Tensor, hflip: bool = False, vflip: bool = False, transpose: bool = False,
                   rotate: float = 0.0) -> Tensor:
    """The seed paper's augmentations on a batch: flips, transpose (p=0.5 each), rotation U(-deg, deg).

    Uses the global torch RNG (checkpointed), so runs resume bit-for-bit. Rotation samples
    bilinearly with reflection padding, so no black corners appear in the training data.
    """
    b = x.shape[0]

    def coin() -> Tensor:
        return (torch.rand(b, device=x.device) < 0.5).view(b, 1, 1, 1)

    if transpose:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError("transpose augmentation needs square images")
        x = torch.where(coin(), x.transpose(-1, -2), x)
    if hflip:
        x = torch.where(coin(), x.flip(-1), x)
    if vflip:
        x = torch.where(coin(), x.flip(-2), x)
    if rotate:
        angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(rotate)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x
