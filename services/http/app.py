"""The FastAPI application around one :class:`~services.wiring.Services` instance."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from services import __version__
from services.http.errors import install_error_handlers
from services.http.lane import InferenceLane
from services.http.middleware import BodyLimitMiddleware, JsonOnlyMiddleware, RequestMiddleware
from services.http.responses import JSONResponse
from services.http.routes import (
    health,
    inference,
    jobs,
    metrics,
    models,
    playground,
    v2,
    v2_repository,
)
from services.http.schemas import OPERATOR_SCHEME, OPERATOR_SCHEME_SPEC, SIGNATURE_SCHEMES
from services.http.v2_codec import HEADER_LENGTH
from services.settings import Settings
from services.wiring import Services, build_services

log = logging.getLogger("cidserve.app")

# Routes whose bodies are not JSON (JsonOnlyMiddleware lets them through; they check their own
# content types): image uploads and raw tensors, and V2 inference (JSON, or JSON followed by
# binary tensor data).
RAW_BODY_ROUTES = (
    "/api/models/{model_id}/predict",
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The gateway app. ``services`` defaults to :func:`build_services` on ``settings``."""
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
        if svc.settings.admin_secret is None:
            log.info("control plane open: no CIDSERVE_ADMIN_TOKEN (docs/OPERATIONS.md)")
        else:
            log.info("control plane: load and unload need the CIDSERVE_ADMIN_TOKEN bearer token")
        try:
            yield
        finally:
            await svc.aclose()

    app = FastAPI(
        title="cidserve",
        version=__version__,
        description="Serve ONNX models published on IPFS and licensed on an EVM chain. "
        "`/api`: the REST API (errors: `{success: false, error, message, ...}`); `/v2`: the "
        "Open Inference Protocol (errors: `{error}`). Control-plane operations (load, unload, "
        "the model repository) take the operator's bearer token (`CIDSERVE_ADMIN_TOKEN`).",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # cidserve's own tracing and metrics (services/observability/) describe requests;
        # FastAPI's would add a second set of spans and a check on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = svc
    # Innermost: the inference routes without FastAPI's router (http/lane.py).
    app.add_middleware(
        InferenceLane, routes=[*inference.LANE, *v2.LANE], routers=[inference.router, v2.router]
    )
    # JSON routes take JSON only (a page on another origin cannot post a form or
    # text/plain to them); the routes listed take uploads, raw tensors or V2 binary data.
    app.add_middleware(JsonOnlyMiddleware, raw_body_routes=RAW_BODY_ROUTES)
    if settings.cors_origins:
        # Off unless configured: no Access-Control-* headers, so browsers keep other origins'
        # pages from reading replies and from sending anything but simple requests.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "X-Cache", "Retry-After", HEADER_LENGTH],
            max_age=600,
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Outermost: request id, request counters and the access log see every reply (also a 413).
    app.add_middleware(RequestMiddleware, metrics=svc.metrics)
    install_error_handlers(app)
    for module in (models, inference, jobs, health, metrics, v2, v2_repository, playground):
        app.include_router(module.router)
    app.openapi = _with_security_scheme(app.openapi)  # type: ignore[method-assign]
    return app


_DEFAULT_422 = "#/components/schemas/HTTPValidationError"


def _with_security_scheme(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document (``GET /openapi.json``) with the control plane's bearer scheme
    declared (the routes name it in their ``security``)."""

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI builds it once and keeps it
        components = schema.setdefault("components", {})
        schemes = components.setdefault("securitySchemes", {})
        schemes.setdefault(OPERATOR_SCHEME, OPERATOR_SCHEME_SPEC)
        for name, spec in SIGNATURE_SCHEMES.items():
            schemes.setdefault(name, spec)
        # FastAPI adds a 422 ``{detail: [...]}`` to every route with parameters; this service
        # never sends that shape: its 422 is the API's error (declared where it can happen)
        # and /v2 answers a request that does not validate with 400.
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                reply = operation.get("responses", {}).get("422", {})
                if _DEFAULT_422 in str(reply.get("content", {})):
                    del operation["responses"]["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        return schema

    return openapi
