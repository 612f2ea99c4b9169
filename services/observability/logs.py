"""Log formats: ``json`` (one object per line, for log shippers), ``text`` (for a terminal)
or ``auto`` (text on a terminal, JSON otherwise); every line written while a request runs
carries its ``request_id``, and with tracing on the ``trace_id`` and ``span_id`` of the span
it was written in (:mod:`services.observability.tracing`).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from services.observability.context import current_request
from services.observability.tracing import current_ids

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
    the line was written during a request, the trace and span ids when it was written in a
    span, any ``extra=`` fields, and ``exc`` for tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = _extras(record)
        if "request_id" not in extra:
            info = current_request()
            if info is not None:
                doc["request_id"] = info.request_id
        if "trace_id" not in extra:
            ids = current_ids()
            if ids is not None:
                doc["trace_id"], doc["span_id"] = ids
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
            info = current_request()
            request_id = info.request_id if info is not None else None
        parts = []
        if extra.get("model"):
            parts.append(f"model={extra['model']}")
        stages = extra.get("stages")
        if stages:
            parts.append(" ".join(f"{k}={v:.1f}" for k, v in stages.items()))
        if request_id:
            parts.append(f"id={request_id}")
        trace_id = extra.get("trace_id")
        if trace_id is None:
            ids = current_ids()
            trace_id = ids[0] if ids is not None else None
        if trace_id:
            parts.append(f"trace={trace_id}")
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
    # Neither format shows the caller's file and line, the thread or the process: not
    # collecting them (the logging module's documented switches) spares every line a stack
    # walk, a getpid() system call and two lookups, on the event loop for the access log.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
