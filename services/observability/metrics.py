"""Every Prometheus metric cidserve exports, in one place.

A :class:`Metrics` instance belongs to one app (``Services.metrics``) and registers its
metrics in its own :class:`~prometheus_client.CollectorRegistry`, so two apps in one process
do not collide. When ``PROMETHEUS_MULTIPROC_DIR`` is set (several worker processes), values
are written to that directory by every process and ``GET /metrics`` aggregates them.

Besides cidserve's own metrics the registry carries ``cidserve_build_info`` (always 1, the
versions as labels), ``python_info`` and the ``process_*`` metrics of this process (CPU
seconds, resident memory, open file descriptors, start time). With several worker processes
the ``process_*`` metrics are left out: prometheus_client cannot add them up across
processes, and one worker's figures would pass for the instance's.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.multiprocess import MultiProcessCollector

# Request latencies on a CPU inference server: sub-millisecond cache hits to multi-second
# cold paths.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
STAGES = ("queue", "preprocess", "inference", "postprocess", "total")
SHED_REASONS = ("queue_full", "queue_delay", "rate_limited")


def _version_of(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def build_labels() -> dict[str, str]:
    """The labels of ``cidserve_build_info``: what is running."""
    ort = _version_of("onnxruntime")
    if ort == "unknown":
        ort = _version_of("onnxruntime-gpu")
    return {
        "version": _version_of("cidserve"),
        "onnxruntime": ort,
        "python": platform.python_version(),
    }


class _CounterPair:
    """Counts into a counter and its deprecated former name at once."""

    def __init__(self, current: Counter, deprecated: Counter) -> None:
        self.current = current
        self.deprecated = deprecated

    def inc(self, amount: float = 1) -> None:
        self.current.inc(amount)
        self.deprecated.inc(amount)


def multiprocess_dir() -> str | None:
    """The multiprocess directory when several worker processes share metrics."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The metric objects; see the module docstring."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cidserve_requests_total",
            "HTTP requests handled.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "cidserve_request_duration_seconds",
            "Time per inference request stage (queue, preprocess, inference, postprocess, total).",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_load_duration = Histogram(
            "cidserve_model_load_duration_seconds",
            "Model load time by where the model bytes came from (memory, disk_cache, ipfs, local).",
            ["source"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.models_loaded = Gauge(
            "cidserve_models_loaded",
            "Models in the session cache.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.session_cache_hits = Counter(
            "cidserve_session_cache_hits_total",
            "Requests whose model was in memory.",
            registry=r,
        )
        self.session_cache_misses = Counter(
            "cidserve_session_cache_misses_total",
            "Requests or loads whose model was not in memory.",
            registry=r,
        )
        self.session_cache_evictions = Counter(
            "cidserve_session_cache_evictions_total",
            "Models evicted from the session cache.",
            registry=r,
        )
        self.prediction_cache_hits = Counter(
            "cidserve_prediction_cache_hits_total",
            "Replies served from the prediction cache.",
            registry=r,
        )
        self.prediction_cache_misses = Counter(
            "cidserve_prediction_cache_misses_total",
            "Cacheable requests not found in the prediction cache.",
            registry=r,
        )
        self.prediction_cache_errors = Counter(
            "cidserve_prediction_cache_errors_total",
            "Prediction-cache operations that failed (backend down or slow).",
            registry=r,
        )
        self.license_checks = Counter(
            "cidserve_license_checks_total",
            "License checks by result (valid, invalid, cached_valid, cached_invalid, error).",
            ["result"],
            registry=r,
        )
        self.signature_checks = Counter(
            "cidserve_signature_checks_total",
            "Signed requests by result (ok, missing, malformed, stale, forged, replay).",
            ["result"],
            registry=r,
        )
        self.ipfs_fetched_bytes = Counter(
            "cidserve_ipfs_fetched_bytes_total",
            "Bytes fetched from IPFS (verified or not).",
            registry=r,
        )
        # Deprecated: the former name of cidserve_ipfs_fetched_bytes_total, exported with
        # the same value for one more release.
        self.ipfs_bytes_fetched_deprecated = Counter(
            "cidserve_ipfs_bytes_fetched_total",
            "Deprecated: use cidserve_ipfs_fetched_bytes_total (same value).",
            registry=r,
        )
        self.ipfs_bytes_fetched = _CounterPair(
            self.ipfs_fetched_bytes, self.ipfs_bytes_fetched_deprecated
        )
        self.inflight_requests = Gauge(
            "cidserve_inflight_requests",
            "Requests being handled now (health probes and scrapes excluded).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "cidserve_batch_size",
            "Requests per session.run (dynamic batching).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        # Admission control (services/dataplane/admission.py) and per-caller limits
        # (services/state/rate_limit.py).
        self.queue_depth = Gauge(
            "cidserve_queue_depth",
            "Requests of a model waiting for or holding an inference slot.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.requests_shed = Counter(
            "cidserve_requests_shed_total",
            "Requests refused before any work, by reason (queue_full, queue_delay: 503; "
            "rate_limited: 429).",
            ["reason"],
            registry=r,
        )
        self.rate_limit_errors = Counter(
            "cidserve_rate_limit_errors_total",
            "Rate-limit checks the shared store could not answer (the request was let through).",
            registry=r,
        )
        self.draining = Gauge(
            "cidserve_draining",
            "1 while the process finishes its requests before stopping (readiness is off).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info = Gauge(
            "cidserve_build_info",
            "Always 1; the labels say which cidserve, ONNX Runtime and Python run here.",
            ["version", "onnxruntime", "python"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(**build_labels()).set(1)
        if multiprocess_dir() is None:
            ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # Known outcomes start at 0: dashboards and alerts see the series before the first
        # event, and rate() has a starting point.
        for reason in SHED_REASONS:
            self.requests_shed.labels(reason)
        for result in ("valid", "invalid", "cached_valid", "cached_invalid", "error"):
            self.license_checks.labels(result)
        for result in ("ok", "missing", "malformed", "stale", "forged", "replay"):
            self.signature_checks.labels(result)

    def exposition_registry(self) -> CollectorRegistry:
        """The registry ``GET /metrics`` renders: this one, or the multiprocess aggregate."""
        path = multiprocess_dir()
        if path is None:
            return self.registry
        aggregate = CollectorRegistry()
        MultiProcessCollector(aggregate, path=path)
        PlatformCollector(registry=aggregate)  # the same in every worker
        return aggregate
