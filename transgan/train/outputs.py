"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard scalars and sample grids.

Only the main process constructs a :class:`RunWriter`; the others never touch the run
directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid, save_image


class RunWriter:
    """Appends metric records to ``metrics.jsonl`` and TensorBoard, and saves sample grids."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        # Unbuffered bytes: a record is on disk when scalars() returns, and a failed write leaves nothing buffered.
        self._metrics = open(self.run_dir / "metrics.jsonl", "ab", buffering=0)

    def scalars(self, step: int, values: Mapping[str, Any], group: str = "train") -> None:
        """Write one JSON line and the same scalars to TensorBoard under ``group/``."""
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        end = self._metrics.tell()
        try:
            self._metrics.write((json.dumps(record) + "\n").encode())
        except OSError:
            # A line that did not fit (a full disk) is taken back whole: readers never see half a record.
            self._metrics.truncate(end)
            raise
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"{group}/{key}", value, step)

    def samples(self, step: int, images: torch.Tensor, nrow: int) -> Path:
        """Save a grid of images in [-1, 1] as PNG under samples/ and to TensorBoard."""
        grid = make_grid(images.detach().float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
        path = self.run_dir / "samples" / f"step-{step:09d}.png"
        save_image(grid, path)
        self.tb.add_image("samples", grid, step)
        return path

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk."""
        self.tb.flush()

    def close(self) -> None:
        """Flush and close every file (on a full disk, as much as fits: the run's error says what failed)."""
        for closing in (self.tb.close, self._metrics.close):
            try:
                closing()
            except OSError:
                pass


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the record parseable
    return value
