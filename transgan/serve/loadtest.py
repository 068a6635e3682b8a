"""A bounded load test of the web app: N requests from C concurrent clients, loopback only.

Each client is a thread with one keep-alive HTTP connection (``http.client``) posting to
``/api/generate``; request i asks for class ``i mod K``, seed i. A request counts as an error
unless it returns 200 with exactly the images asked for. The test refuses non-loopback
targets, at most :data:`MAX_REQUESTS` requests and :data:`MAX_CLIENTS` clients, and stops
sending when its time limit is reached (the requests not sent are reported).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

from transgan.errors import ConfigError
from transgan.serve.server import is_loopback_url

MAX_REQUESTS = 5000
MAX_CLIENTS = 64
MAX_TIME_S = 600.0


@dataclass
class LoadTestResult:
    """What a load test measured; latencies in milliseconds."""

    requests: int
    clients: int
    images_per_request: int
    completed: int
    errors: int
    not_sent: int
    wall_s: float
    p50_ms: float
    p95_ms: float
    max_ms: float
    images_per_s: float
    requests_per_s: float
    first_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Lines for the terminal, the error check first."""
        check = "OK" if self.errors == 0 and self.not_sent == 0 else "FAILED"
        lines = [f"{check}: {self.errors} errors, {self.not_sent} not sent, {self.completed}/{self.requests} "
                 f"requests from {self.clients} clients",
                 f"latency p50 {self.p50_ms:.1f} ms, p95 {self.p95_ms:.1f} ms, max {self.max_ms:.1f} ms",
                 f"throughput {self.images_per_s:.1f} images/s ({self.requests_per_s:.1f} requests/s, "
                 f"{self.images_per_request} images each) in {self.wall_s:.1f} s"]
        lines += [f"  error: {e}" for e in self.first_errors]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON values."""
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def run_load_test(url: str, requests: int = 500, clients: int = 8, images_per_request: int = 1,
                  truncation: Optional[float] = None, time_limit_s: float = 300.0,
                  timeout_s: float = 60.0) -> LoadTestResult:
    """Send ``requests`` generation requests from ``clients`` threads to the app at ``url`` (loopback)."""
    if not is_loopback_url(url):
        raise ConfigError(f"the load test only targets this machine (a loopback http URL), not {url!r}")
    if not 1 <= requests <= MAX_REQUESTS:
        raise ConfigError(f"requests must be in 1..{MAX_REQUESTS}, got {requests}")
    if not 1 <= clients <= MAX_CLIENTS:
        raise ConfigError(f"clients must be in 1..{MAX_CLIENTS}, got {clients}")
    if not 0 < time_limit_s <= MAX_TIME_S:
        raise ConfigError(f"time limit must be in (0, {MAX_TIME_S}] seconds, got {time_limit_s}")
    parts = urlsplit(url)
    base = parts.path.rstrip("/")
    info = _get_json(parts.hostname, parts.port, f"{base}/api/info", timeout_s)
    num_classes = len(info["classes"])

    next_index, lock = [0], threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit_s

    def take() -> Optional[int]:
        with lock:
            if next_index[0] >= requests or time.monotonic() > deadline:
                return None
            next_index[0] += 1
            return next_index[0] - 1

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        try:
            while (i := take()) is not None:
                body = {"seed": i, "count": images_per_request, "truncation": truncation}
                if num_classes:
                    body["class"] = i % num_classes
                start = time.perf_counter()
                try:
                    conn.request("POST", f"{base}/api/generate", body=json.dumps(body),
                                 headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    payload = response.read()
                    elapsed = (time.perf_counter() - start) * 1000
                    problem = None
                    if response.status != 200:
                        problem = f"request {i}: HTTP {response.status} {payload[:200]!r}"
                    elif len(json.loads(payload).get("images", [])) != images_per_request:
                        problem = f"request {i}: wrong number of images"
                except (OSError, http.client.HTTPException, ValueError) as e:
                    elapsed, problem = (time.perf_counter() - start) * 1000, f"request {i}: {type(e).__name__}: {e}"
                    conn.close()  # a broken connection is reopened by the next request
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, name=f"load-client-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    sent = next_index[0]
    return LoadTestResult(
        requests=requests, clients=clients, images_per_request=images_per_request, completed=len(latencies),
        errors=len(errors), not_sent=requests - sent, wall_s=wall, p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95), max_ms=max(latencies, default=float("nan")),
        images_per_s=len(latencies) * images_per_request / wall, requests_per_s=len(latencies) / wall,
        first_errors=errors[:5])


def _get_json(host: str, port: Optional[int], path: str, timeout_s: float) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise ConfigError(f"GET {path} answered HTTP {response.status}; is the transgan app running there?")
        return json.loads(payload)
    finally:
        conn.close()
