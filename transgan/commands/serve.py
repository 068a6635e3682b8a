"""Serve a web page for conditional generation (class, truncation, seed, count -> image grid) and a JSON/PNG API.

    python tools/serve.py SOURCE [model.attention=KERNEL] [--host 127.0.0.1] [--port 8000] [--max-count 64]
                                 [--threads N] [--network G_ema] [--device cpu] [--title TEXT]
                                 [--batch 16] [--allowed-host NAME ...]

  SOURCE     an exported generator (folder with generator.safetensors + generator.json, from
             `python tools/generate.py export`), a run directory of tools/train.py or a checkpoint
  --host     interface to listen on; the default 127.0.0.1 keeps the page on this machine
  --threads  torch threads for generation (default: torch's choice less one, at least 1: one core
             stays with the HTTP event loop)
  model.attention=K  attention kernel (auto, sdpa, xformers, math, chunked) instead of the run's
  --batch    images per model call, gathered from concurrent requests (1 = no batching)
  --allowed-host  a Host name the page is reached by (repeatable); default: the loopback names for a
             loopback --host, else the --host address. Requests with another Host get 400.

The port is taken and the device checked before the model is loaded; every failure is one
`error:` line and exit status 2.

Then open http://127.0.0.1:8000/ . API: GET /api/info, POST /api/generate (JSON), GET
/api/generate.png?class=3&seed=0&count=8 (see docs/serving.md). Ctrl-C stops the server.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from transgan.cli import ATTENTION_KEY, CommandLine, console_entry, overrides_as_dict, resolve_device, run_cli
from transgan.errors import ConfigError


def command_line() -> CommandLine:
    """The command line: the source, ``model.attention=`` as in every command, the server's flags."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.serve.server import DEFAULT_HOST

    cli = CommandLine("tools/serve.py", __doc__, ATTENTION_KEY)
    p = cli.parser
    p.add_argument("source", help="exported generator, run directory or checkpoint")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-count", type=int, default=64, help="most images per request")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--network", default="G_ema", choices=["G_ema", "G"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--title", default=None)
    p.add_argument("--batch", type=int, default=16, help="images per model call (1 = no batching)")
    p.add_argument("--allowed-host", action="append", default=None, help="a Host name of the page (repeatable)")
    p.add_argument("--max-head-kib", type=int, default=32,
                   help="most KiB of a request's line and headers (431 beyond; the URL alone: 4 KiB, 414)")
    return cli


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The flags, with the ``model.attention=`` override as ``attention`` (None: the run's)."""
    args, overrides = command_line().parse(argv)
    args.attention = overrides_as_dict(overrides).get("model.attention")
    return args


def check_args(args: argparse.Namespace) -> tuple[list[str], Any]:
    """Refuse bad options before anything is bound or loaded; return the allowed Host names and the device."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.serve.server import allowed_hosts_for

    if not 1 <= args.max_count <= 1024:
        raise ConfigError(f"--max-count must be in 1..1024, got {args.max_count}")
    if not 1 <= args.batch <= 256:
        raise ConfigError(f"--batch must be in 1..256, got {args.batch}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if not 4 <= args.max_head_kib <= 1024:  # below 4 KiB the URL cap could never be reached
        raise ConfigError(f"--max-head-kib must be in 4..1024, got {args.max_head_kib}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise ConfigError(f"--threads must be in 1..1024, got {args.threads}")
    return args.allowed_host or allowed_hosts_for(args.host), resolve_device(args.device)


def build_app(args: argparse.Namespace) -> Any:
    """The web app for parsed arguments: the generator loaded once, with the run's attention kernel."""
    return _load_app(args, *check_args(args))


def _load_app(args: argparse.Namespace, allowed_hosts: list[str], device: Any) -> Any:
    """The web app for checked arguments."""
    # deferred: start-up (see transgan/commands/__init__.py)
    import torch

    from transgan.runs.load import load_source
    from transgan.serve.app import ServeLimits, create_app

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_source(args.source, args.network, attention=args.attention)
    loaded.G.to(device)
    limits = ServeLimits(max_count=args.max_count, batch_images=args.batch)
    return create_app(loaded, limits, title=args.title, allowed_hosts=allowed_hosts)


def run(argv: Sequence[str]) -> None:
    """Load the generator once and serve until interrupted."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.serve.server import bind_socket, generation_threads, is_loopback_host, serve_forever

    args = parse_args(argv)
    checked = check_args(args)
    if args.threads is None:  # the server process's default; build_app (in process: tests, tools) keeps the caller's
        # deferred: start-up (see transgan/commands/__init__.py)
        import torch

        args.threads = generation_threads(torch.get_num_threads())
    # The port first: a taken one fails at once, not after the model load.
    sock = bind_socket(args.host, args.port)
    try:
        app = _load_app(args, *checked)
        info = app.state.service.describe()
        # Flushed: tools/load_test.py --compare-batching reads the URL (and its port 0's choice) from a pipe.
        print(f"{info['description']}; serving on http://{args.host}:{sock.getsockname()[1]}/", flush=True)
        if not is_loopback_host(args.host):
            print(f"warning: {args.host} is not a loopback address; other machines can reach this page",
                  file=sys.stderr)
        serve_forever(app, sock, max_head_bytes=args.max_head_kib * 1024)
    finally:
        sock.close()


def main(argv: list[str]) -> int:
    """Run the server; exit status 2 for bad input, with a message."""
    return run_cli(lambda: run(argv), usage=command_line(), argv=argv)


entry = console_entry(main)  # the ``transgan-serve`` console script; tools/serve.py runs it too


if __name__ == "__main__":
    sys.exit(entry())
