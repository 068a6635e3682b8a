"""A bounded load test of the web app: N requests from C concurrent clients, loopback only.

Each client is a thread with one keep-alive HTTP connection (``http.client``) posting to
``/api/generate``; request i asks for class ``i mod K``, seed i. A request counts as an error
unless it returns 200 with exactly the images asked for. The test refuses non-loopback
targets, at most :data:`MAX_REQUESTS` requests and :data:`MAX_CLIENTS` clients, and stops
sending when its time limit is reached (the requests not sent are reported).

:func:`run_under_load` measures a single small request's latency while C clients send the
largest request the server allows (:func:`largest_request`, from ``/api/info``'s limits).
"""

from __future__ import annotations

import http.client
import json
import math
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
    busy: int = 0  # 503 answers (the server's fair refusal with Retry-After: not an error, counted apart)

    @property
    def busy_rate(self) -> float:
        """The fraction of answered requests refused as busy (503)."""
        answered = self.completed + self.busy
        return self.busy / answered if answered else float("nan")

    def summary(self) -> str:
        """Lines for the terminal, the error check first."""
        check = "OK" if self.errors == 0 and self.not_sent == 0 else "FAILED"
        lines = [f"{check}: {self.errors} errors, {self.not_sent} not sent, {self.completed}/{self.requests} "
                 f"requests from {self.clients} clients, {self.busy} answered 503 busy "
                 f"({self.busy_rate:.1%} of the answers)",
                 f"latency p50 {self.p50_ms:.1f} ms, p95 {self.p95_ms:.1f} ms, max {self.max_ms:.1f} ms",
                 f"throughput {self.images_per_s:.1f} images/s ({self.requests_per_s:.1f} requests/s, "
                 f"{self.images_per_request} images each) in {self.wall_s:.1f} s"]
        lines += [f"  error: {e}" for e in self.first_errors]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON values."""
        return {**asdict(self), "busy_rate": self.busy_rate}


BUSY_PAUSE_S = 0.1  # a client told 503 waits this long before its next request (a polite client, not a flood)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def _check(url: str, requests: int, clients: int, time_limit_s: float) -> None:
    if not is_loopback_url(url):
        raise ConfigError(f"the load test only targets this machine (a loopback http URL), not {url!r}")
    if not 1 <= requests <= MAX_REQUESTS:
        raise ConfigError(f"requests must be in 1..{MAX_REQUESTS}, got {requests}")
    if not 1 <= clients <= MAX_CLIENTS:
        raise ConfigError(f"clients must be in 1..{MAX_CLIENTS}, got {clients}")
    if not 0 < time_limit_s <= MAX_TIME_S:
        raise ConfigError(f"time limit must be in (0, {MAX_TIME_S}] seconds, got {time_limit_s}")


def get_info(url: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """``GET /api/info`` of the app at ``url``."""
    parts = urlsplit(url)
    return _get_json(parts.hostname, parts.port, f"{parts.path.rstrip('/')}/api/info", timeout_s)


def largest_request(info: dict[str, Any]) -> tuple[int, Optional[int]]:
    """(count, size) of the largest request the server takes: most images, then the largest side that fits
    the per-request pixel budget (size None when only the model's own resolution fits)."""
    limits, resolution = info["limits"], int(info["resolution"])
    budget = int(limits.get("max_request_pixels") or limits["max_count"] * limits["max_size"] ** 2)
    count = max(1, min(int(limits["max_count"]), budget // resolution**2))
    size = min(int(limits["max_size"]), math.isqrt(budget // count))
    return count, (size if size > resolution else None)


def run_load_test(url: str, requests: int = 500, clients: int = 8, images_per_request: int = 1,
                  truncation: Optional[float] = None, time_limit_s: float = 300.0,
                  timeout_s: float = 60.0, size: Optional[int] = None,
                  stop: Optional[threading.Event] = None, refused: bool = False) -> LoadTestResult:
    """Send ``requests`` generation requests from ``clients`` threads to the app at ``url`` (loopback);
    ``stop``, when given, ends the test early once set (a background load). ``refused``: requests the
    server answers 422 before the model (seed -1), so the figures are the HTTP path's own ceiling."""
    _check(url, requests, clients, time_limit_s)
    parts = urlsplit(url)
    base = parts.path.rstrip("/")
    info = get_info(url, timeout_s)
    num_classes = len(info["classes"])

    next_index, lock = [0], threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    busy = [0]
    deadline = time.monotonic() + time_limit_s

    def take() -> Optional[int]:
        with lock:
            if next_index[0] >= requests or time.monotonic() > deadline or (stop is not None and stop.is_set()):
                return None
            next_index[0] += 1
            return next_index[0] - 1

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        try:
            while (i := take()) is not None:
                body: dict[str, Any] = {"seed": -1 if refused else i, "count": images_per_request,
                                        "truncation": truncation}
                if size is not None:
                    body["size"] = size
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
                    if refused:
                        problem = None if response.status == 422 else f"request {i}: HTTP {response.status}, not 422"
                    elif response.status == 503:  # the fair budget said no: counted, then a short pause
                        with lock:
                            busy[0] += 1
                        time.sleep(BUSY_PAUSE_S)
                        continue
                    elif response.status != 200:
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
        errors=len(errors), not_sent=0 if stop is not None else requests - sent, wall_s=wall,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95), max_ms=max(latencies, default=float("nan")),
        images_per_s=len(latencies) * images_per_request / wall, requests_per_s=len(latencies) / wall,
        first_errors=errors[:5], busy=busy[0])


@dataclass
class UnderLoadResult:
    """Small requests measured while ``load`` sends the largest allowed ones."""

    probe: LoadTestResult
    load: LoadTestResult
    large_count: int
    large_size: Optional[int]

    def summary(self) -> str:
        """Lines for the terminal."""
        side = f"{self.large_size}x{self.large_size}" if self.large_size else "native"
        return (f"one client, 1 image/request, while {self.load.clients} clients send the largest requests "
                f"({self.large_count} images at {side}):\n{self.probe.summary()}\n"
                f"the large requests meanwhile:\n{self.load.summary()}")

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON values."""
        return asdict(self)


def run_under_load(url: str, probes: int = 100, clients: int = 8, truncation: Optional[float] = None,
                   time_limit_s: float = 300.0) -> UnderLoadResult:
    """Latency of ``probes`` one-image requests, one at a time, while ``clients`` clients send the largest
    requests the server allows (each client sends until the probes are done)."""
    _check(url, probes, clients, time_limit_s)
    count, size = largest_request(get_info(url))
    stop = threading.Event()
    loads: list[LoadTestResult] = []
    background = threading.Thread(target=lambda: loads.append(run_load_test(
        url, requests=MAX_REQUESTS, clients=clients, images_per_request=count, truncation=truncation,
        time_limit_s=time_limit_s, size=size, stop=stop)), name="load-large")
    background.start()
    try:
        time.sleep(1.0)  # the large requests fill the queue first
        probe = run_load_test(url, requests=probes, clients=1, images_per_request=1, truncation=truncation,
                              time_limit_s=time_limit_s)
    finally:
        stop.set()
        background.join()
    return UnderLoadResult(probe=probe, load=loads[0], large_count=count, large_size=size)


def _get_json(host: str, port: Optional[int], path: str, timeout_s: float) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise ConfigError(f"GET {path} answered HTTP {response.status}; is the transgan app running there?")
        return json.loads(payload)
    except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, not HTTP
        raise ConfigError(f"no transgan app answers at http://{host}:{port}{path} "
                          f"({type(e).__name__}: {e}); start it first (tools/serve.py)") from None
    except ValueError:
        raise ConfigError(f"GET {path} at {host}:{port} did not answer JSON; is the transgan app running there?") \
            from None
    finally:
        conn.close()
