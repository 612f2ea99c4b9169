"""Tracing as an operator sees it: a request continues the caller's W3C trace, its stages are
child spans of the route's server span, a load shows its fetch and build, the trace id is on
the request's log line and in the reply's ``traceparent``, and with tracing off (or without
OpenTelemetry) nothing changes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.chain.rpc import JsonRpcClient
from services.http.app import create_app
from services.observability.logs import JsonFormatter
from services.observability.tracing import Tracing, build_tracing, tracing_with_exporter
from services.settings import Settings
from services.wiring import build_services
from tests.anvil import Anvil, anvil_binary
from tests.harness import ServerThread
from tests.models import linear_model

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def traceparent(trace_id: str = TRACE_ID, parent_id: str = PARENT_ID) -> str:
    return f"00-{trace_id}-{parent_id}-01"


@dataclass
class Traced:
    client: httpx.Client
    spans: InMemorySpanExporter
    log: io.StringIO
    model: PublishResult

    def trace(self, trace_id: str) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans.get_finished_spans()
            if s.context is not None and format(s.context.trace_id, "032x") == trace_id
        ]

    def log_records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PublishResult]:
    root = tmp_path_factory.mktemp("tracing")
    store = LocalContentStore(root / "data" / "store")
    pub = asyncio.run(publish_model(store, linear_model(root / "t.onnx", seed=5), name="traced"))
    return root, pub


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """cidserve's log lines (access line included) as JSON, written while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cidserve")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def _serve(root: Path, given: Tracing | None, **overrides: object) -> Iterator[httpx.Client]:
    settings = Settings(
        data_dir=root / "data",
        session_probe=False,
        **overrides,  # type: ignore[arg-type]
    )
    services = build_services(
        settings, store=LocalContentStore(root / "data" / "store"), tracing=given
    )
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield client


@pytest.fixture
def traced(published: tuple[Path, PublishResult], json_log: io.StringIO) -> Iterator[Traced]:
    """A gateway whose spans go to an in-memory exporter, with the prediction cache on."""
    root, pub = published
    exporter = InMemorySpanExporter()
    tracing = tracing_with_exporter(exporter, batch=False)
    with _serve(root, tracing, prediction_cache=True) as client:
        yield Traced(client, exporter, json_log, pub)


def _execute(client: httpx.Client, model_id: str, headers: dict[str, str]) -> httpx.Response:
    return client.post(
        "/api/inference/execute",
        json={
            "model_id": model_id,
            "input_data": {"format": "tensor", "content": [[random.random() for _ in range(8)]]},
        },
        headers=headers,
    )


