"""Load test of tools/serve.py: N generation requests from C concurrent clients, on this machine only.

    python tools/load_test.py --url http://127.0.0.1:8000/ [--requests 500] [--clients 8] [--images 1]
                              [--truncation T] [--time-limit 300] [--json results.json]
    python tools/load_test.py --source SOURCE ...     (starts the app itself on a free loopback port)

Prints the error check (0 errors expected), p50/p95 latency and images/s. Exit status 1 when any
request failed or was not sent in time; 2 for bad input (a non-loopback URL, more than 5,000
requests or 64 clients, a time limit above 600 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from transgan.cli import console_entry, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="tools/load_test.py", description=__doc__.split("\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running app, e.g. http://127.0.0.1:8000/")
    target.add_argument("--source", help="serve this generator in-process on a free loopback port")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--images", type=int, default=1, help="images per request")
    p.add_argument("--truncation", type=float, default=None)
    p.add_argument("--time-limit", type=float, default=300.0, help="stop sending after this many seconds")
    p.add_argument("--json", default=None, help="also write the results here")
    return p


def run(argv: Sequence[str]) -> bool:
    """Run the load test; print and optionally save the results; True when every request succeeded."""
    from transgan.serve.loadtest import run_load_test

    args = build_parser().parse_args(argv)
    options = dict(requests=args.requests, clients=args.clients, images_per_request=args.images,
                   truncation=args.truncation, time_limit_s=args.time_limit)
    if args.url:
        result = run_load_test(args.url, **options)
    else:
        from transgan.runs.load import load_source
        from transgan.serve.app import create_app
        from transgan.serve.server import BackgroundServer

        with BackgroundServer(create_app(load_source(args.source))) as server:
            result = run_load_test(server.url, **options)
    print(result.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result.errors == 0 and result.not_sent == 0


def main(argv: list[str]) -> int:
    """0 when all requests succeeded, 1 when some failed, 2 for bad input."""
    ok = []
    status = run_cli(lambda: ok.append(run(argv)), usage=__doc__, argv=argv)
    return status if status or not ok else (0 if ok[0] else 1)


entry = console_entry(main, logging.WARNING)  # the ``transgan-load-test`` console script; tools/load_test.py runs it too


if __name__ == "__main__":
    sys.exit(entry())
