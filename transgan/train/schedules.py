"""Cosine schedules of training settings over the real images seen (R3GAN's ``cosine_decay_with_warmup``)."""

from __future__ import annotations

import math


def cosine_value(images: float, start: float, end: float, total: float) -> float:
    """``start`` moving to ``end`` along half a cosine over ``total`` real images, ``end`` after them.

    value = start + (1 - (1 + cos(pi n / total)) / 2) (end - start): flat at both ends, halfway at n = total / 2.
    """
    if images >= total:
        return float(end)
    return float(start + (1 - 0.5 * (1 + math.cos(math.pi * images / total))) * (end - start))
