"""Faults the training loop survives: stop signals and non-finite steps.

* :class:`StopSignals` turns SIGTERM / SIGINT (pre-emption, Ctrl-C) into a request that the
  trainer honours at the next step boundary: it writes a checkpoint and returns normally. A
  second signal of the same kind while the first is pending acts as the default (kills).
* :func:`step_if_finite` takes an optimizer step only when the phase's loss and gradient
  norm are finite. On optimizers that accept ``found_inf`` (fused Adam, the default on CUDA and CPU)
  the decision stays on the device, as ``torch.amp.GradScaler`` does it, so no host-device
  sync is added; elsewhere it reads one boolean.
* :func:`restore_unless` puts back the running statistics that a skipped phase's forward
  passes moved (BatchNorm statistics, w_avg), so a NaN batch leaves no trace.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from transgan.errors import NonFiniteError  # noqa: F401  (raised here as faults.NonFiniteError)

log = logging.getLogger("transgan.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# Buffers a training-mode forward pass updates from its inputs: torch's norm layers' running
# statistics and the style mapping's w_avg. A NaN batch would otherwise poison them for good
# (G_ema copies G's w_avg and runs in eval mode).
RUNNING_BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "w_avg")


class StopSignals:
    """Context manager: while active, SIGTERM/SIGINT set :attr:`received` instead of killing."""

    def __init__(self, signals: Sequence[signal.Signals] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: Optional[str] = None  # name of the first stop signal seen
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is not None:
            # Asked twice: the user means it. Fall back to the default action (terminate).
            signal.signal(signum, self._previous.get(signal.Signals(signum), signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        log.warning("%s received: stopping after this step with a checkpoint (send it again to stop now)",
                    self.received)

    def __enter__(self) -> "StopSignals":
        # Handlers can only be installed from the main thread; elsewhere (a notebook thread,
        # a test runner's worker) the default behaviour stays and nothing is requested.
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave stopping to the main process, which ends them."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def step_if_finite(optimizer: torch.optim.Optimizer, step: Callable[[], None], finite: torch.Tensor,
                   grads: Sequence[torch.Tensor], scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """Run ``step()`` only where the 0-dim bool ``finite`` holds; otherwise change nothing.

    ``optimizer`` is the plain torch optimizer ``step`` ends up calling. With a grad scaler
    (fp16) the scaler already skips steps whose gradients are non-finite; a non-finite loss is
    made one by poisoning the gradients, so its bookkeeping (scale back-off) stays its own.
    """
    if scaler is not None and scaler.is_enabled():
        poison = torch.where(finite, 0.0, float("nan")).to(grads[0].dtype) if grads else None
        if grads:
            torch._foreach_add_(list(grads), poison)
        step()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        # Fused optimizers skip the update (and undo their step count) where found_inf is 1.
        optimizer.found_inf = (~finite).float()
        try:
            step()
        finally:
            del optimizer.found_inf
    elif bool(finite):  # one host read; on CPU nothing runs ahead of Python, so it is free
        step()


def running_buffers(*models: nn.Module) -> list[torch.Tensor]:
    """The buffers of ``models`` that a training forward updates (names in RUNNING_BUFFERS)."""
    return [b for m in models for name, b in m.named_buffers() if name.rpartition(".")[2] in RUNNING_BUFFERS]


def restore_unless(finite: torch.Tensor, tensors: Sequence[torch.Tensor], before: Sequence[torch.Tensor]) -> None:
    """In place: ``tensors[i] <- before[i]`` where the 0-dim bool ``finite`` is False; no host sync."""
    for now, old in zip(tensors, before):
        now.copy_(torch.where(finite, now, old))
