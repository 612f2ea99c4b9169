"""``/health``: liveness; ``/health/ready``: readiness, naming each dependency."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from services import __version__
from services.app import Services
from services.http import JSONResponse
from services.routes import get_services

router = APIRouter(tags=["health"])
Svc = Annotated[Services, Depends(get_services)]


async def _safe(check: Any) -> dict[str, Any]:
    try:
        return dict(await check())
    except Exception as exc:
        return {"status": "down", "message": f"{type(exc).__name__}: {exc}"}


@router.get("/health")
async def health(svc: Svc) -> JSONResponse:
    """Liveness: the process answers. Also says what it serves and how."""
    licensing = await _safe(svc.licensing.health)
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - svc.started_at, 1),
            "models_loaded": len(svc.cache),
            "cacheStatus": svc.cache.status(),
            "execution_provider": svc.settings.execution_provider,
            "store": svc.store.name,
            "licensing": licensing,
        }
    )


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/health/ready")
async def ready(svc: Svc) -> JSONResponse:
    """Readiness: 200 when every required dependency answers; 503 naming the ones that don't."""
    deps = {
        "content_store": await _safe(svc.store.health),
        "licensing": await _safe(svc.licensing.health),
    }
    down = [name for name, d in deps.items() if d.get("status") == "down"]
    body = {
        "status": "unavailable" if down else "ready",
        "dependencies": deps,
        "models_loaded": len(svc.cache),
    }
    if down:
        body["message"] = "dependencies down: " + ", ".join(down)
    return JSONResponse(body, status_code=503 if down else 200)
