"""ASGI middleware in front of the app: security headers on every answer, request-size limits
checked before anything is parsed; and uvicorn's HTTP protocol with a read timeout.

A body is refused by its Content-Length before a byte is read, and, when it is streamed without
one (chunked), as soon as the bytes received pass the limit; a long query string is refused
before routing. Answers are short JSON, ``{"detail": ...}``, like the app's own errors.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024  # a generation request is under 200 bytes
MAX_QUERY_BYTES = 2048
MAX_HEAD_BYTES = 32 * 1024  # request line and headers together: a browser sends 1-2 KiB
MAX_URL_BYTES = 4096        # the request target (path and query)
MAX_HEADERS = 100           # header lines per request
LINGER_S = 1.0              # after answering a refused request, what the client still sends is dropped this long
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # Host values of a server on a loopback address
READ_TIMEOUT_S = 10.0  # a request's head and body must arrive within this (a generation request is ~200 bytes)

# On every response, JSON, PNG and errors included: no MIME sniffing, nothing loaded from elsewhere,
# no framing (clickjacking), no referrer sent on.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data:; connect-src 'self'; form-action 'none'; "
                                 b"base-uri 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class BodyTooLarge(Exception):
    """The streamed body passed the limit (raised from ``receive``; the app answers 413)."""


async def send_error(send: Send, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A complete JSON error response."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class SizeLimits:
    """Refuse bodies over ``max_body`` bytes (413) and query strings over ``max_query`` bytes (414)."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES, max_query: int = MAX_QUERY_BYTES) -> None:
        self.app, self.max_body, self.max_query = app, max_body, max_query

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if len(scope.get("query_string", b"")) > self.max_query:
            return await send_error(send, 414, f"the query string is too long (at most {self.max_query} bytes)")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or len(length) > 18 or int(length) > self.max_body):
            return await send_error(send, 413, f"the request body is too large (at most {self.max_body} bytes)")
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge(f"the request body is too large (at most {self.max_body} bytes)")
            return message

        await self.app(scope, counted, send)


class SecurityHeaders:
    """Add :data:`SECURITY_HEADERS` to every HTTP response that passes through (the outermost middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                message = {**message, "headers": [*((k, v) for k, v in message.get("headers", [])
                                                    if k.lower() not in names), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


def read_timeout_protocol(timeout_s: float = READ_TIMEOUT_S, max_head: int = MAX_HEAD_BYTES,
                          max_url: int = MAX_URL_BYTES, max_headers: int = MAX_HEADERS) -> type:
    """uvicorn's httptools protocol with a read timeout and a capped request head, and security headers on
    its own answers (400, and 414 / 431 for a head over the caps).

    The head (request line and headers) may be at most ``max_head`` bytes, the URL ``max_url`` and the
    headers ``max_headers`` lines: checked as the bytes arrive, before the parser is handed more, so one
    client streaming an endless header or URL costs a bounded amount of work (the parser joins a partial
    value with each new piece, quadratic in its length) and is answered 431 / 414 and disconnected.

    The connection is closed when a request's head and body have not all arrived ``timeout_s``
    after the connection opened or after the request's first byte. uvicorn only times out idle
    keep-alive connections between requests; a client that connects and sends nothing, or half a
    request, would otherwise hold its connection (and a file descriptor) for good. httptools (the
    C parser) rather than h11: it parses a request in a fraction of the time, which the load test's
    requests per second show (docs/serving.md).
    """
    class ReadTimeoutProtocol(HttpToolsProtocol):
        """HttpToolsProtocol whose request reads have a deadline."""

        read_timeout_s = timeout_s

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._read_timer = None
            self._head_bytes, self._in_head, self._refusal = 0, True, None
            self._start_read_clock()

        def data_received(self, data: bytes) -> None:
            if self._refusal is not None or self.transport.is_closing() or getattr(self, "_answered", False):
                return
            if self._read_timer is None:  # the first byte of a request (kept-alive or pipelined) starts the clock
                self._start_read_clock()
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._refusal is None and self._in_head and self._head_bytes > max_head:
                self._refusal = (431, f"the request head is too large (at most {max_head} bytes)")
            if self._refusal is not None:
                self._send_error(*self._refusal)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._header_count, self._head_parsed = True, 0, 0

        def on_url(self, url: bytes) -> None:
            if len(self.url) + len(url) > max_url:
                self._refuse(414, f"the URL is too long (at most {max_url} bytes)")
            self._head_parsed += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > max_headers:
                self._refuse(431, f"too many headers (at most {max_headers})")
            # A head that arrived in one piece is parsed before data_received can count it: count it here too.
            self._head_parsed += len(name) + len(value) + 4  # ": " and CRLF
            if self._head_parsed > max_head:
                self._refuse(431, f"the request head is too large (at most {max_head} bytes)")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def _refuse(self, status: int, msg: str) -> None:
            # Raising from a parser callback stops the parser; uvicorn then answers through send_400_response,
            # which sends this refusal instead.
            self._refusal = (status, msg)
            raise RuntimeError(msg)

        def on_message_complete(self) -> None:
            self._cancel_read_timer()  # the whole request is in: what follows is the app's time
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_read_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._send_error(*(self._refusal or (400, msg)))

        def _send_error(self, status: int, msg: str) -> None:
            # The protocol's own answers never reach the middleware: the same headers and JSON error shape
            # as the app's answers, written here; then the connection closes.
            if self.transport.is_closing() or getattr(self, "_answered", False):
                return
            self._answered = True
            body = json.dumps({"detail": msg}).encode()
            headers = (*self.server_state.default_headers, *SECURITY_HEADERS, (b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode()), (b"connection", b"close"))
            reason = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}[status]
            self.transport.write(b"HTTP/1.1 " + str(status).encode() + b" " + reason + b"\r\n"
                                 + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body)
            if self.transport.can_write_eof():
                # A lingering close: the answer goes out with a FIN while what the client is still sending is
                # read and dropped (data_received ignores it); closing at once with unread bytes would reset
                # the connection, and the client could lose the answer.
                self.transport.write_eof()
                self.loop.call_later(LINGER_S, self.transport.close)
            else:
                self.transport.close()

        def _start_read_clock(self) -> None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

        def _cancel_read_timer(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
            self._read_timer = None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if not self.transport.is_closing():  # still reading a head or a body: the client stalled
                self.transport.close()

    return ReadTimeoutProtocol
