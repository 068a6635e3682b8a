"""Running the app with uvicorn: in the foreground (tools/serve.py) or on a background thread (tests, load test).

The default host is 127.0.0.1: the page is reachable from this machine only unless the user
names another interface.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any, Optional
from urllib.parse import urlsplit

import uvicorn

from transgan.errors import ConfigError
from transgan.serve.guard import LOOPBACK_HOSTS, MAX_HEAD_BYTES, READ_TIMEOUT_S, read_timeout_protocol

DEFAULT_HOST = "127.0.0.1"


def is_loopback_host(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def is_loopback_url(url: str) -> bool:
    """True for an http(s) URL whose host is loopback."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and parts.hostname is not None and is_loopback_host(parts.hostname)


def generation_threads(torch_default: int) -> int:
    """torch threads for serving: torch's own count less one (at least 1), a core left to the HTTP event loop.

    torch's intra-op threads spin while they wait for work, so with as many threads as cores the
    model and the event loop (request parsing, PNG encoding) compete for every core. Measured on
    2 cores (docs/serving.md): 1 thread instead of 2 served 1.3-2.0x the images unbatched and
    1.1-1.3x batched.
    """
    return max(1, torch_default - 1)


def bind_socket(host: str = DEFAULT_HOST, port: int = 0) -> socket.socket:
    """A listening-ready TCP socket on (host, port); port 0 picks a free one, with no race to find it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the socket says it is
    # TCP. Without it Nagle held each response's body behind its headers until the client's delayed ACK:
    # ~44 ms for every request, the ceiling of the whole server (tests/serve/test_guard.py measures it).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e} (another server there? "
                          "choose --port)") from None
    sock.set_inheritable(True)
    return sock


def allowed_hosts_for(host: str) -> list[str]:
    """Host header values a server bound to ``host`` answers: the loopback names for a loopback address,
    else the address itself (DNS rebinding: a page on evil.com resolved to 127.0.0.1 sends Host: evil.com)."""
    if host in ("0.0.0.0", "::", ""):
        raise ConfigError(f"--host {host or repr(host)} listens on every interface: name the host names the "
                          "page is reached by with --allowed-host (repeatable)")
    literal = f"[{host}]" if ":" in host else host  # an IPv6 address appears in brackets in a Host header
    return sorted({*LOOPBACK_HOSTS, literal}) if is_loopback_host(host) else [literal]


def _config(app: Any, log_level: str, read_timeout_s: float, keep_alive_s: int, max_head_bytes: int) -> Any:

    # lifespan off: the app has no startup work (the model is loaded before the app exists).
    # httptools with a read deadline (transgan.serve.guard), uvloop where installed (loop="auto"); idle
    # keep-alive connections close after keep_alive_s.
    # ws="none": the app serves no WebSocket, so an upgrade request is a plain HTTP request to it, answered
    # (404, ...) with the security headers, not by the WebSocket library before the app.
    return uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False, ws="none",
                          http=read_timeout_protocol(read_timeout_s, max_head=max_head_bytes),
                          timeout_keep_alive=keep_alive_s)


def serve_forever(app: Any, sock: socket.socket, log_level: str = "info", read_timeout_s: float = READ_TIMEOUT_S,
                  keep_alive_s: int = 5, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
    """Serve ``app`` on a socket from :func:`bind_socket` until interrupted (Ctrl-C)."""
    server = uvicorn.Server(_config(app, log_level, read_timeout_s, keep_alive_s, max_head_bytes))
    server.run(sockets=[sock])


class BackgroundServer:
    """``with BackgroundServer(app) as server: ... server.url ...``: uvicorn on a thread, on a free port."""

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning",
                 read_timeout_s: float = READ_TIMEOUT_S, keep_alive_s: int = 5,
                 max_head_bytes: int = MAX_HEAD_BYTES) -> None:

        self.sock = bind_socket(host, port)
        address = self.sock.getsockname()
        self.host, self.port = address[0], address[1]
        self.server = uvicorn.Server(_config(app, log_level, read_timeout_s, keep_alive_s, max_head_bytes))
        self.thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        """Base URL with a trailing slash, e.g. http://127.0.0.1:41234/."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout_s: float = 20.0) -> "BackgroundServer":
        """Start serving; return once uvicorn accepts connections."""
        # uvicorn installs signal handlers only on the main thread, so it runs fine on this one.
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=f"uvicorn:{self.port}")
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout_s} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask uvicorn to finish its requests and exit; wait for the thread."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
