"""Reading other projects' checkpoints without running anything they contain.

A file is recognized by its first bytes, whatever its name, and checked against a reading budget
before anything is unpickled (:mod:`transgan.convert.limits`).

- torch.save archives (TransGAN ``.pth`` or suffix-less ``checkpoint``, StyleSwin ``.pt``): ``torch.load(weights_only=True)``, torch's own
  restricted unpickler (tensors, plain containers, numbers, strings), plus ``argparse.Namespace``
  (StyleSwin saves its arguments; a namespace only holds attributes).
- pickles (stylegan2-ada-pytorch ``.pkl`` snapshots): plain ``pickle`` files in which every network is
  a *persistent class*: the pickle calls ``torch_utils.persistence._reconstruct_persistent_obj``
  with ``meta = {type, version, module_src, class_name, state}``, where ``module_src`` is the
  source code of the module defining the class and ``state`` the module's ``__dict__``. The
  official loader executes ``module_src``. :class:`RestrictedUnpickler` maps that global to an
  inert :class:`PersistentObject` that only records ``class_name`` and ``state``, rebuilds
  tensors through torch's tensor rebuilders (storages through the weights-only loader), maps a
  short list of container types to harmless stand-ins, and refuses every other global. The
  source code is never compiled.
- pickles (R3GAN ``.pkl`` snapshots): the same snapshot dict, but the networks are plain pickled
  ``nn.Module`` objects (``training.networks.Generator`` holding ``R3GAN.Networks`` layers; the
  released files name them ``training.networks_baseline`` / ``BaselineGAN``). Pickle rebuilds such
  an object by its class name and sets its ``__dict__``; each name on a short list becomes an inert
  :class:`ModuleRecord` (the same record as above), nothing of the class is imported.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from transgan.convert.limits import PICKLE, check_archive, check_legacy_storage, check_pickle, sniff
from transgan.errors import ConvertError

__all__ = ["ConvertError", "PersistentObject", "ModuleRecord", "RestrictedUnpickler", "load_pickle", "load_torch",
           "load_official"]


@dataclass
class PersistentObject:
    """What a stylegan2-ada persistent object leaves behind here: its class name and its ``__dict__``."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)
    version: Any = None

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and buffers of this module and its submodules, keyed like ``state_dict()``."""
        out: dict[str, torch.Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if isinstance(value, torch.Tensor):
                    out[prefix + name] = value
        for name, child in (self.state.get("_modules") or {}).items():
            if isinstance(child, PersistentObject):
                out.update(child.tensors(f"{prefix}{name}."))
        return out

    def child(self, path: str) -> "PersistentObject":
        """The submodule at a dotted ``path`` (``synthesis.b4``)."""
        node: PersistentObject = self
        for part in path.split("."):
            modules = node.state.get("_modules") or {}
            if not isinstance(modules.get(part), PersistentObject):
                raise ConvertError(f"{node.class_name} has no submodule {part!r} (has {sorted(modules)})")
            node = modules[part]
        return node


class ModuleRecord(PersistentObject):
    """A plainly pickled ``nn.Module`` (R3GAN): its class name and ``__dict__``, built without its class.

    Pickle makes it with ``cls.__new__(cls)`` and fills it with ``__setstate__``; :func:`_module_record`
    gives each allowed class name its own subclass so that ``class_name`` says which it was.
    """

    class_name = ""

    def __init__(self) -> None:  # never called by pickle; for completeness
        super().__init__(type(self).class_name)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ConvertError(f"a pickled {type(self).class_name} whose state is not a dict")
        self.state, self.version = dict(state), None


# The classes whose plainly pickled instances an R3GAN snapshot holds (both namings of the official
# code), and the torch.nn containers and layers inside them: each becomes a ModuleRecord.
_R3GAN_CLASSES = {
    "Networks": ("Generator", "Discriminator", "GeneratorStage", "DiscriminatorStage", "ResidualBlock",
                 "Convolution", "UpsampleLayer", "DownsampleLayer", "GenerativeBasis", "DiscriminativeBasis"),
    "FusedOperators": ("BiasedActivationCUDA", "BiasedActivationReference"),
    "Resamplers": ("InterpolativeUpsamplerCUDA", "InterpolativeDownsamplerCUDA", "InterpolativeUpsamplerReference",
                   "InterpolativeDownsamplerReference", "InplaceUpsamplerCUDA", "InplaceDownsamplerCUDA",
                   "InplaceUpsamplerReference", "InplaceDownsamplerReference"),
}
MODULE_RECORD_NAMES = {
    *((wrapper, cls) for wrapper in ("training.networks", "training.networks_baseline")
      for cls in ("Generator", "Discriminator")),
    *((f"{package}.{module}", cls) for package in ("R3GAN", "BaselineGAN")
      for module, classes in _R3GAN_CLASSES.items() for cls in classes),
    ("torch.nn.modules.container", "ModuleList"), ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.conv", "Conv2d"), ("torch.nn.modules.linear", "Linear"),
    ("torch.nn.modules.activation", "LeakyReLU"),
}
_RECORD_CLASSES: dict[tuple[str, str], type] = {}


def _module_record(module: str, name: str) -> type:
    """The ModuleRecord subclass standing in for class ``module.name`` (one per name)."""
    key = (module, name)
    if key not in _RECORD_CLASSES:
        _RECORD_CLASSES[key] = type(f"Record_{name}", (ModuleRecord,), {"class_name": f"{module}.{name}"})
    return _RECORD_CLASSES[key]


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps data, never runs ``module_src``."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise ConvertError(f"a persistent object whose metadata is not a stylegan2-ada class record: "
                           f"{sorted(meta) if isinstance(meta, dict) else type(meta).__name__}")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise ConvertError(f"persistent object {meta['class_name']} has no state dict")
    return PersistentObject(meta["class_name"], dict(state), meta.get("version"))


class _EasyDict(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict subclass): a plain dict that tolerates BUILD."""

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD of a dict subclass with an empty __dict__
        if isinstance(state, dict):
            self.update(state)


