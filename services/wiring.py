"""The composition root: every part of one service instance, built from settings.

:func:`build_services` assembles the dependencies (each can be passed in, so a test or another
deployment can plug in other parts) into :class:`Services`, which the HTTP layer
(:func:`services.http.app.create_app`) serves. Nothing here is global: two instances in one
process do not share state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import onnxruntime as ort

import preprocessing
from registry.blob_cache import BlobCache
from registry.ipfs_store import IpfsConfig, IpfsContentStore
from registry.local_store import LocalContentStore
from registry.store import ContentStore
from services.dataplane.admission import Admission, AdmissionPolicy
from services.dataplane.jobs import JobPolicy, Jobs
from services.dataplane.plane import DataPlane
from services.dataplane.prediction_cache import BUCKET as PREDICTION_BUCKET
from services.dataplane.prediction_cache import PredictionCache
from services.dataplane.timing import StageRecorder
from services.licensing import Anonymous, Authenticator, LicenseBackend, LicenseGate, NoLicensing
from services.observability.metrics import Metrics
from services.observability.tracing import Tracing, build_tracing
from services.repository.loader import LoadLimits, ModelLoader
from services.repository.repository import ModelRepository
from services.repository.session_cache import SessionCache
from services.runtime.admission import Slots
from services.runtime.batching import BatchPolicy
from services.runtime.memory import default_session_budget
from services.runtime.occupancy import Occupancy, usable_cores
from services.runtime.options import SessionConfig
from services.runtime.probe import SessionProbe
from services.runtime.providers import select_providers
from services.settings import Settings
from services.state.catalog import Catalog, FileCatalog, RedisCatalog
from services.state.index import InMemoryModelIndex, ModelIndex
from services.state.kv import KeyValueStore, MemoryKV
from services.state.rate_limit import CallerLimiter, RateLimit, token_buckets_for
from services.state.redis_index import RedisModelIndex
from services.state.redis_kv import RedisKV

log = logging.getLogger("cidserve.wiring")


@dataclass(slots=True)
class Services:
    """The parts of one service instance; the HTTP routes reach them through
    ``request.app.state.services``."""

    settings: Settings
    store: ContentStore
    index: ModelIndex
    licensing: LicenseBackend
    authenticator: Authenticator
    # Shared state (Redis when CIDSERVE_REDIS_URL is set, else in-process): one instance for
    # the prediction cache, the model index, the replay (nonce) store and license checks.
    kv: KeyValueStore
    predictions: PredictionCache
    cache: SessionCache
    metrics: Metrics
    loader: ModelLoader
    repository: ModelRepository
    dataplane: DataPlane
    # Async jobs: records in ``kv`` (CIDSERVE_JOB_TTL_S), at most CIDSERVE_MAX_JOBS running here.
    jobs: Jobs
    executors: list[ThreadPoolExecutor]
    started_at: float = field(default_factory=time.time)
    startup_tasks: list[Callable[[Services], Awaitable[None]]] = field(default_factory=list)
    # Per-caller rate limit of the inference routes (None: CIDSERVE_RATE_LIMIT_RPS is 0).
    limiter: CallerLimiter | None = None
    # OpenTelemetry spans (CIDSERVE_TRACING; off without the otel extra).
    tracing: Tracing = field(default_factory=Tracing)

    async def aclose(self) -> None:
        await self.jobs.aclose()  # first: its records are written to kv
        for ex in self.executors:
            ex.shutdown(wait=False, cancel_futures=True)
        await self.store.aclose()
        close_licensing = getattr(self.licensing, "aclose", None)
        if close_licensing is not None:
            await close_licensing()
        await self.kv.aclose()
        if self.tracing.enabled:  # sends the spans still queued
            await asyncio.to_thread(self.tracing.shutdown)


def build_services(
    settings: Settings,
    *,
    store: ContentStore | None = None,
    index: ModelIndex | None = None,
    licensing: LicenseBackend | None = None,
    authenticator: Authenticator | None = None,
    kv: KeyValueStore | None = None,
    tracing: Tracing | None = None,
    catalog: Catalog | None = None,
) -> Services:
    """Assemble the parts from settings; any part given is used instead of the default.

    ``kv`` is the shared state of the fleet (default: :class:`RedisKV` when
    ``CIDSERVE_REDIS_URL`` is set, else :class:`MemoryKV`); on Redis the model index defaults
    to :class:`RedisModelIndex` on the same connection pool. The services own ``kv`` and
    close it when the app stops. ``tracing`` defaults to :func:`build_tracing` on
    ``CIDSERVE_TRACING`` (off unless asked for).

    Raises :class:`services.runtime.errors.ProviderUnavailable` when the settings require a GPU that
    this onnxruntime build cannot use (checked here so start-up fails, not the first load).
    """
    select_providers(
        settings.execution_provider,
        ort.get_available_providers(),
        require_gpu=settings.require_gpu,
    )
    store = store or _default_store(settings)
    kv = kv or _default_kv(settings)
    if index is None:
        index = (
            RedisModelIndex(kv, history=settings.index_history)
            if isinstance(kv, RedisKV)
            else InMemoryModelIndex()
        )
    metrics = Metrics()
    if isinstance(store, IpfsContentStore):
        store.add_fetch_listener(metrics.ipfs_bytes_fetched.inc)
    chain_backend = None
    if settings.licensing_enabled and (licensing is None or authenticator is None):
        # Imported here: eth-account and web3 cost ~0.5 s of start-up, paid only with a chain.
        from services.chain.wiring import build_chain_licensing

        chain_backend, chain_auth = build_chain_licensing(settings, kv, metrics)
        authenticator = authenticator or chain_auth
        licensing = licensing or chain_backend
    licensing = licensing or NoLicensing()
    authenticator = authenticator or Anonymous()
    predictions = PredictionCache(
        kv.bucket(
            PREDICTION_BUCKET,
            max_entries=settings.prediction_cache_max_entries,
            max_bytes=settings.prediction_cache_max_bytes,
        ),
        ttl_s=settings.prediction_cache_ttl_s,
        metrics=metrics,
        enabled=settings.prediction_cache,
    )
    cache = SessionCache(settings.max_models_in_memory, settings.max_cache_bytes, metrics=metrics)
    inference_pool = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="ort-run")
    pre_pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="preprocess")
    # Session builds and warm-ups: a pool of their own, as large as the load cap.
    load_slots = Slots(
        settings.max_concurrent_loads, what="model loads", setting="CIDSERVE_MAX_CONCURRENT_LOADS"
    )
    load_pool = ThreadPoolExecutor(settings.max_concurrent_loads, thread_name_prefix="load")
    probe = (
        SessionProbe(
            settings.max_session_bytes or default_session_budget(),
            warmup_timeout_s=settings.warmup_timeout_ms / 1000,
            build_timeout_s=settings.session_build_timeout_s,
            intra_op_threads=settings.intra_op_threads,
        )
        if settings.session_probe
        else None
    )
    input_limits = preprocessing.Limits(
        max_image_pixels=settings.max_image_pixels,
        max_image_bytes=settings.max_image_bytes,
        max_tensor_elements=settings.max_tensor_elements,
    )
    loader = ModelLoader(
        store=store,
        cache=cache,
        index=index,
        licensing=licensing,
        session_config=SessionConfig(
            execution_provider=settings.execution_provider,
            require_gpu=settings.require_gpu,
            cuda_device_id=settings.cuda_device_id,
            intra_op_threads=settings.intra_op_threads,
            intra_op_threads_alone=settings.intra_op_threads_alone,
            optimized_cache_dir=(
                settings.models_dir / "optimized" if settings.optimized_model_cache else None
            ),
            intra_op_spinning=settings.intra_op_spinning,
            deterministic=settings.deterministic,
        ),
        inference_executor=inference_pool,
        occupancy=Occupancy(),
        load_executor=load_pool,
        load_slots=load_slots,
        probe=probe,
        warmup_timeout_s=settings.warmup_timeout_ms / 1000,
        load_limits=LoadLimits(
            max_metadata_bytes=settings.max_metadata_bytes,
            max_labels_bytes=settings.max_labels_bytes,
            max_model_bytes=settings.max_model_bytes,
        ),
        input_limits=input_limits,
        metrics=metrics,
        batching=BatchPolicy(
            enabled=settings.batch_enabled,
            max_size=settings.batch_max_size,
            max_delay_ms=settings.batch_max_delay_ms,
            # batches of one model in flight: no more than the cores (larger batches)
            max_inflight=min(settings.inference_workers, usable_cores()),
            # Deterministic: no run mixes rows of different requests (no model is trusted).
            trusted_cids=frozenset() if settings.deterministic else settings.batch_trusted_cids,
        ),
    )
    repository = ModelRepository(
        store=store,
        cache=cache,
        loader=loader,
        index=index,
        reload_evicted=settings.reload_evicted,
        max_metadata_bytes=settings.max_metadata_bytes,
        catalog=catalog or catalog_for(settings, kv),
    )
    dataplane = DataPlane(
        repository=repository,
        gate=LicenseGate(licensing),
        preprocess_executor=pre_pool,
        default_timeout_ms=settings.inference_timeout_ms,
        input_limits=input_limits,
        predictions=predictions,
        recorder=StageRecorder(metrics),
        admission=Admission(
            AdmissionPolicy(settings.max_queue_per_model, settings.max_queue_delay_ms),
            metrics=metrics,
        ),
    )
    services = Services(
        settings=settings,
        store=store,
        index=index,
        licensing=licensing,
        authenticator=authenticator,
        kv=kv,
        predictions=predictions,
        cache=cache,
        metrics=metrics,
        loader=loader,
        repository=repository,
        dataplane=dataplane,
        jobs=Jobs(kv, JobPolicy(max_jobs=settings.max_jobs, ttl_s=settings.job_ttl_s)),
        executors=[inference_pool, pre_pool, load_pool],
        limiter=_caller_limiter(settings, kv, metrics),
        tracing=tracing or build_tracing(settings.tracing),
    )
    if services.tracing.enabled:
        # First: loads made by later start-up tasks are traced too.
        services.startup_tasks.insert(0, _activate_tracing)
    if isinstance(kv, RedisKV):
        services.startup_tasks.append(_connect_redis)
    if chain_backend is not None and licensing is chain_backend:
        services.startup_tasks.append(_verify_chain)
    return services


def _caller_limiter(
    settings: Settings, kv: KeyValueStore, metrics: Metrics
) -> CallerLimiter | None:
    """The per-caller token buckets (on Redis when the shared state is), or None when off."""
    if not settings.rate_limit_rps:
        return None
    burst = settings.rate_limit_burst or max(1, math.ceil(settings.rate_limit_rps))
    limit = RateLimit(settings.rate_limit_rps, burst)
    return CallerLimiter(token_buckets_for(kv), limit, metrics=metrics)


async def _activate_tracing(svc: Services) -> None:
    """Spans of the start-up tasks after this one (a model loaded at start) use the tracer."""
    svc.tracing.activate()


async def _verify_chain(svc: Services) -> None:
    """Refuse to start on the wrong chain or without a contract (see ChainLicenseBackend)."""
    verify = getattr(svc.licensing, "verify", None)
    if verify is not None:
        await verify()


def _default_store(settings: Settings) -> ContentStore:
    """The IPFS store (verified, with its blob cache) when an IPFS URL is set, else the
    embedded content-addressed directory."""
    if not settings.ipfs_enabled:
        return LocalContentStore(settings.store_dir)
    return IpfsContentStore(
        ipfs_config(settings),
        BlobCache(settings.blob_cache_path, settings.blob_cache_max_bytes),
        max_concurrent_fetches=settings.max_concurrent_fetches,
    )


def ipfs_config(settings: Settings, api_url: str | None = None) -> IpfsConfig:
    """The IPFS client settings (``api_url`` overrides ``CIDSERVE_IPFS_API_URL``)."""
    return IpfsConfig(
        api_url=api_url or settings.ipfs_api_url,
        gateway_url=settings.ipfs_gateway_url,
        connect_timeout_s=settings.ipfs_connect_timeout_s,
        timeout_s=settings.ipfs_timeout_s,
        find_timeout_s=settings.ipfs_find_timeout_s,
        fetch_timeout_s=settings.ipfs_fetch_timeout_s,
        retries=settings.ipfs_retries,
        retry_backoff_s=settings.ipfs_retry_backoff_s,
        retry_after_s=settings.ipfs_retry_after_s,
        file_stream=settings.ipfs_file_stream,
    )


def catalog_for(settings: Settings, kv: KeyValueStore) -> Catalog:
    """The operator's catalogue of names, versions and labels: in Redis (under the store's
    prefix) when the shared state is, else ``<data_dir>/catalog.json``."""
    if isinstance(kv, RedisKV):
        return RedisCatalog(kv)
    return FileCatalog(settings.data_dir / "catalog.json")


def _default_kv(settings: Settings) -> KeyValueStore:
    """Redis when a URL is configured, else the in-process store."""
    if settings.redis_url is None:
        # Nonces and license checks are small: a generous count bound keeps replay
        # protection from forgetting a nonce early (predictions have their own bucket).
        return MemoryKV(max_entries=1_000_000, max_bytes=256 << 20)
    return RedisKV(
        settings.redis_url,
        timeout_ms=settings.redis_timeout_ms,
        prefix=settings.redis_prefix,
        backoff_ms=settings.redis_backoff_ms,
        max_connections=settings.redis_max_connections,
    )


async def _connect_redis(svc: Services) -> None:
    """Open the first Redis connection at start-up; a Redis that is down does not stop it."""
    assert isinstance(svc.kv, RedisKV)
    if await svc.kv.connect():
        log.info("shared state on redis %s", svc.kv.display_url)
