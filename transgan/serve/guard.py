"""ASGI middleware in front of the app: request-size limits checked before anything is parsed.

A body is refused by its Content-Length before a byte is read, and, when it is streamed without
one (chunked), as soon as the bytes received pass the limit; a long query string is refused
before routing. Answers are short JSON, ``{"detail": ...}``, like the app's own errors.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024  # a generation request is under 200 bytes
MAX_QUERY_BYTES = 2048


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
