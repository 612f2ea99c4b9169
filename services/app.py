"""The gateway application: wires the parts together and maps domain errors to HTTP.

:func:`build_services` assembles the dependencies from settings (each can be passed in, so a
test or another deployment can plug in other parts); :func:`create_app` builds the FastAPI
app around them. Nothing here is global: two apps in one process do not share state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import preprocessing
from postprocessing import PostprocessingError
from preprocessing import InputTooLarge, PreprocessingError
from registry.blob_cache import BlobCache
from registry.index import InMemoryModelIndex, ModelIndex
from registry.ipfs_store import IpfsConfig, IpfsContentStore
from registry.local_store import LocalContentStore
from registry.metadata import MetadataError
from registry.store import (
    ContentIntegrityError,
    ContentNotFound,
    ContentStore,
    ContentStoreError,
    ContentTimeout,
    ContentTooLarge,
    ContentUnavailable,
    InvalidCid,
)
from services import __version__
from services.batching import BatchPolicy
from services.codecs import CodecLimits
from services.errors import ApiError
from services.http import BodyLimitMiddleware, JSONResponse
from services.inference import InferenceService
from services.kv import KeyValueStore, KVUnavailable, MemoryKV
from services.licensing import Anonymous, Authenticator, LicenseBackend, LicenseGate, NoLicensing
from services.loader import LoadLimits, ModelInvalid, ModelLoader
from services.metrics import Metrics
from services.observability import RequestMiddleware
from services.prediction_cache import BUCKET as PREDICTION_BUCKET
from services.prediction_cache import PredictionCache
from services.redis_index import RedisModelIndex
from services.redis_kv import RedisKV
from services.runtime import SessionConfig, select_providers
from services.session_cache import SessionCache
from services.settings import Settings

log = logging.getLogger("cidserve.app")


@dataclass(slots=True)
class Services:
    """The dependencies of one app instance; routes reach them through ``request.app.state``."""

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
    inference: InferenceService
    codec_limits: CodecLimits
    executors: list[ThreadPoolExecutor]
    started_at: float = field(default_factory=time.time)
    startup_tasks: list[Callable[[Services], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for ex in self.executors:
            ex.shutdown(wait=False, cancel_futures=True)
        await self.store.aclose()
        close_licensing = getattr(self.licensing, "aclose", None)
        if close_licensing is not None:
            await close_licensing()
        await self.kv.aclose()


def build_services(
    settings: Settings,
    *,
    store: ContentStore | None = None,
    index: ModelIndex | None = None,
    licensing: LicenseBackend | None = None,
    authenticator: Authenticator | None = None,
    kv: KeyValueStore | None = None,
) -> Services:
    """Assemble the parts from settings; any part given is used instead of the default.

    ``kv`` is the shared state of the fleet (default: :class:`RedisKV` when
    ``CIDSERVE_REDIS_URL`` is set, else :class:`MemoryKV`); on Redis the model index defaults
    to :class:`RedisModelIndex` on the same connection pool. The services own ``kv`` and
    close it when the app stops.

    Raises :class:`services.runtime.ProviderUnavailable` when the settings require a GPU that
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
    input_limits = preprocessing.Limits(
        max_image_pixels=settings.max_image_pixels,
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
            optimized_cache_dir=(
                settings.models_dir / "optimized" if settings.optimized_model_cache else None
            ),
            intra_op_spinning=settings.intra_op_spinning,
        ),
        inference_executor=inference_pool,
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
            max_inflight=settings.inference_workers,
        ),
    )
    inference = InferenceService(
        cache=cache,
        loader=loader,
        index=index,
        gate=LicenseGate(licensing),
        preprocess_executor=pre_pool,
        default_timeout_ms=settings.inference_timeout_ms,
        reload_evicted=settings.reload_evicted,
        predictions=predictions,
        metrics=metrics,
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
        inference=inference,
        codec_limits=CodecLimits(settings.max_base64_chars, settings.max_tensor_elements),
        executors=[inference_pool, pre_pool],
    )
    if isinstance(kv, RedisKV):
        services.startup_tasks.append(_connect_redis)
    if chain_backend is not None and licensing is chain_backend:
        services.startup_tasks.append(_verify_chain)
    return services


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
        ipfs_config(settings), BlobCache(settings.blob_cache_path, settings.blob_cache_max_bytes)
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


