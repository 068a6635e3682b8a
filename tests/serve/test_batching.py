"""Request batching: concurrent requests share model calls, large ones are sliced, and every request gets
exactly the images unbatched generation gives for its seeds."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import torch

from tests.serve.test_app import call, decode, expected_pixels
from transgan.eval.generate import sample
from transgan.eval.sampling import to_uint8
from transgan.serve.app import ServeLimits, create_app
from transgan.serve.batching import Batcher
from transgan.serve.server import BackgroundServer


class Gate:
    """A sampler wrapper that records each call's (seeds, truncation) and can hold the model until opened."""

    def __init__(self, open_: bool = False) -> None:
        self.calls: list[tuple[list[int], object]] = []
        self.opened, self.entered = threading.Event(), threading.Event()
        if open_:
            self.opened.set()

    def __call__(self, G, seeds, classes, truncation):
        self.calls.append((list(seeds), truncation))
        self.entered.set()
        assert self.opened.wait(30)
        return sample(G, seeds, classes, truncation)


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_concurrent_single_image_requests_share_one_call_and_get_their_own_images(digits_model):
    limits = ServeLimits(max_count=16, max_size=128, batch_images=16, batch_window_s=0.004)
    app = create_app(digits_model, limits)
    service = app.state.service
    gate = Gate()
    service.batcher.sampler = gate
    requests = [{"class": k, "seed": 300 + 7 * k, "count": 1, "truncation": 1.5 if k % 2 else None}
                for k in range(8)]
    results: dict[int, np.ndarray] = {}
    with BackgroundServer(app) as server:
        def client(k: int) -> None:
            status, body, _ = call(server.url + "api/generate", requests[k])
            assert status == 200
            results[k] = decode(json.loads(body)["images"][0]["png"])

        first = threading.Thread(target=client, args=(0,))
        first.start()
        assert gate.entered.wait(30)  # request 0 holds the model; 1..7 queue behind it
        others = [threading.Thread(target=client, args=(k,)) for k in range(1, 8)]
        for t in others:
            t.start()
        wait_for(lambda: sum(j.remaining for j in service.batcher._jobs) == 7)
        gate.opened.set()
        for t in [first, *others]:
            t.join(60)
    # Three calls: request 0 alone, then the seven waiting ones in one call per truncation value.
    assert gate.calls[0] == ([300], None) and len(gate.calls) == 3
    assert sorted((sorted(seeds), t or 0) for seeds, t in gate.calls[1:]) == \
        [([307, 321, 335, 349], 1.5), ([314, 328, 342], 0)]
    for k, r in enumerate(requests):  # each image equals the one generated alone for its seed
        assert np.array_equal(results[k], expected_pixels(digits_model.G, [r["seed"]], [k], r["truncation"])[0])
    service.batcher.close()


def test_a_large_request_is_sliced_and_a_small_one_is_served_in_the_next_call(digits_model):
    G = digits_model.G
    gate = Gate()
    batcher = Batcher(G, max_batch=8, window_s=0.0, sampler=gate)
    try:
        warm = batcher.submit([0], [0], None)  # holds the model while the next two queue
        assert gate.entered.wait(30)
        big = batcher.submit(list(range(1000, 1040)), [k % 10 for k in range(40)], None)
        small = batcher.submit([77], [3], None)
        gate.opened.set()
        small_images = small.result(30)
        big_images = big.result(60)
        warm.result(30)
    finally:
        batcher.close()
    # The call after the held one takes 7 of the big request's images and the small one's image.
    assert sorted(gate.calls[1][0]) == [77, *range(1000, 1007)]
    assert all(len(seeds) <= 8 for seeds, _ in gate.calls) and batcher.stats.largest_call == 8
    assert batcher.stats.images == 1 + 40 + 1
    one_call = sample(G, list(range(1000, 1040)), [k % 10 for k in range(40)])
    assert torch.equal(to_uint8(big_images), to_uint8(one_call))  # same pixels as unsliced generation
    assert torch.allclose(big_images, one_call, atol=1e-5)
    assert torch.equal(to_uint8(small_images), to_uint8(sample(G, [77], [3])))


def test_a_failing_call_fails_its_jobs_and_the_worker_keeps_serving(digits_model):
    def sampler(G, seeds, classes, truncation):
        if truncation == 0.001:
            raise ValueError("bad threshold")
        return sample(G, seeds, classes, truncation)

    batcher = Batcher(digits_model.G, max_batch=4, window_s=0.0, sampler=sampler)
    try:
        failing = batcher.submit([1, 2, 3, 4, 5, 6], [1] * 6, 0.001)
        try:
            failing.result(30)
            raise AssertionError("no exception")
        except ValueError as e:
            assert "bad threshold" in str(e)
        assert torch.equal(batcher.submit([5], [2], None).result(30), sample(digits_model.G, [5], [2]))
    finally:
        batcher.close()


def test_unbatched_path_makes_one_call_per_image(digits_model):
    gate = Gate(open_=True)
    batcher = Batcher(digits_model.G, max_batch=1, window_s=0.0, sampler=gate)
    try:
        futures = [batcher.submit([s], [s % 10], None) for s in range(5)]
        [f.result(30) for f in futures]
    finally:
        batcher.close()
    assert [len(seeds) for seeds, _ in gate.calls] == [1] * 5
