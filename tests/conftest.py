"""Shared test setup: run from the repository root, CPU only, quiet."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root folder (tools/ and configs/ live there)."""
    return ROOT


def load_tool(name: str):
    """tools/<name>.py loaded as a module (the tools are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"transgan_tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its Accelerator from scratch: accelerate keeps one process-wide state
    (mixed precision, device) and refuses a second Accelerator that asks for another."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture
def kernels_run(monkeypatch) -> list[str]:
    """The attention kernels the dispatcher runs during the test, in call order (math, chunked, sdpa)."""
    from transgan.nn import attention

    calls: list[str] = []
    for name, function in {"math": "math_attention", "chunked": "chunked_attention", "sdpa": "_sdpa_attention"}.items():
        def spy(*args, _name=name, _original=getattr(attention, function), **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(attention, function, spy)
    return calls
