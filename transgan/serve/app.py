"""The FastAPI app: a page for conditional generation and a JSON/PNG API over one loaded generator.

Routes (nothing else; no route takes a path or file name, and no static folder is mounted)::

    GET  /                      the page
    GET  /static/app.js|app.css the page's script and style (constants)
    GET  /api/info              the model: classes, truncation kind and range, request limits
    POST /api/generate          JSON {"class", "seed", "count", "truncation", "size"} -> JSON images (PNG data URLs)
    GET  /api/generate.png      the same fields as query parameters (+ "cols") -> one PNG grid

Image i of a request is made from seed ``seed + i`` (``transgan.eval.sampling.seed_latents``), so
any image can be made again from its seed. The model is loaded once and run by one worker thread
(``transgan.serve.batching.Batcher``) that gathers the images of concurrent requests into shared
calls and slices large requests; a module is not safe to run from several threads at once
(BatchNorm, cached buffers) and torch already uses every core for one batch.

Bad input gets 422 with ``{"detail": "<message>"}``; a request over the per-request pixel budget
(count x side^2) 413; a request that would take the server past its in-flight pixel budget 503
with Retry-After. Every answer carries the security headers (``transgan.serve.guard``), and a
Host header outside the allow-list gets 400 (DNS rebinding).
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time.
import asyncio
import base64
import io
import json
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Optional, Sequence, Union

import anyio
import anyio.to_thread
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from transgan.errors import ConfigError
from transgan.eval.generate import describe, image_grid, png_bytes, resolve_class
from transgan.eval.sampling import truncation_kind
from transgan.runs.export import LoadedGenerator
from transgan.serve.batching import Batcher
from transgan.serve.guard import (
    LOOPBACK_HOSTS,
    MAX_BODY_BYTES,
    MAX_QUERY_BYTES,
    BodyTooLarge,
    SecurityHeaders,
    SizeLimits,
)
from transgan.serve.page import SCRIPT, STYLE, render_page

MAX_SEED = 2**31 - 1  # seeds seed..seed+count-1 stay below 2^32 (torch.Generator.manual_seed takes any)


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on one request: images per request, pixels per image side, the truncation ranges."""

    max_count: int = 64
    min_size: int = 8
    max_size: int = 512
    max_cols: int = 16
    psi_range: tuple[float, float] = (0.0, 1.0)
    z_threshold_range: tuple[float, float] = (0.1, 3.0)
    max_body_bytes: int = MAX_BODY_BYTES
    max_query_bytes: int = MAX_QUERY_BYTES
    # Memory: a request costs count x side^2 pixels (side = max(size, resolution)); about 40 bytes per
    # pixel pass through tensors, PIL images, PNGs and base64 on the way, so 2 Mpx ~ 80 MB per request.
    max_request_pixels: int = 2**21
    max_inflight_pixels: int = 8 * 2**21
    batch_images: int = 16        # images per model call (1 = unbatched)
    batch_window_s: float = 0.002  # how long the worker waits for more requests to share a call


class InvalidRequest(ValueError):
    """A well-formed request whose values this model cannot serve (unknown class, out of bounds)."""


class RequestTooLarge(ValueError):
    """A request over the per-request pixel budget (413)."""


class UnsupportedMediaType(ValueError):
    """A POST body that is not declared JSON (415)."""


def _client(http: Request) -> str:
    """The client a budget share belongs to: its address."""
    return http.client.host if http.client is not None else ""


class ServerBusy(RuntimeError):
    """The server's in-flight pixel budget is spent (503 with Retry-After)."""


