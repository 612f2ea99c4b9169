"""Request ids, the per-request log line, request counters, and the log formats.

:class:`RequestMiddleware` (pure ASGI, a few microseconds per request) gives every request an
id (the caller's ``X-Request-ID`` when it is sane, else a fresh one), returns it in the
response's ``X-Request-ID`` header, counts ``cidserve_requests_total{model,endpoint,status}``
and ``cidserve_inflight_requests``, and writes one log line per request on the
``cidserve.access`` logger with the model, the status and the stage timings.

Code deeper in the request (the loader, the inference service) adds what it knows to the
current :class:`RequestInfo` with :func:`note_model` and :func:`note_stages`; every log line
written while a request runs carries its ``request_id``.

:func:`setup_logging` installs the format: ``json`` (one object per line, for log shippers),
``text`` (for a terminal) or ``auto`` (text on a terminal, JSON otherwise).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.metrics import Metrics

access_log = logging.getLogger("cidserve.access")

REQUEST_ID_HEADER = b"x-request-id"
# What a caller-supplied id may look like: short, printable, no spaces or quotes (it ends up
# in log lines and response headers).
_SANE_ID = re.compile(rb"[A-Za-z0-9._:/@+=-]{1,128}")
# Requests that are neither counted in flight nor logged above DEBUG: probes and scrapes.
_QUIET_PREFIXES = ("/health", "/metrics")
NO_MODEL = "none"
NO_ROUTE = "unmatched"


class RequestInfo:
    """What is known about the request being handled; filled in as it goes."""

    __slots__ = ("model", "request_id", "stages")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.model: str | None = None
        self.stages: dict[str, float] | None = None


_current: ContextVar[RequestInfo | None] = ContextVar("cidserve_request", default=None)


def current_request() -> RequestInfo | None:
    """The request being handled in this task, if any."""
    return _current.get()


def note_model(model_id: str) -> None:
    """Name the (loaded, known) model this request is about: the ``model`` label and log field."""
    info = _current.get()
    if info is not None:
        info.model = model_id


def note_stages(stages: dict[str, float]) -> None:
    """Attach the request's stage timings (milliseconds) to its log line."""
    info = _current.get()
    if info is not None:
        info.stages = stages


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
        info = RequestInfo(_request_id(scope))
        token = _current.set(info)
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
            _current.reset(token)
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


# --- log formats -------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message", "taskName"}
)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the request id when
    the line was written during a request, any ``extra=`` fields, and ``exc`` for tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = _extras(record)
        if "request_id" not in extra:
            info = _current.get()
            if info is not None:
                doc["request_id"] = info.request_id
        doc.update({k: v for k, v in extra.items() if v is not None})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extras(record)
        request_id = extra.pop("request_id", None)
        if request_id is None:
            info = _current.get()
            request_id = info.request_id if info is not None else None
        parts = []
        if extra.get("model"):
            parts.append(f"model={extra['model']}")
        stages = extra.get("stages")
        if stages:
            parts.append(" ".join(f"{k}={v:.1f}" for k, v in stages.items()))
        if request_id:
            parts.append(f"id={request_id}")
        if not parts:
            return line
        head, nl, tail = line.partition("\n")  # keep a traceback below the first line
        return f"{head} {' '.join(parts)}{nl}{tail}"


def make_formatter(fmt: str, stream: IO[str] | None = None) -> logging.Formatter:
    """The formatter for ``json``, ``text`` or ``auto`` (text when ``stream`` is a terminal)."""
    if fmt == "auto":
        stream = stream or sys.stderr
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup_logging(level: str, fmt: str = "auto", stream: IO[str] | None = None) -> None:
    """Send every log line (cidserve's and uvicorn's) to ``stream`` (stderr) in ``fmt``."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(fmt, stream))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # The access log line is ours (with request id, model and stages); uvicorn's would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every outgoing request at INFO; keep that for debugging only.
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
