"""Request batching: one worker thread runs the model on images gathered from every waiting request.

Requests are :class:`Job` s (seeds, classes, one truncation value). The worker waits for the
first job, then (when it was idle) up to ``window_s`` for more, and takes images from the waiting jobs one at a
time in turn (round robin) until ``max_batch`` images are taken: each job gets a slice, so a
64-image request shares every model call with the small ones behind it instead of holding the
model for its whole length. Images of the same truncation value go into one ``sample`` call
(truncation is per call); each job's images are put back in its order and its future is set
when its last slice is done.

An image depends only on its (seed, class, truncation): the latent comes from its own seeded
stream and the generator runs in eval mode, so a gathered batch gives the same pictures as
one request at a time (tests/serve/test_batching.py checks this pixel for pixel).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from transgan.eval.generate import sample

Sampler = Callable[[nn.Module, Sequence[int], Sequence[Optional[int]], Optional[float]], torch.Tensor]


@dataclass
class Job:
    """One request's images: image i is (seeds[i], classes[i]) at ``truncation``."""

    seeds: list[int]
    classes: list[Optional[int]]
    truncation: Optional[float]
    future: Future = field(default_factory=Future)
    taken: int = 0  # images handed to the model so far
    parts: dict[int, torch.Tensor] = field(default_factory=dict)  # first index -> images of that slice

    @property
    def remaining(self) -> int:
        """Images not yet handed to the model."""
        return len(self.seeds) - self.taken


@dataclass
class BatchStats:
    """What the worker did: model calls and images (the load test and the tests read these)."""

    calls: int = 0
    images: int = 0
    largest_call: int = 0
    busy_s: float = 0.0  # wall time inside the model


class Batcher:
    """The model's only caller: gathers images of waiting jobs into calls of at most ``max_batch`` images.

    ``max_batch=1`` with ``window_s=0`` is the unbatched path: one model call per image, jobs in
    turn (used by the load test as the baseline).
    """

    def __init__(self, G: nn.Module, max_batch: int = 16, window_s: float = 0.004, sampler: Sampler = sample) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"max_batch must be >= 1 and window_s >= 0, got {max_batch}, {window_s}")
        self.G, self.max_batch, self.window_s, self.sampler = G, max_batch, window_s, sampler
        self.stats = BatchStats()
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="transgan-batcher", daemon=True)
        self._thread.start()

    def submit(self, seeds: Sequence[int], classes: Sequence[Optional[int]], truncation: Optional[float]) -> Future:
        """Queue a job; its future gives images [len(seeds), C, H, W] in [-1, 1] (or the model's exception)."""
        if len(seeds) != len(classes):
            raise ValueError(f"{len(seeds)} seeds but {len(classes)} classes")
        job = Job(list(seeds), list(classes), truncation)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the queued jobs, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _waiting_images(self) -> int:
        return sum(job.remaining for job in self._jobs)

    def _take(self) -> list[tuple[Job, int, int]]:
        """Slices (job, start, stop) for one round: one image per job in turn until max_batch (lock held)."""
        # A job whose earlier slice failed is already answered: drop the rest of it.
        self._jobs = deque(j for j in self._jobs if not j.future.done())
        counts = [0] * len(self._jobs)
        left, progress = self.max_batch, True
        while left and progress:
            progress = False
            for k, job in enumerate(self._jobs):
                if left and counts[k] < job.remaining:
                    counts[k] += 1
                    left -= 1
                    progress = True
        slices = []
        for job, n in zip(self._jobs, counts):
            if n:
                slices.append((job, job.taken, job.taken + n))
                job.taken += n
        # Jobs that got a slice go behind the ones that did not (only possible when max_batch < jobs).
        served = {id(job) for job, _, _ in slices}
        self._jobs = deque([j for j in self._jobs if id(j) not in served and j.remaining]
                           + [j for j in self._jobs if id(j) in served and j.remaining])
        return slices

    def _work(self) -> None:
        while True:
            with self._cond:
                idle = not self._jobs
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                if idle:
                    # The first request after a quiet spell: a short wait lets concurrent ones share this call.
                    # Requests that queued while the model was busy have waited already: they go at once.
                    deadline = time.monotonic() + self.window_s
                    while self._waiting_images() < self.max_batch and (wait := deadline - time.monotonic()) > 0:
                        self._cond.wait(wait)
                slices = self._take()
            self._run(slices)

    def _run(self, slices: list[tuple[Job, int, int]]) -> None:
        """One model call per truncation value among the slices; finished jobs get their images."""
        groups: dict[Optional[float], list[tuple[Job, int, int]]] = {}
        for s in slices:
            groups.setdefault(s[0].truncation, []).append(s)
        for truncation, group in groups.items():
            seeds = [seed for job, a, b in group for seed in job.seeds[a:b]]
            classes = [c for job, a, b in group for c in job.classes[a:b]]
            start = time.perf_counter()
            try:
                images = self.sampler(self.G, seeds, classes, truncation)
            except Exception as e:  # the model's failure is each job's, not the worker's
                for job, _, _ in group:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            finally:
                self.stats.busy_s += time.perf_counter() - start
            self.stats.calls += 1
            self.stats.images += len(seeds)
            self.stats.largest_call = max(self.stats.largest_call, len(seeds))
            offset = 0
            for job, a, b in group:
                job.parts[a] = images[offset:offset + b - a]
                offset += b - a
                done = sum(len(p) for p in job.parts.values())
                if done == len(job.seeds) and not job.future.done():
                    job.future.set_result(torch.cat([job.parts[k] for k in sorted(job.parts)]))
                    job.parts = {}
