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
from registry.index import InMemoryModelIndex, ModelIndex
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
from services.codecs import CodecLimits
from services.errors import ApiError
from services.http import BodyLimitMiddleware, JSONResponse
from services.inference import InferenceService
from services.licensing import Anonymous, Authenticator, LicenseBackend, LicenseGate, NoLicensing
from services.loader import LoadLimits, ModelInvalid, ModelLoader
from services.metrics import Metrics
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


def build_services(
    settings: Settings,
    *,
    store: ContentStore | None = None,
    index: ModelIndex | None = None,
    licensing: LicenseBackend | None = None,
    authenticator: Authenticator | None = None,
) -> Services:
    """Assemble the parts from settings; any part given is used instead of the default.

    Raises :class:`services.runtime.ProviderUnavailable` when the settings require a GPU that
    this onnxruntime build cannot use (checked here so start-up fails, not the first load).
    """
    select_providers(
        settings.execution_provider,
        ort.get_available_providers(),
        require_gpu=settings.require_gpu,
    )
    store = store or LocalContentStore(settings.store_dir)
    index = index or InMemoryModelIndex()
    licensing = licensing or NoLicensing()
    authenticator = authenticator or Anonymous()
    metrics = Metrics()
    cache = SessionCache(settings.max_models_in_memory, settings.max_cache_bytes)
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
        ),
        inference_executor=inference_pool,
        load_limits=LoadLimits(
            max_metadata_bytes=settings.max_metadata_bytes,
            max_labels_bytes=settings.max_labels_bytes,
            max_model_bytes=settings.max_model_bytes,
        ),
        input_limits=input_limits,
    )
    inference = InferenceService(
        cache=cache,
        loader=loader,
        index=index,
        gate=LicenseGate(licensing),
        preprocess_executor=pre_pool,
        default_timeout_ms=settings.inference_timeout_ms,
        reload_evicted=settings.reload_evicted,
    )
    return Services(
        settings=settings,
        store=store,
        index=index,
        licensing=licensing,
        authenticator=authenticator,
        cache=cache,
        metrics=metrics,
        loader=loader,
        inference=inference,
        codec_limits=CodecLimits(settings.max_base64_chars, settings.max_tensor_elements),
        executors=[inference_pool, pre_pool],
    )


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
    from services.routes import health, inference, models

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
    _install_error_handlers(app)
    app.include_router(models.router)
    app.include_router(inference.router)
    app.include_router(health.router)
    return app
