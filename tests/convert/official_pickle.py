"""Write pickles in stylegan2-ada-pytorch's snapshot format without its code, for the converter's tests.

A snapshot pickles each network as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
with ``meta = {type: 'class', version: 6, module_src, class_name, state}`` (``state`` = the
module's ``__dict__``). Here a throwaway module of that name is put into ``sys.modules`` just
while pickling, so the same opcodes come out; ``module_src`` holds whatever the test wants (the
real snapshots carry the official source, which must never be run by the converter).
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


@contextlib.contextmanager
def _official_names() -> Iterator[types.ModuleType]:
    """Temporarily register ``torch_utils.persistence`` and ``dnnlib.util`` so pickle can name them."""
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")}
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called: these pickles are only written here
        raise AssertionError("the writer's stand-in must not be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                        "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util})
    try:
        yield persistence
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class Net:
    """A network record to pickle: class name, parameters, buffers, submodules and plain attributes."""

    def __init__(self, class_name: str, params: dict[str, torch.Tensor] | None = None,
                 buffers: dict[str, torch.Tensor] | None = None, modules: dict[str, "Net"] | None = None,
                 module_src: str = "# official source is not reproduced here\n", **attrs: Any) -> None:
        self.class_name, self.module_src = class_name, module_src
        self.params, self.buffers, self.modules, self.attrs = params or {}, buffers or {}, modules or {}, attrs


def write_snapshot(path: Path, networks: dict[str, Any], protocol: int = 4) -> None:
    """Pickle ``networks`` (Net records, plain values) the way stylegan2-ada's training loop does."""
    with _official_names() as persistence:
        easydict = sys.modules["dnnlib.util"].EasyDict

        class _Pickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, Net):
                    state = {"training": False,
                             "_parameters": collections.OrderedDict(
                                 (k, torch.nn.Parameter(v.clone())) for k, v in obj.params.items()),
                             "_buffers": collections.OrderedDict((k, v.clone()) for k, v in obj.buffers.items()),
                             "_non_persistent_buffers_set": set(),
                             "_backward_hooks": collections.OrderedDict(),
                             "_forward_hooks": collections.OrderedDict(),
                             "_modules": collections.OrderedDict(obj.modules.items()),
                             # numpy scalars and EasyDicts are in every real snapshot
                             "weight_gain": np.float64(0.5), "_init_kwargs": easydict(obj.attrs)}
                    state.update(obj.attrs)
                    meta = dict(type="class", version=6, module_src=obj.module_src, class_name=obj.class_name,
                                state=state)
                    return persistence._reconstruct_persistent_obj, (meta,)
                return NotImplemented

        with open(path, "wb") as f:
            _Pickler(f, protocol=protocol).dump(networks)


BUFFERS = ("w_avg", "noise_const", "resample_filter")


def nets_from_state_dict(class_name: str, sd: dict[str, torch.Tensor], **attrs: Any) -> Net:
    """Nest a flat official state dict back into network records (names in BUFFERS are buffers)."""
    root = Net(class_name, **attrs)
    for key, value in sd.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            node = node.modules.setdefault(part, Net(part))
        (node.buffers if leaf in BUFFERS else node.params)[leaf] = value
    return root
