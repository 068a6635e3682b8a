"""The trainer is handed its metrics: nothing under transgan/train imports transgan.eval."""

from __future__ import annotations

import ast
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[2] / "transgan" / "train"


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (function bodies included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_train_package_imports_no_evaluation_code():
    files = sorted(TRAIN.glob("*.py"))
    assert any(f.name == "trainer.py" for f in files)
    offenders = {f.name: sorted(m for m in imported_modules(f) if m == "transgan.eval" or m.startswith("transgan.eval."))
                 for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}
