"""The FastAPI application around one :class:`~services.wiring.Services` instance."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services import __version__
from services.http.errors import install_error_handlers
from services.http.middleware import BodyLimitMiddleware, RequestMiddleware
from services.http.responses import JSONResponse
from services.http.routes import health, inference, metrics, models, v2, v2_repository
from services.settings import Settings
from services.wiring import Services, build_services

log = logging.getLogger("cidserve.app")


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
    install_error_handlers(app)
    for module in (models, inference, health, metrics, v2, v2_repository):
        app.include_router(module.router)
    return app