def _by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def _parent_id(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


def _span_id(s: ReadableSpan) -> int:
    assert s.context is not None
    return s.context.span_id


def test_a_load_shows_its_license_fetch_and_build_stages(traced: Traced):
    load_trace = "0af7651916cd43dd8448eb211c80319c"
    r = traced.client.post(
        "/api/models/load",
        json={"metadataCid": traced.model.metadata_cid},
        headers={"traceparent": traceparent(load_trace)},
    )
    assert r.status_code == 200, r.text
    spans = _by_name(traced.trace(load_trace))
    server = spans["POST /api/models/load"]
    assert server.kind == SpanKind.SERVER
    assert _parent_id(server) == int(PARENT_ID, 16)
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/api/models/load"

    load = spans["model.load"]
    assert _parent_id(load) == _span_id(server)
    assert load.attributes is not None
    assert load.attributes["cidserve.model_id"] == traced.model.model_id
    for stage in ("model.fetch_metadata", "model.fetch", "model.build"):
        assert _parent_id(spans[stage]) == _span_id(load), stage
    meta = spans["model.fetch_metadata"].attributes
    assert meta is not None and meta["cidserve.store"] == "local"
    assert isinstance(meta["cidserve.bytes"], int) and meta["cidserve.bytes"] > 0
    fetch = spans["model.fetch"].attributes
    assert fetch is not None and fetch["cidserve.bytes"] > 0
    build = spans["model.build"].attributes
    assert build is not None and build["cidserve.provider"] == "CPUExecutionProvider"
    assert _parent_id(spans["license.token_of_content"]) == _span_id(server)
    # Ordered as they ran: fetch the metadata, then the model, then build.
    starts = [spans[n].start_time for n in ("model.fetch_metadata", "model.fetch", "model.build")]
    assert starts == sorted(starts)


def test_a_request_continues_the_callers_trace_with_its_stages_as_children(traced: Traced):
    load = traced.client.post("/api/models/load", json={"metadataCid": traced.model.metadata_cid})
    assert load.status_code == 200, load.text
    model_id = traced.model.model_id
    r = _execute(traced.client, model_id, {"traceparent": traceparent()})
    assert r.status_code == 200, r.text

    spans = _by_name(traced.trace(TRACE_ID))
    server = spans["POST /api/inference/execute"]
    assert server.kind == SpanKind.SERVER
    assert _parent_id(server) == int(PARENT_ID, 16)
    assert server.attributes is not None
    assert server.attributes["cidserve.model_id"] == model_id
    # The reply names the server span, so the caller can link to it.
    assert r.headers["traceparent"] == traceparent(TRACE_ID, format(_span_id(server), "016x"))

    order = ["license.check", "cache.lookup", "preprocess", "run", "postprocess", "cache.store"]
    for name in order:
        assert _parent_id(spans[name]) == _span_id(server), name
        attrs = spans[name].attributes
        assert attrs is not None and attrs.get("cidserve.model_id", model_id) == model_id
    assert [spans[n].start_time for n in order] == sorted(spans[n].start_time for n in order)
    lookup = spans["cache.lookup"].attributes
    assert lookup is not None and lookup["cidserve.cache_status"] == "miss"
    assert spans["run"].end_time is not None and spans["postprocess"].start_time is not None
    assert spans["run"].end_time <= spans["postprocess"].start_time


def test_a_request_without_traceparent_starts_a_trace_and_errors_are_marked(traced: Traced):
    r = _execute(traced.client, "nope-00000000", {})
    assert r.status_code == 404
    header = r.headers["traceparent"]
    version, trace_id, span_id, flags = header.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    assert int(flags, 16) & 1  # sampled
    (server,) = traced.trace(trace_id)
    assert server.parent is None
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 404

    # A malformed traceparent is ignored: a new trace, not a failure.
    bad = _execute(traced.client, "nope-00000000", {"traceparent": "00-zz-yy-01"})
    assert bad.status_code == 404
    assert bad.headers["traceparent"].split("-")[1] not in ("zz", trace_id)


def test_a_model_error_is_recorded_on_its_span(traced: Traced):
    assert traced.client.post(
        "/api/models/load", json={"metadataCid": traced.model.metadata_cid}
    ).is_success
    trace_id = "11111111111111111111111111111111"
    r = traced.client.post(
        "/api/inference/execute",
        json={
            "model_id": traced.model.model_id,
            "input_data": {"format": "tensor", "content": [[1.0, 2.0]]},  # 2 values, not 8
        },
        headers={"traceparent": traceparent(trace_id)},
    )
    assert r.status_code in (400, 422), r.text
    spans = _by_name(traced.trace(trace_id))
    failed = [s for s in spans.values() if s.status.status_code == StatusCode.ERROR]
    assert failed, list(spans)
    assert all(s.name != "POST /api/inference/execute" for s in failed)  # a 4xx is no error


def test_the_json_log_line_carries_the_trace_and_span_ids(traced: Traced):
    load = traced.client.post(
        "/api/models/load",
        json={"metadataCid": traced.model.metadata_cid},
        headers={
            "traceparent": traceparent("22222222222222222222222222222222"),
            "X-Request-ID": "l1",
        },
    )
    assert load.status_code == 200
    r = _execute(traced.client, traced.model.model_id, {"traceparent": traceparent()})
    assert r.status_code == 200
    server_span = r.headers["traceparent"].split("-")[2]
    records = traced.log_records()
    (access,) = [
        rec
        for rec in records
        if rec["logger"] == "cidserve.access" and rec.get("request_id") == r.headers["X-Request-ID"]
    ]
    assert access["trace_id"] == TRACE_ID
    assert access["span_id"] == server_span
    # Lines written inside the request carry the trace too (the load's own line).
    loaded = [rec for rec in records if rec.get("request_id") == "l1"]
    assert {rec["logger"] for rec in loaded} >= {"cidserve.loader", "cidserve.access"}, loaded
    assert all(rec["trace_id"] == "22222222222222222222222222222222" for rec in loaded), loaded


def test_with_tracing_off_requests_work_without_trace_headers_or_ids(
    published: tuple[Path, PublishResult], json_log: io.StringIO
):
    root, pub = published
    with _serve(root, None, tracing="off", prediction_cache=False) as client:
        assert client.post("/api/models/load", json={"metadataCid": pub.metadata_cid}).is_success
        r = _execute(client, pub.model_id, {"traceparent": traceparent(), "X-Request-ID": "off-1"})
        assert r.status_code == 200, r.text
        assert "traceparent" not in r.headers
    records = [json.loads(line) for line in json_log.getvalue().splitlines()]
    (line,) = [rec for rec in records if rec.get("request_id") == "off-1"]
    assert line["status"] == 200
    assert "trace_id" not in line and "span_id" not in line


def test_tracing_turns_on_from_the_otlp_endpoint_or_the_setting():
    assert not build_tracing("auto", {}).enabled
    assert not build_tracing("off", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}).enabled
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}
    assert not build_tracing("auto", disabled).enabled
    for mode, env in (
        ("auto", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}),
        ("auto", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}),
        ("on", {}),
    ):
        tracing = build_tracing(mode, env)  # type: ignore[arg-type]
        try:
            assert tracing.enabled, (mode, env)
        finally:
            tracing.shutdown()  # nothing recorded: nothing sent


def test_without_opentelemetry_installed_tracing_is_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    for name in list(sys.modules):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter", None)
    with caplog.at_level(logging.WARNING, logger="cidserve.tracing"):
        tracing = build_tracing("on", {})
    assert not tracing.enabled
    assert "not installed" in caplog.text
    assert tracing.start_request({"type": "http", "method": "GET", "path": "/"}) is None


def test_the_chain_rpc_calls_are_spans(tmp_path: Path):
    if anvil_binary() is None:
        pytest.skip("anvil is not installed (npm ci)")
    exporter = InMemorySpanExporter()
    tracing = tracing_with_exporter(exporter, batch=False)

    async def main(url: str) -> int:
        rpc = JsonRpcClient(url, timeout_s=5)
        try:
            with tracing.active():
                return await rpc.chain_id()
        finally:
            await rpc.aclose()

    with Anvil(tmp_path) as anvil:
        chain_id = asyncio.run(main(anvil.url))
    assert chain_id > 0
    (rpc_span,) = exporter.get_finished_spans()
    assert rpc_span.name == "chain.rpc"
    assert rpc_span.attributes is not None
    assert rpc_span.attributes["cidserve.rpc_method"] == "eth_chainId"
