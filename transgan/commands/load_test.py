"""Load test of tools/serve.py: N generation requests from C concurrent clients, on this machine only.

    python tools/load_test.py --url http://127.0.0.1:8000/ [--requests 500] [--clients 8] [--images 1]
                              [--truncation T] [--time-limit 300] [--json results.json]
    python tools/load_test.py --url ... --under-load [--probes 100]
    python tools/load_test.py --source SOURCE ...     (starts the app itself on a free loopback port)
    python tools/load_test.py --source SOURCE --compare-batching [--batch 16] [--threads N] [--baseline-url URL]

--under-load   the latency of one client's 1-image requests while C clients send the largest
               requests the server allows (count and size from /api/info's limits)
--compare-batching  one run: starts tools/serve.py twice on free loopback ports, unbatched
               (--batch 1) and batched (--batch B), sends the same C-client load to each, prints
               both images/s and their ratio, then the --under-load figures of the batched server
--baseline-url  with --compare-batching: a server you started (e.g. an earlier version of
               transgan, from its own checkout) measured first under the same load in the same
               run; the batched server's images/s is also given as a multiple of its

Prints the error check (0 errors expected), p50/p95 latency and images/s. Exit status 1 when any
request failed or was not sent in time; 2 for bad input (a non-loopback URL, more than 5,000
requests or 64 clients, a time limit above 600 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from transgan.cli import CommandLine, console_entry, run_cli
from transgan.commands import serve as serve_command
from transgan.errors import ConfigError

SERVE_COMMAND = ["-m", serve_command.__name__]  # run as a module of this same copy of transgan


def command_line() -> CommandLine:
    """The command line: process-level flags only (the server it measures has its own settings)."""
    cli = CommandLine("tools/load_test.py", __doc__)
    p = cli.parser
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running app, e.g. http://127.0.0.1:8000/")
    target.add_argument("--source", help="serve this generator in-process on a free loopback port")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--images", type=int, default=1, help="images per request")
    p.add_argument("--truncation", type=float, default=None)
    p.add_argument("--time-limit", type=float, default=300.0, help="stop sending after this many seconds")
    p.add_argument("--under-load", action="store_true", help="small-request latency under the largest requests")
    p.add_argument("--probes", type=int, default=100, help="small requests sent with --under-load")
    p.add_argument("--compare-batching", action="store_true", help="batched vs unbatched server (needs --source)")
    p.add_argument("--batch", type=int, default=16, help="images per model call of the batched server")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the compared servers")
    p.add_argument("--baseline-url", default=None,
                   help="with --compare-batching: also measure this running server (loopback) in the same run")
    p.add_argument("--json", default=None, help="also write the results here")
    return cli


@contextmanager
def serve_process(source: str, batch: int, threads: Optional[int], timeout_s: float = 120.0) -> Iterator[str]:
    """tools/serve.py SOURCE on a free loopback port in a child process; yields its URL."""
    command = [sys.executable, *SERVE_COMMAND, source, "--port", "0", "--batch", str(batch)]
    if threads is not None:
        command += ["--threads", str(threads)]
    log = tempfile.TemporaryFile(mode="w+")  # the server's log, read back only when it fails to start
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if "serving on " not in line:
            process.wait(timeout_s)
            log.seek(0)
            raise ConfigError(f"tools/serve.py did not start: {' '.join(log.read().split())[-300:]}")
        url = line.rsplit("serving on ", 1)[1].strip()
        # deferred: start-up (see transgan/commands/__init__.py)
        from transgan.serve.loadtest import get_info

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                get_info(url, timeout_s=5)
                break
            except (OSError, ConfigError):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise ConfigError(f"tools/serve.py on {url} did not answer") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def compare_batching(args: argparse.Namespace, options: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Unbatched and batched servers under the same load, then the batched one under the largest requests."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.serve.loadtest import run_load_test, run_under_load

    results: dict[str, Any] = {}
    if args.baseline_url:
        run_load_test(args.baseline_url, requests=min(40, args.requests), clients=args.clients)  # warm-up
        baseline = run_load_test(args.baseline_url, **options)
        print(f"-- baseline server ({args.baseline_url}):\n{baseline.summary()}")
        results["baseline"] = baseline.to_json()
    for name, batch in (("unbatched", 1), ("batched", args.batch)):
        with serve_process(args.source, batch, args.threads) as url:
            run_load_test(url, requests=min(40, args.requests), clients=args.clients)  # warm-up
            result = run_load_test(url, **options)
            print(f"-- {name} server (--batch {batch}):\n{result.summary()}")
            results[name] = result.to_json()
            if name == "unbatched":
                # The same requests refused before the model: what HTTP, parsing and the clients cost alone.
                ceiling = run_load_test(url, **{**options, "refused": True})
                print(f"-- HTTP ceiling (the same load answered 422 before the model): "
                      f"{ceiling.requests_per_s:.1f} requests/s, p50 {ceiling.p50_ms:.1f} ms")
                results["http_ceiling"] = ceiling.to_json()
            if name == "batched":
                under = run_under_load(url, probes=args.probes, clients=args.clients, truncation=args.truncation,
                                       time_limit_s=args.time_limit)
                print(f"-- batched server, {under.summary()}")
                results["under_load"] = under.to_json()
    ratio = results["batched"]["images_per_s"] / results["unbatched"]["images_per_s"]
    results["speedup"] = ratio
    print(f"batched / unbatched images/s: {ratio:.2f}x")
    if args.baseline_url:
        results["speedup_over_baseline"] = results["batched"]["images_per_s"] / results["baseline"]["images_per_s"]
        print(f"batched / baseline images/s: {results['speedup_over_baseline']:.2f}x")
    measured = [results[k] for k in ("baseline", "unbatched", "batched") if k in results]
    errors = sum(r["errors"] + r["not_sent"] for r in measured)
    errors += results["under_load"]["probe"]["errors"] + results["under_load"]["load"]["errors"]
    return errors == 0, results


def run(argv: Sequence[str]) -> bool:
    """Run the load test; print and optionally save the results; True when every request succeeded."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.serve.loadtest import run_load_test, run_under_load

    args, _ = command_line().parse(argv)
    options = dict(requests=args.requests, clients=args.clients, images_per_request=args.images,
                   truncation=args.truncation, time_limit_s=args.time_limit)
    if args.compare_batching:
        if not args.source:
            raise ConfigError("--compare-batching starts its own servers: give --source, not --url")
    elif args.baseline_url:
        raise ConfigError("--baseline-url is measured beside --compare-batching; add --compare-batching")
    if args.compare_batching:
        ok, results = compare_batching(args, options)
    else:
        def measure(url: str) -> Any:
            if args.under_load:
                return run_under_load(url, probes=args.probes, clients=args.clients, truncation=args.truncation,
                                      time_limit_s=args.time_limit)
            return run_load_test(url, **options)

        if args.url:
            result = measure(args.url)
        else:
            # deferred: start-up (see transgan/commands/__init__.py)
            from transgan.runs.load import load_source
            from transgan.serve.app import create_app
            from transgan.serve.server import BackgroundServer

            with BackgroundServer(create_app(load_source(args.source))) as server:
                result = measure(server.url)
        print(result.summary())
        results = result.to_json()
        parts = [result.probe, result.load] if args.under_load else [result]
        ok = all(r.errors == 0 and (r.not_sent == 0) for r in parts)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return ok


def main(argv: list[str]) -> int:
    """0 when all requests succeeded, 1 when some failed, 2 for bad input."""
    ok = []
    status = run_cli(lambda: ok.append(run(argv)), usage=command_line(), argv=argv)
    return status if status or not ok else (0 if ok[0] else 1)


entry = console_entry(main, logging.WARNING)  # the ``transgan-load-test`` console script; tools/load_test.py runs it too


if __name__ == "__main__":
    sys.exit(entry())
