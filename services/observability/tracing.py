"""Tracing with OpenTelemetry: one server span per HTTP request, child spans for its stages,
and the trace id in the logs.

Tracing is optional. The ``otel`` extra (``opentelemetry-api``, ``-sdk``,
``-exporter-otlp-proto-http``) provides it; without it, or when it is not asked for, every
call here is a no-op that costs a context-variable read. :func:`build_tracing` decides from
``CIDSERVE_TRACING``:

* ``auto`` (default): on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and ``OTEL_SDK_DISABLED`` is not ``true``;
* ``on``: on, exporting to the OTLP endpoint those variables name (the exporter's default,
  ``http://localhost:4318``, when none is set);
* ``off``: off.

A :class:`Tracing` belongs to one service instance (``Services.tracing``): its own
``TracerProvider`` (service name ``cidserve``, or ``OTEL_SERVICE_NAME``), spans exported in
batches by a background thread. Nothing is installed globally in OpenTelemetry.

The rest of the code opens spans with :func:`span`, which finds the tracer of the instance
serving the current request in a context variable: the HTTP middleware sets it for each
request (:meth:`Tracing.start_request`, which also honours an incoming W3C ``traceparent``),
and asyncio tasks started from the request inherit it. Code that runs with no tracer set (a
thread pool, a background job) opens no spans.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("cidserve.tracing")

SERVICE_NAME = "cidserve"
ATTRIBUTE_PREFIX = "cidserve."
TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

Mode = Literal["auto", "on", "off"]


class SpanLike(Protocol):
    """What code holding a span may do with it (an OpenTelemetry span, or the no-op one)."""

    def set_attribute(self, key: str, value: Any) -> Any: ...


class _NoopSpan:
    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None


class _NoopScope:
    """The context manager :func:`span` returns when tracing is off: stateless, shared."""

    __slots__ = ()

    def __enter__(self) -> SpanLike:
        return _NOOP_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP_SPAN = _NoopSpan()
_NOOP_SCOPE = _NoopScope()

# The tracer of the instance serving this request (None: tracing off, or outside a request).
_active: ContextVar[Tracer | None] = ContextVar("cidserve_tracer", default=None)


def _attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {ATTRIBUTE_PREFIX + k: v for k, v in attrs.items() if v is not None}


def span(name: str, **attrs: Any) -> AbstractContextManager[SpanLike]:
    """A child span of the current one, named ``name``, with ``attrs`` as ``cidserve.<key>``
    attributes (None values are left out); a no-op when no tracer is active. An exception
    leaving the block is recorded on the span, which is marked as an error."""
    tracer = _active.get()
    if tracer is None:
        return _NOOP_SCOPE
    return tracer.start_as_current_span(name, attributes=_attributes(attrs))


def tracing_active() -> bool:
    """Whether spans are recorded for the current request."""
    return _active.get() is not None


def record_span(
    name: str, start_ns: int, end_ns: int, *, error: BaseException | None = None, **attrs: Any
) -> None:
    """A finished child span of the current one, for a stage that ran in a worker thread
    (where the request's context is not current): ``start_ns`` and ``end_ns`` are
    ``time.time_ns()`` readings taken there; ``error``, the exception that ended the stage,
    is recorded and marks the span as an error. A no-op when no tracer is active."""
    tracer = _active.get()
    if tracer is None:
        return
    recorded = tracer.start_span(name, start_time=start_ns, attributes=_attributes(attrs))
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        recorded.record_exception(error)
        recorded.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    recorded.end(end_time=end_ns)


def set_attributes(target: SpanLike, **attrs: Any) -> None:
    """Set ``cidserve.<key>`` attributes on a span from :func:`span` (None values skipped)."""
    for key, value in attrs.items():
        if value is not None:
            target.set_attribute(ATTRIBUTE_PREFIX + key, value)


def current_ids() -> tuple[str, str] | None:
    """The (trace id, span id) of the current span as hex, when tracing is active."""
    if _active.get() is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class RequestSpan:
    """The server span of one HTTP request, current (with its tracer) until :meth:`finish`."""

    __slots__ = (
        "_context_token",
        "_method",
        "_span",
        "_tracer_token",
        "span_id",
        "trace_id",
        "traceparent",
    )

    def __init__(self, tracer: Tracer, scope: Mapping[str, Any]) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        method = self._method = str(scope.get("method", ""))
        path = str(scope.get("path", ""))
        parent = _incoming_context(scope.get("headers", ()))
        self._span: Span = tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        ctx = self._span.get_span_context()
        self.trace_id = format(ctx.trace_id, "032x")
        self.span_id = format(ctx.span_id, "016x")
        self.traceparent = f"00-{self.trace_id}-{self.span_id}-{int(ctx.trace_flags):02x}"
        self._context_token = otel_context.attach(trace.set_span_in_context(self._span, parent))
        self._tracer_token: Token[Tracer | None] = _active.set(tracer)

    def finish(self, status: int, endpoint: str | None, **attrs: Any) -> None:
        """Name the span after the route, record the status, end it and make it not current."""
        from opentelemetry import context as otel_context
        from opentelemetry.trace import Status, StatusCode

        s = self._span
        if endpoint is not None:
            s.update_name(f"{self._method} {endpoint}")
            s.set_attribute("http.route", endpoint)
        s.set_attribute("http.response.status_code", status)
        for key, value in _attributes(attrs).items():
            s.set_attribute(key, value)
        if status >= 500:
            s.set_status(Status(StatusCode.ERROR))
        s.end()
        _active.reset(self._tracer_token)
        otel_context.detach(self._context_token)


def _incoming_context(headers: Any) -> Any:
    """The W3C trace context of the caller (``traceparent``, ``tracestate``), if it sent one."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in (TRACEPARENT, TRACESTATE):
            carrier[name.decode("latin-1")] = value.decode("latin-1")
    if not carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


class Tracing:
    """The tracing of one service instance: off (the default), or a tracer and its provider."""

    def __init__(self, tracer: Tracer | None = None, provider: Any = None) -> None:
        self.tracer = tracer
        self._provider = provider

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def start_request(self, scope: Mapping[str, Any]) -> RequestSpan | None:
        """The server span of a request (None when tracing is off); see :class:`RequestSpan`."""
        if self.tracer is None:
            return None
        return RequestSpan(self.tracer, scope)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Spans opened inside the block (outside any request) use this instance's tracer."""
        if self.tracer is None:
            yield
            return
        token = _active.set(self.tracer)
        try:
            yield
        finally:
            _active.reset(token)

    def activate(self) -> None:
        """Make this tracer current in the calling task from now on (start-up work)."""
        if self.tracer is not None:
            _active.set(self.tracer)

    def shutdown(self) -> None:
        """Export what is pending and stop (blocking: call from a thread)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None


def tracing_with_exporter(exporter: SpanExporter, *, batch: bool = True) -> Tracing:
    """A :class:`Tracing` exporting to ``exporter`` (in batches from a background thread, or
    each span as it ends with ``batch=False``: for an in-memory exporter)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return Tracing(provider.get_tracer("cidserve"), provider)


def wanted(mode: Mode, environ: Mapping[str, str]) -> bool:
    """Whether ``CIDSERVE_TRACING=mode`` with these environment variables turns tracing on."""
    if mode == "off" or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return mode == "on" or any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def build_tracing(mode: Mode, environ: Mapping[str, str] | None = None) -> Tracing:
    """The instance's tracing for ``CIDSERVE_TRACING`` (module docstring): spans exported over
    OTLP/HTTP, or off. Asked for without the ``otel`` extra installed: logged, and off."""
    environ = os.environ if environ is None else environ
    if not wanted(mode, environ):
        return Tracing()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning(
            "tracing asked for (CIDSERVE_TRACING=%s) but OpenTelemetry is not installed "
            "(pip install 'cidserve[otel]'): tracing is off",
            mode,
        )
        return Tracing()
    tracing = tracing_with_exporter(OTLPSpanExporter())
    endpoint = next((environ[n] for n in ENDPOINT_VARIABLES if environ.get(n)), "default")
    log.info("tracing on: spans exported over OTLP/HTTP to %s", endpoint)
    return tracing