class PixelBudget:
    """The pixels of the requests being served, against a server-wide cap, shared fairly.

    Large requests share ``capacity - reserve``, and one client (its address) holds at most
    ``client_share`` of that (never less than one request of ``largest`` pixels); small requests
    (at most ``small`` pixels) may also use the reserve, so a crowd of the largest requests never
    starves them. A request that does not fit is refused (503): nothing queues behind the budget.
    """

    def __init__(self, capacity: int, reserve: int = 0, small: int = 0, client_share: float = 1.0,
                 largest: int = 0) -> None:
        self.capacity, self.reserve, self.small = capacity, min(reserve, capacity), small
        self.client_cap = max(int(client_share * (capacity - self.reserve)), largest)
        self.in_flight, self.large_in_flight, self.refused = 0, 0, 0
        self.by_client: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, pixels: int, client: str = "") -> Iterator[None]:
        """Reserve ``pixels`` for ``client`` for the block, or raise :class:`ServerBusy`."""
        large = pixels > self.small
        with self._lock:
            fits = self.in_flight + pixels <= self.capacity
            if large:
                fits = (fits and self.large_in_flight + pixels <= self.capacity - self.reserve
                        and self.by_client.get(client, 0) + pixels <= self.client_cap)
            if not fits:
                self.refused += 1
                raise ServerBusy("the server is busy with other requests; try again in a second")
            self.in_flight += pixels
            self.large_in_flight += pixels if large else 0
            self.by_client[client] = self.by_client.get(client, 0) + pixels
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= pixels
                self.large_in_flight -= pixels if large else 0
                left = self.by_client[client] - pixels
                if left:
                    self.by_client[client] = left
                else:
                    del self.by_client[client]


def _not_bool_or_float(value: Any) -> Any:
    # JSON true and 1.5 would otherwise pass as integers 1 (pydantic's lax mode); a seed is a whole number.
    if isinstance(value, (bool, float)):
        raise ValueError("must be a whole number")
    return value


Integer = Annotated[int, BeforeValidator(_not_bool_or_float)]
ClassValue = Annotated[Union[int, str], BeforeValidator(_not_bool_or_float)]


class GenerateRequest(BaseModel):
    """One generation request; unknown fields are refused."""

    # No populate_by_name: the field is spelled "class" only ("class_" is an unknown field).
    model_config = ConfigDict(extra="forbid")

    class_: Optional[ClassValue] = Field(None, alias="class", description="class index or name")
    seed: Integer = Field(0, ge=0, le=MAX_SEED, description="image i uses seed + i")
    count: Integer = Field(1, ge=1, description="number of images")
    truncation: Optional[float] = Field(None, allow_inf_nan=False,
                                        description="psi for style models, |z| threshold otherwise; null = none")
    size: Optional[Integer] = Field(None, description="pixels per image side (nearest scaling)")
    cols: Optional[Integer] = Field(None, description="columns of the PNG grid")