def _status_for(exc: Exception) -> tuple[int, str, dict[str, Any], dict[str, str]]:
    """HTTP status, title, extra body fields and headers for a domain exception."""
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, ContentStoreError) and exc.cid:
        extra["cid"] = exc.cid
    match exc:
        case InvalidCid():
            return 400, "Invalid CID", extra, headers
        case ContentNotFound():
            return 404, "Content not found", extra, headers
        case ContentTooLarge():
            return 413, "Content too large", extra, headers
        case ContentIntegrityError():
            return 502, "Content verification failed", extra, headers
        case ContentUnavailable():
            headers["Retry-After"] = str(exc.retry_after_s)
            return 503, "Content store unavailable", extra, headers
        case ContentTimeout():
            return 504, "Content store timeout", extra, headers
        case ContentStoreError():
            return 502, "Content store error", extra, headers
        case KVUnavailable():
            headers["Retry-After"] = "1"
            return 503, "Shared state unavailable", extra, headers
        case MetadataError():
            if exc.field:
                extra["field"] = exc.field
            return 422, "Invalid metadata", extra, headers
        case ModelInvalid():
            return 422, "Invalid model", extra, headers
        case InputTooLarge():
            return 413, "Input too large", extra, headers
        case PreprocessingError():
            return 400, "Invalid input", extra, headers
        case PostprocessingError():
            return 500, "Model output error", extra, headers
    return 500, "Internal error", extra, headers


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        msg = f"{where}: {first['msg']}" if where else str(first["msg"])
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more)"
        body = {
            "success": False,
            "error": "Invalid request",
            "message": msg,
            "details": [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in errors[:20]],
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
        body = {
            "success": False,
            "error": titles.get(exc.status_code, "HTTP error"),
            "message": str(exc.detail),
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def domain_error(_: Request, exc: Exception) -> JSONResponse:
        status, title, extra, headers = _status_for(exc)
        if status >= 500:
            log.error("%s: %s", title, exc)
        body = {"success": False, "error": title, "message": str(exc), **extra}
        return JSONResponse(body, status_code=status, headers=headers)

    for exc_type in (
        ContentStoreError,
        KVUnavailable,
        MetadataError,
        ModelInvalid,
        PreprocessingError,
        PostprocessingError,
    ):
        app.add_exception_handler(exc_type, domain_error)  # type: ignore[arg-type]

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            {"success": False, "error": "Internal error", "message": type(exc).__name__},
            status_code=500,
        )


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The gateway app. ``services`` defaults to :func:`build_services` on ``settings``."""
    from services.routes import health, inference, metrics, models, v2

    svc = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for task in svc.startup_tasks:
            await task(svc)
        log.info(
            "cidserve %s ready: store=%s licensing=%s cache=%d models, pid %d",
            __version__,
            svc.store.name,
            svc.licensing.name,
            svc.cache.max_models,
            os.getpid(),
        )
        if svc.licensing.enabled:
            log.info(
                "licensing (%s): models loaded with a tokenId need a signed request from a "
                "license holder; models loaded without a tokenId are open to every caller",
                svc.licensing.name,
            )
        else:
            log.info("licensing off: every model is open (tokenIds are recorded, not checked)")
        try:
            yield
        finally:
            await svc.aclose()

    app = FastAPI(
        title="cidserve",
        version=__version__,
        description="Serve ONNX models published on IPFS and licensed on an EVM chain.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.services = svc
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Outermost: request id, request counters and the access log see every reply (also a 413).
    app.add_middleware(RequestMiddleware, metrics=svc.metrics)
    _install_error_handlers(app)
    app.include_router(models.router)
    app.include_router(inference.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(v2.router)
    return app