class _DType:
    """Stand-in for ``numpy.dtype(...)`` during unpickling; resolved only for plain numeric codes."""

    _CODES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if code not in self._CODES:
            raise ConvertError(f"refusing numpy dtype {code!r} (only plain numeric scalars are allowed)")
        self.code, self.order = code, "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def resolve(self) -> np.dtype:
        """The numpy dtype it names."""
        return np.dtype((self.order if self.order in "<>" else "") + self.code)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """Stand-in for ``numpy.core.multiarray.scalar``: a Python number from its bytes."""
    if not isinstance(dtype, _DType) or not isinstance(data, bytes):
        raise ConvertError("refusing a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype=dtype.resolve(), count=1)[0].item()


def _storage_from_bytes(data: bytes) -> Any:
    """Stand-in for ``torch.storage._load_from_bytes``: the nested torch.save, checked, then read weights-only."""
    if not isinstance(data, (bytes, bytearray)):
        raise ConvertError("a tensor storage whose payload is not bytes")
    # torch pickles a storage as a pre-1.6 torch.save of it (checked: the sizes it declares are the bytes
    # that follow); a zip archive is checked like a file.
    what = "a tensor storage inside the pickle"
    if data.startswith(b"PK\x03\x04"):
        check_archive(io.BytesIO(data), what)
    else:
        check_legacy_storage(bytes(data), what)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConvertError(f"refusing a tensor storage with unsafe contents: {e}") from e


def _latin1_bytes(text: Any, encoding: Any = None) -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to spell bytes; nothing else is encoded."""
    if not isinstance(text, str) or encoding != "latin1":
        raise ConvertError(f"refusing _codecs.encode of {type(text).__name__} with {encoding!r}")
    return text.encode("latin1")


# Globals a stylegan2-ada snapshot needs, each mapped to something that only builds data.
_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol-2 pickles spell builtins the Python 2 way
    ("__builtin__", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy", "dtype"): _DType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
# A pickled Parameter's hooks argument is an OrderedDict (spelled as in Python 3's collections).
_ALLOWED.update({("torch", name): getattr(torch, name) for name in
                 ("float16", "float32", "float64", "bfloat16", "int64", "int32", "uint8", "bool", "Size")})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_ALLOWED``; any other raises :class:`ConvertError`."""

    def find_class(self, module: str, name: str) -> Any:
        """The inert stand-in for ``module.name``, or a refusal naming it."""
        if (module, name) in MODULE_RECORD_NAMES:
            return _module_record(module, name)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ConvertError(f"refusing to load: the pickle asks for {module}.{name}, which is not a tensor, "
                               f"a plain container or a stylegan2-ada network record; the file may run code "
                               f"when loaded by pickle, so it is not read any further") from None

    def persistent_load(self, pid: Any) -> Any:
        """Plain pickles have no persistent ids; a torch.save archive is read by :func:`load_torch`."""
        raise ConvertError(f"unexpected persistent id {pid!r} in a plain pickle (is this a torch.save file?)")


def load_pickle(path: Path) -> Any:
    """Unpickle a stylegan2-ada / R3GAN ``.pkl`` with :class:`RestrictedUnpickler`, after checking its opcodes
    against the reading budget (:mod:`transgan.convert.limits`); clear errors for cut or foreign files."""
    path = Path(path)
    data = path.read_bytes()
    check_pickle(data, str(path))
    try:
        # From memory: a length the file states can never make a read larger than the file.
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except ConvertError as e:
        raise ConvertError(f"{path}: {e}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            RuntimeError) as e:
        raise ConvertError(f"{path} is not a complete pickle ({len(data)} bytes; {type(e).__name__}: {e}): "
                           f"truncated or corrupt") from None


def load_torch(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a torch.save archive, after checking it against the reading
    budget, with errors that say what is wrong."""
    path = Path(path)
    check_archive(path, str(path))
    try:
        # StyleSwin checkpoints carry the run's argparse.Namespace: plain attributes, nothing callable.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"refusing to load {path}: it holds more than tensors and plain containers "
                           f"({first})") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise ConvertError(f"cannot read {path}: {type(e).__name__}: {str(e).strip()[:300]}") from None


def load_official(path: Path) -> Any:
    """Load an official checkpoint, recognized by its content (a pickle, or a torch.save archive whatever its
    name: TransGAN's ``checkpoint`` has no suffix), without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return load_pickle(path) if sniff(path) == PICKLE else load_torch(path)