class GenerationService:
    """The model, loaded once, its batching worker and the server-wide pixel budget."""

    def __init__(self, loaded: LoadedGenerator, limits: ServeLimits = ServeLimits(), title: Optional[str] = None
                 ) -> None:
        self.G, self.info, self.limits = loaded.G.eval().requires_grad_(False), loaded.info, limits
        self.kind = truncation_kind(self.G)
        self.title = title or "transgan: conditional generation"
        self.batcher = Batcher(self.G, max_batch=limits.batch_images, window_s=limits.batch_window_s)
        # One largest request's worth kept for small requests (an eighth of it at most each); a client
        # holds at most half of the rest.
        self.budget = PixelBudget(limits.max_inflight_pixels, reserve=limits.max_request_pixels,
                                  small=limits.max_request_pixels // 8, client_share=0.5,
                                  largest=limits.max_request_pixels)
        self.served = 0

    def describe(self) -> dict[str, Any]:
        """The JSON of ``GET /api/info`` (also rendered into the page)."""
        lo, hi = self.limits.psi_range if self.kind == "psi" else self.limits.z_threshold_range
        return {
            "title": self.title,
            "description": describe(self.info, self.G),
            "generator": self.info.generator.get("name"),
            "resolution": int(self.info.img_resolution),
            "channels": int(self.info.img_channels),
            "classes": [{"index": k, "name": name} for k, name in enumerate(self.info.class_names)],
            "truncation": {"kind": self.kind, "min": lo, "max": hi, "step": 0.05 if self.kind == "psi" else 0.1,
                           # psi = 1 is no truncation; a z threshold is off above the range (slider's last stop)
                           "off_above": None if self.kind == "psi" else hi,
                           "slider_default": 1.0 if self.kind == "psi" else round(hi + 0.1, 2)},
            "limits": {"max_count": self.limits.max_count, "min_size": self.limits.min_size,
                       "max_size": self.limits.max_size, "max_cols": self.limits.max_cols, "max_seed": MAX_SEED,
                       "max_request_pixels": self.limits.max_request_pixels},
            "torch_threads": torch.get_num_threads(),  # the process's intra-op threads (tools/serve.py --threads)
        }

    def check(self, r: GenerateRequest) -> Optional[int]:
        """Bounds that depend on this model and these limits; returns the class index."""
        L = self.limits
        # Messages name the field and its rule, never the value sent (an answer must not echo its input).
        if r.count > L.max_count:
            raise InvalidRequest(f"count: must be at most {L.max_count}")
        if r.size is not None and not L.min_size <= r.size <= L.max_size:
            raise InvalidRequest(f"size: must be in {L.min_size}..{L.max_size} pixels")
        if r.cols is not None and not 1 <= r.cols <= L.max_cols:
            raise InvalidRequest(f"cols: must be in 1..{L.max_cols}")
        if r.truncation is not None:
            lo, hi = L.psi_range if self.kind == "psi" else L.z_threshold_range
            what = "psi" if self.kind == "psi" else "|z| threshold"
            if not lo <= r.truncation <= hi:
                raise InvalidRequest(f"truncation: the {what} must be in [{lo}, {hi}] for this model")
        try:
            c = resolve_class(r.class_, self.info)
        except ConfigError:
            n = self.info.num_classes
            rule = (("choose a class: " if r.class_ is None else "must be ") + f"a class index 0..{n - 1} or a class "
                    "name of /api/info") if n else "this model is unconditional: give no class"
            raise InvalidRequest(f"class: {rule}") from None
        if self.pixels(r) > L.max_request_pixels:
            raise RequestTooLarge(f"count x side^2 must be at most {L.max_request_pixels:,} pixels (side: the size, "
                                  f"at least the model's {self.info.img_resolution}); ask for fewer or smaller images")
        return c

    def side(self, r: GenerateRequest) -> int:
        """Pixels per side of the largest image a request makes: its size or the model's resolution."""
        return max(int(r.size or 0), int(self.info.img_resolution))

    def pixels(self, r: GenerateRequest) -> int:
        """What a request costs against the budgets: count x side^2."""
        return r.count * self.side(r) ** 2

    async def generate(self, r: GenerateRequest) -> tuple[torch.Tensor, Optional[int], list[int]]:
        """Validated images [count, C, H, W] in [-1, 1], the class index and the seeds (from the batching worker)."""
        c = self.check(r)
        seeds = list(range(r.seed, r.seed + r.count))
        try:
            images = await asyncio.wrap_future(self.batcher.submit(seeds, [c] * r.count, r.truncation))
        except ConfigError as e:  # e.g. a z threshold no latent entry can meet
            raise InvalidRequest(str(e)) from None
        self.served += r.count
        return images, c, seeds


INLINE_PARSE_BYTES = 2048  # larger bodies are parsed in the thread pool
ENCODE_THREADS = 1  # large answers encoded at once (2 gave a worse small-request p95 under load than 1)
INLINE_ENCODE_PIXELS = 4 * 64 * 64  # PNG-encoded on the event loop (~0.5 ms) rather than in the thread pool
MAX_ERRORS_SHOWN = 3  # a body with thousands of bad keys gets a short answer, not one line per key


