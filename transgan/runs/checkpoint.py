"""Checkpoints: complete training state, written atomically, loaded with ``weights_only=True``.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so
the safe unpickler loads it and nothing in it can execute code. Files are named
``checkpoints/step-<step>.pt``; a write goes to a temporary file in the same folder, is
flushed to disk and renamed, so a reader never sees a partial checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from accelerate.utils import gather_object

from transgan.errors import CheckpointError
from transgan.runs.files import atomic_write, atomic_write_text

FORMAT = "transgan-checkpoint-v1"
_NAME = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives in ``run_dir``."""
    return Path(run_dir) / "checkpoints" / f"step-{step:09d}.pt"


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file belongs to (a file outside ``checkpoints/``: its folder)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files are never listed)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run; a clear error when there is none."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"cannot resume from {run_dir}: no checkpoint in {Path(run_dir) / 'checkpoints'} "
            "(expected files named step-<9 digits>.pt written by tools/train.py)")
    return found[-1]


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` through a temporary file, fsync and rename."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with the safe unpickler; refuse anything that is not ours."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        # torch.save writes a zip archive whose directory comes last: a cut-off file has none.
        raise CheckpointError(f"cannot load checkpoint {path}: not a complete torch.save file (no zip directory "
                              f"at its end, {path.stat().st_size} bytes): truncated, or not a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a transgan checkpoint (format {FORMAT!r} expected)")
    return state


def load_resume_checkpoint(path: Path, signature: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint a run resumes from; refuse one written for other networks, saying what differs."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        older = [p for p in list_checkpoints(run_dir_of(path)) if p != Path(path)]
        hint = (f"; to continue from the previous checkpoint, move this file away (the newest older one is "
                f"{older[-1].name})" if older else "")
        raise CheckpointError(f"{e}{hint}") from e
    differences = _differences(state.get("model"), signature)
    if differences:
        raise CheckpointError(f"{path} was written for other networks than this run's: "
                              + "; ".join(differences))
    return state


def _differences(saved: Any, wanted: Any, key: str = "") -> list[str]:
    """Human-readable leaf differences between two nested dicts: 'key: a in the checkpoint, b here'."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for k in sorted(set(saved) | set(wanted), key=str):
            out += _differences(saved.get(k, "<absent>"), wanted.get(k, "<absent>"), f"{key}.{k}" if key else str(k))
        return out
    return [] if saved == wanted else [f"{key or 'model'}: {saved!r} in the checkpoint, {wanted!r} in this run"]


@contextmanager
def unfit_state_is_refused(path: Path) -> Iterator[None]:
    """Turn a state that does not fit the networks or optimizers (shapes, keys) into a CheckpointError."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} does not fit this run's networks: {type(e).__name__}: "
                              f"{str(e).strip()[:2000]}") from e


def remove_partial_writes(run_dir: Path) -> int:
    """Delete temporary files of checkpoint writes that never finished (their writer was killed)."""
    folder = Path(run_dir) / "checkpoints"
    stale = [*folder.glob(".step-*.tmp"), *folder.glob(".best.*.tmp")] if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def best_path(run_dir: Path) -> Path:
    """The best checkpoint by the run's chosen metric: ``checkpoints/best.pt`` (never pruned, not resumed from)."""
    return Path(run_dir) / "checkpoints" / "best.pt"


def save_best(state: dict[str, Any], run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``state`` as best.pt and its record (step, metric, value) as best.json beside it, each atomically."""
    save_atomic(state, best_path(run_dir))
    atomic_write_text(best_path(run_dir).with_name("best.json"), json.dumps(record) + "\n")


def read_best(run_dir: Path) -> dict[str, Any] | None:
    """The record of the run's best checkpoint (``{"step", "metric", "value"}``), or None before there is one."""
    path = best_path(run_dir).with_name("best.json")
    if not path.is_file() or not best_path(run_dir).is_file():
        return None
    return json.loads(path.read_text())


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def capture_rng_state() -> dict[str, Any]:
    """Every random number generator the training step draws from, as safe-to-load values."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every process's :func:`capture_rng_state`, in process order (a collective: all processes call it)."""
    # Object collectives cannot carry these tensors (torch 2.14 fails to unpickle them: UntypedStorage has
    # no dtype); numpy arrays travel fine, and an RNG state holds no arrays of its own to confuse.
    return [_swap_tensors_and_arrays(r) for r in gather_object([_swap_tensors_and_arrays(capture_rng_state())])]


def _swap_tensors_and_arrays(tree: Any) -> Any:
    """Tensors become numpy arrays and numpy arrays tensors, throughout a nested structure."""
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree)
    if isinstance(tree, dict):
        return {k: _swap_tensors_and_arrays(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_swap_tensors_and_arrays(v) for v in tree)
    return tree


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block (evaluation, sampling) without moving any RNG the training stream draws from."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _as_tuple(x: Any) -> Any:
    """``random.setstate`` needs tuples where serialization may have produced lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
