"""ASGI middleware: the request-body bound, JSON bodies only on JSON routes, and request ids,
counters and the access log.

:class:`RequestMiddleware` (pure ASGI, a few microseconds per request) gives every request an
id (the caller's ``X-Request-ID`` when it is sane, else a fresh one), returns it in the
response's ``X-Request-ID`` header, counts ``cidserve_requests_total{model,endpoint,status}``
and ``cidserve_inflight_requests``, and writes one log line per request on the
``cidserve.access`` logger with the model, the status and the stage timings
(:mod:`services.observability.context`). With tracing on it also opens the request's server
span (continuing the caller's W3C ``traceparent``), returns the span's own ``traceparent`` and
puts ``trace_id`` and ``span_id`` on the access line (:mod:`services.observability.tracing`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Sequence

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.observability.context import begin_request, end_request
from services.observability.metrics import Metrics
from services.observability.tracing import TRACEPARENT, Tracing


def error_body(title: str, message: str) -> bytes:
    return orjson.dumps({"success": False, "error": title, "message": message})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the bound (FastAPI re-raises
    HTTPExceptions from body parsing instead of turning them into 400s)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over {limit} bytes (CIDSERVE_MAX_BODY_BYTES)")


# A refused body up to this size is read and dropped before the 413 goes out: a client still
# sending it would otherwise see the connection reset instead of the reply. Larger ones (or
# ones that take longer than DRAIN_MAX_S) are not read: the connection just closes.
DRAIN_MAX_BYTES = 16 << 20
DRAIN_MAX_S = 2.0


async def _drain(scope: Scope, receive: Receive, max_bytes: int = DRAIN_MAX_BYTES) -> None:
    """Read and drop what is left of the request body, within the bounds above; never when
    the client waits for ``100 Continue`` (reading would invite the body)."""
    if any(name == b"expect" for name, _ in scope.get("headers", ())):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_MAX_S
    left = max_bytes
    while left > 0:
        try:
            message = await asyncio.wait_for(receive(), deadline - loop.time())
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        left -= len(message.get("body", b""))


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reply(send, 400, "Bad request", "Content-Length is not a number")
                    return
                if declared > limit:
                    if declared <= DRAIN_MAX_BYTES:
                        await _drain(scope, receive)
                    await self._too_large(send, declared)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _drain(scope, receive, DRAIN_MAX_BYTES - seen)
                await self._too_large(send, seen)

    async def _too_large(self, send: Send, size: int) -> None:
        await self._reply(
            send,
            413,
            "Payload too large",
            f"request body is over {self.max_bytes} bytes (CIDSERVE_MAX_BODY_BYTES); got {size}+",
        )

    @staticmethod
    async def _reply(send: Send, status: int, title: str, message: str) -> None:
        body = error_body(title, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --- JSON bodies only on JSON routes ---------------------------------------------------------

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_TYPE = "application/json"


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or ``application/<anything>+json``, any parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_TYPE or (media.startswith("application/") and media.endswith("+json"))


def route_pattern(template: str) -> re.Pattern[str]:
    """A route's path template (``/api/models/{model_id}/predict``) as a full-path regex."""
    parts = re.split(r"(\{[^/{}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


class JsonOnlyMiddleware:
    """A POST, PUT or PATCH to a JSON route must say ``Content-Type: application/json`` (or
    ``+json``): any other type gets 415 before the route runs. What a browser page may send to
    another origin without asking first (a CORS "simple request": ``text/plain``, a form) is
    thereby refused. A request without a Content-Type is taken as JSON from a client that is
    not a browser (command-line clients, tritonclient) and refused when it carries an
    ``Origin`` header (a browser's).

    ``raw_body_routes`` are the path templates of the routes that take other bodies (uploads,
    raw tensors, the V2 binary tensor extension); they decode and check their own types.
    """

    def __init__(self, app: ASGIApp, raw_body_routes: Sequence[str]) -> None:
        self.app = app
        self.raw_body = tuple(route_pattern(t) for t in raw_body_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if any(p.fullmatch(path) for p in self.raw_body):
            await self.app(scope, receive, send)
            return
        content_type = origin = None
        for name, value in scope.get("headers", ()):
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"origin":
                origin = value
        if content_type is not None and content_type.strip():
            if is_json_media_type(content_type):
                await self.app(scope, receive, send)
                return
            got = repr(content_type.split(";", 1)[0].strip()[:100])
        elif origin is None:
            await self.app(scope, receive, send)
            return
        else:
            got = "none"
        message = f"this route takes a JSON body: send Content-Type: {JSON_TYPE} (got {got})"
        if path.startswith("/v2"):
            body = orjson.dumps({"error": message})
        else:
            body = orjson.dumps(
                {
                    "success": False,
                    "error": "Unsupported media type",
                    "message": message,
                    "expected": JSON_TYPE,
                }
            )
        await send(
            {
                "type": "http.response.start",
                "status": 415,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --- request ids, counters and the access log ----------------------------------------------

access_log = logging.getLogger("cidserve.access")

REQUEST_ID_HEADER = b"x-request-id"
# What a caller-supplied id may look like: short, printable, no spaces or quotes (it ends up
# in log lines and response headers).
_SANE_ID = re.compile(rb"[A-Za-z0-9._:/@+=-]{1,128}")
# Requests that are neither counted in flight nor logged above DEBUG: probes and scrapes.
_QUIET_PREFIXES = ("/health", "/metrics")
NO_MODEL = "none"
NO_ROUTE = "unmatched"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            if _SANE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(16).hex()


class RequestMiddleware:
    """Request id, request counters and the access log line; see the module docstring.

    Label values stay bounded: ``endpoint`` is the route's path template (``unmatched`` when
    no route matched), ``model`` is set only for a model the service knows (``none``
    otherwise), ``status`` is the HTTP status code.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self.app = app
        self.requests = metrics.requests
        self.inflight = metrics.inflight_requests
        self.tracing = tracing

    def _tracing(self, scope: Scope) -> Tracing:
        """The instance's tracing: as given, else the app's ``Services.tracing``."""
        if self.tracing is None:
            services = getattr(getattr(scope.get("app"), "state", None), "services", None)
            self.tracing = getattr(services, "tracing", None) or Tracing()
        return self.tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        info, token = begin_request(_request_id(scope))
        path: str = scope.get("path", "")
        quiet = path.startswith(_QUIET_PREFIXES)
        status = 500
        traced = None if quiet else self._tracing(scope).start_request(scope)
        headers = [(REQUEST_ID_HEADER, info.request_id.encode("ascii"))]
        if traced is not None:
            headers.append((TRACEPARENT, traced.traceparent.encode("ascii")))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        if not quiet:
            self.inflight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not quiet:
                self.inflight.dec()
            end_request(token)
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or NO_ROUTE
            model = info.model or NO_MODEL
            if traced is not None:
                traced.finish(status, getattr(route, "path", None), model_id=info.model)
            self.requests.labels(model, endpoint, str(status)).inc()
            level = logging.DEBUG if quiet and status < 500 else logging.INFO
            if access_log.isEnabledFor(level):
                ms = (time.perf_counter() - t0) * 1000
                access_log.log(
                    level,
                    "%s %s %d %.1f ms",
                    scope.get("method", ""),
                    path,
                    status,
                    ms,
                    extra={
                        "request_id": info.request_id,
                        "method": scope.get("method", ""),
                        "path": path,
                        "endpoint": endpoint,
                        "status": status,
                        "duration_ms": round(ms, 3),
                        "model": info.model,
                        "stages": info.stages,
                        "trace_id": traced.trace_id if traced is not None else None,
                        "span_id": traced.span_id if traced is not None else None,
                    },
                )
