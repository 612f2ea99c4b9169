"""``/health``: liveness; ``/health/ready``: readiness, naming each dependency."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from services import __version__
from services.http.deps import Svc
from services.http.responses import JSONResponse

router = APIRouter(tags=["health"])


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
            "models_loaded": len(svc.repository.models()),
            "cacheStatus": svc.repository.cache_status(),
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
    # Shared state: a Redis that is down degrades the service (no shared cache) but does not
    # take it out of rotation; the in-process store is always there.
    deps[svc.kv.name] = await _safe(svc.kv.health)
    down = [name for name, d in deps.items() if d.get("status") == "down"]
    degraded = [name for name, d in deps.items() if d.get("status") == "degraded"]
    body: dict[str, Any] = {
        "status": "unavailable" if down else "degraded" if degraded else "ready",
        "dependencies": deps,
        "models_loaded": len(svc.repository.models()),
    }
    if degraded:
        body["degraded"] = degraded
    if down:
        body["message"] = "dependencies down: " + ", ".join(down)
    elif degraded:
        body["message"] = "serving, degraded: " + ", ".join(
            f"{name} ({deps[name].get('message', 'degraded')})" for name in degraded
        )
    return JSONResponse(body, status_code=503 if down else 200)