def _message(errors: Sequence[Any]) -> str:
    """Validation errors as one short line: "seed: Input should be ..." (the field and the rule, never the input:
    an unknown field is not named, since its name is the client's)."""
    parts = []
    fields = ", ".join(f.alias or k for k, f in GenerateRequest.model_fields.items())
    for err in errors[:MAX_ERRORS_SHOWN]:
        if err.get("type") == "extra_forbidden":
            parts.append(f"an unknown field (the fields are {fields})")
            continue
        loc = [str(p)[:40] for p in err.get("loc", ()) if p not in ("body", "query")]
        parts.append(f"{'.'.join(loc) or 'request'}: {str(err.get('msg', 'invalid'))[:200]}")
    if len(errors) > MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more errors")
    return "; ".join(parts) or "invalid request"


def _no_field_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s object hook: a JSON object may name a field once (duplicates are not last-one-wins)."""
    if len({k for k, _ in pairs}) != len(pairs):
        raise InvalidRequest("a field appears more than once in a JSON object; give each field once")
    return dict(pairs)


def parse_json_request(body: bytes) -> GenerateRequest:
    """The POST body -> a request, strictly: JSON types only (no "5" for 5, no true for 1.0), no field twice."""
    try:  # one parse for the pre-checks (a field twice, too many fields); pydantic's strict one validates
        data = json.loads(body, object_pairs_hook=_no_field_twice)
    except InvalidRequest:
        raise
    except (ValueError, RecursionError):
        data = None  # model_validate_json below words the syntax error
    if isinstance(data, dict) and len(data) > len(GenerateRequest.model_fields):
        # Refused before validation, which would build one error per unknown key (~8 ms for 5,000 keys).
        names = ", ".join(f.alias or k for k, f in GenerateRequest.model_fields.items())
        raise InvalidRequest(f"the body has {len(data)} fields; a request has at most these: {names}")
    try:
        return GenerateRequest.model_validate_json(body, strict=True)
    except ValidationError as e:
        errors = e.errors(include_input=False)
        if errors and errors[0].get("type") == "json_invalid":
            # pydantic's JSON parser: bad syntax, nesting past its recursion limit, numbers past its range
            raise InvalidRequest("the body must be a JSON object like {\"class\": 3, \"seed\": 0}; "
                                 f"it is not valid JSON ({str(errors[0].get('ctx', {}).get('error', ''))[:80]})"
                                 ) from None
        raise InvalidRequest(_message(errors)) from None


def create_app(loaded: LoadedGenerator, limits: ServeLimits = ServeLimits(), title: Optional[str] = None,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The web app for one loaded generator (kept in memory for the app's life); ``allowed_hosts``: the Host
    header values it answers (port ignored), the names the bound address is reached by."""
    service = GenerationService(loaded, limits, title)
    limiter: list[anyio.CapacityLimiter] = []

    async def encode_large(function: Any, *args: Any) -> Any:
        # Large answers are encoded ENCODE_THREADS at a time: PIL holds the GIL for much of an encoding, and
        # eight at once would keep the event loop (and the small requests it serves) waiting for it.
        if not limiter:
            limiter.append(anyio.CapacityLimiter(ENCODE_THREADS))
        return await anyio.to_thread.run_sync(function, *args, limiter=limiter[0])

    info = service.describe()
    page = render_page(info)
    # No /docs or /redoc: they load scripts from a CDN. The OpenAPI schema stays under /api/.
    app = FastAPI(title=service.title, docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _message(exc.errors())})

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(status_code=413, content={"detail": str(exc)}, headers={"Connection": "close"})

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(RequestTooLarge)
    async def request_too_large(request: Request, exc: RequestTooLarge) -> JSONResponse:
        return JSONResponse(status_code=413, content={"detail": str(exc)})

    @app.exception_handler(UnsupportedMediaType)
    async def unsupported_media_type(request: Request, exc: UnsupportedMediaType) -> JSONResponse:
        return JSONResponse(status_code=415, content={"detail": str(exc)})

    @app.exception_handler(ServerBusy)
    async def server_busy(request: Request, exc: ServerBusy) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "1"})

    # Constant answers: async, so they never wait for a thread-pool slot behind encoding work.
    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.api_route("/static/app.js", methods=["GET", "HEAD"])
    async def script() -> Response:
        return Response(SCRIPT, media_type="text/javascript")

    @app.api_route("/static/app.css", methods=["GET", "HEAD"])
    async def style() -> Response:
        return Response(STYLE, media_type="text/css")

    @app.api_route("/api/info", methods=["GET", "HEAD"])
    async def model_info() -> dict[str, Any]:
        return info

    # The body is parsed here, not by FastAPI, to be strict and to answer every parse failure with 422.
    @app.post("/api/generate", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": GenerateRequest.model_json_schema(by_alias=True)}}}})
    async def generate_json(http: Request) -> JSONResponse:
        # JSON only: a form or plain-text POST (what a page elsewhere can send without asking) does no work here.
        media = http.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise UnsupportedMediaType("the body must be JSON, sent with Content-Type: application/json")
        body = await http.body()  # at most max_body_bytes (SizeLimits)
        # A real request is ~100 bytes; a big body (thousands of keys, each an error) is parsed in the thread
        # pool so the event loop keeps answering others meanwhile.
        request = parse_json_request(body) if len(body) <= INLINE_PARSE_BYTES else \
            await run_in_threadpool(parse_json_request, body)
        start = time.perf_counter()
        service.check(request)  # 422/413 before the budget is touched
        pixels = service.pixels(request)
        with service.budget.hold(pixels, _client(http)):
            # The model runs on the batching worker, large encodings in the thread pool. A small one (under
            # a millisecond) is done here: two thread hand-offs would cost more than it.
            images, c, seeds = await service.generate(request)
            if pixels <= INLINE_ENCODE_PIXELS:
                items = _encode_json(images, c, seeds, request.size)
            else:
                items = await encode_large(_encode_json, images, c, seeds, request.size)
        # A Response, not a dict: FastAPI would walk the dict again (jsonable_encoder) for nothing.
        return JSONResponse({"images": items, "truncation": request.truncation, "truncation_kind": service.kind,
                             "elapsed_ms": (time.perf_counter() - start) * 1000})

    def _encode_json(images: torch.Tensor, c: Optional[int], seeds: list[int], size: Optional[int]
                     ) -> list[dict[str, Any]]:
        return [{"seed": s, "class": c, "class_name": loaded.info.class_names[c] if c is not None else None,
                 "png": "data:image/png;base64," + base64.b64encode(png_bytes(image, size)).decode()}
                for s, image in zip(seeds, images)]

    @app.get("/api/generate.png")
    async def generate_png(request: Annotated[GenerateRequest, Query()], http: Request) -> Response:
        repeated = sorted({k for k, _ in http.query_params.multi_items()
                           if len(http.query_params.getlist(k)) > 1})
        if repeated:
            raise InvalidRequest("a query parameter is repeated; give each one once")
        service.check(request)
        with service.budget.hold(service.pixels(request), _client(http)):
            images, _, _ = await service.generate(request)
            cols = request.cols or math.ceil(math.sqrt(len(images)))
            data = await encode_large(_encode_grid, images, cols, request.size)
        return Response(data, media_type="image/png")

    def _encode_grid(images: torch.Tensor, cols: int, size: Optional[int]) -> bytes:
        buffer = io.BytesIO()
        image_grid(images, cols=cols, size=size).save(buffer, format="PNG")
        return buffer.getvalue()

    app.add_middleware(SizeLimits, max_body=limits.max_body_bytes, max_query=limits.max_query_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    # Outside Starlette's own outermost layer (ServerErrorMiddleware), so even a 500 carries the headers.
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeaders(build_stack())  # type: ignore[method-assign]
    return app
