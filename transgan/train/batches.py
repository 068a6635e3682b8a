"""A resumable stream of training batches: the position is a single integer.

Epoch ``e`` visits the dataset in the order ``randperm(n, seed + e)``; the stream is the
concatenation of those epochs, so the whole data order is a function of (seed, position)
and a resumed run continues with exactly the batch an uninterrupted run would have seen.
Each process takes its own slice of every global batch.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from transgan.train.faults import ignore_stop_signals


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The dataset order of one epoch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class IndexStream:
    """Global batches of dataset indices starting at ``position`` (indices consumed so far)."""

    def __init__(self, n: int, batch_size: int, seed: int, position: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def next_batch(self) -> torch.Tensor:
        """The next global batch of indices; advances ``position``."""
        out = []
        need = self.batch_size
        while need:
            epoch, offset = divmod(self.position, self.n)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, epoch_order(self.n, self.seed, epoch)
            take = min(need, self.n - offset)
            out.append(self._order[offset:offset + take])
            self.position += take
            need -= take
        return torch.cat(out)


class _RankSlices(torch.utils.data.Sampler):
    """Batch sampler over one process's slice of each global batch (for DataLoader workers)."""

    def __init__(self, stream: IndexStream, rank: int, world: int) -> None:
        self.stream, self.rank, self.world = stream, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        per = self.stream.batch_size // self.world
        while True:
            batch = self.stream.next_batch()
            yield batch[self.rank * per:(self.rank + 1) * per].tolist()


class BatchSource:
    """Yields (images, labels) for this process, resumable from an integer position.

    In-memory datasets (with ``images``/``labels`` tensors) are indexed on the device
    directly; others go through a DataLoader with workers and pinned memory. Either way
    ``position`` counts global indices consumed by the trainer, not prefetched ones.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int, world: int,
                 device: torch.device, num_workers: int = 2, position: int = 0) -> None:
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.device, self.num_workers = rank, world, device, num_workers
        self.in_memory = isinstance(getattr(dataset, "images", None), torch.Tensor)
        if self.in_memory:
            self.images = dataset.images.to(device)
            self.labels = dataset.labels.to(device)
        self.position = position
        self._iter: Iterator | None = None

    def _start(self) -> None:
        stream = IndexStream(len(self.dataset), self.batch_size, self.seed, self.position)
        if self.in_memory:
            self._stream = stream
            return
        # Workers ignore SIGTERM/SIGINT: the main process finishes its step, checkpoints, then ends them.
        loader = DataLoader(self.dataset, batch_sampler=_RankSlices(stream, self.rank, self.world),
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=self.num_workers > 0, worker_init_fn=ignore_stop_signals)
        self._iter = iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the next global batch, on the device."""
        if self._iter is None and not hasattr(self, "_stream"):
            self._start()
        per = self.batch_size // self.world
        if self.in_memory:
            idx = self._stream.next_batch()[self.rank * per:(self.rank + 1) * per]
            if self.device.type == "cuda":
                # From pinned memory the copy is asynchronous; from pageable memory it would wait
                # for every kernel queued so far (a host-device sync per batch).
                idx = idx.pin_memory().to(self.device, non_blocking=True)
            else:
                idx = idx.to(self.device)
            x, c = self.images[idx], self.labels[idx]
        else:
            x, c = next(self._iter)
            x = x.to(self.device, non_blocking=True)
            c = torch.as_tensor(c).to(self.device, non_blocking=True)
        self.position += self.batch_size
        return x, c
