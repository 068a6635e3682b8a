"""Pieces shared by the converters: the result type, a read-tracking state dict, loading into a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from torch import Tensor

from transgan.convert.unpickle import ConvertError
from transgan.models.common import check_finite

__all__ = ["Converted", "Tracked", "load_converted"]


@dataclass
class Converted:
    """Networks built and loaded from an official checkpoint, with the configs that rebuild them."""

    generator: dict[str, Any]       # model.generator config that rebuilds G
    discriminator: dict[str, Any]
    resolution: int
    num_classes: int
    G: nn.Module
    D: nn.Module | None
    G_ema: nn.Module | None


class Tracked(dict):
    """A state dict that remembers which keys were read, so unknown leftovers can be named."""

    def __init__(self, data: Any, what: str = "official") -> None:
        super().__init__(data)
        self.what, self.read = what, set()

    def __getitem__(self, key: str) -> Tensor:
        if key not in self:
            raise ConvertError(f"not a complete {self.what} state dict: it has no {key!r}")
        self.read.add(key)
        return super().__getitem__(key)

    def leftovers(self, ignore: tuple[str, ...]) -> list[str]:
        """Keys never read, except those containing one of ``ignore``."""
        return [k for k in self if k not in self.read and not any(i in k for i in ignore)]



def load_converted(net: nn.Module, sd: dict[str, Tensor], what: str) -> nn.Module:
    """Load a converted state dict strictly; a misfit is a ConvertError naming ``what``."""
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ConvertError(f"the converted {what} does not fit this project's model: {e}") from None
    check_finite(net, f"the checkpoint's {what}")
    return net.eval()
