"""ASGI middleware: the request-body bound, and request ids, counters and the access log.

:class:`RequestMiddleware` (pure ASGI, a few microseconds per request) gives every request an
id (the caller's ``X-Request-ID`` when it is sane, else a fresh one), returns it in the
response's ``X-Request-ID`` header, counts ``cidserve_requests_total{model,endpoint,status}``
and ``cidserve_inflight_requests``, and writes one log line per request on the
``cidserve.access`` logger with the model, the status and the stage timings
(:mod:`services.observability.context`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.observability.context import begin_request, end_request
from services.observability.metrics import Metrics


def error_body(title: str, message: str) -> bytes:
    return orjson.dumps({"success": False, "error": title, "message": message})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the bound (FastAPI re-raises
    HTTPExceptions from body parsing instead of turning them into 400s)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over {limit} bytes (CIDSERVE_MAX_BODY_BYTES)")


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
    return uuid.uuid4().hex


class RequestMiddleware:
    """Request id, request counters and the access log line; see the module docstring.

    Label values stay bounded: ``endpoint`` is the route's path template (``unmatched`` when
    no route matched), ``model`` is set only for a model the service knows (``none``
    otherwise), ``status`` is the HTTP status code.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.requests = metrics.requests
        self.inflight = metrics.inflight_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        info, token = begin_request(_request_id(scope))
        path: str = scope.get("path", "")
        quiet = path.startswith(_QUIET_PREFIXES)
        status = 500
        header = (REQUEST_ID_HEADER, info.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
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
                    },
                )
