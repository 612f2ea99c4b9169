"""``/health``: liveness; ``/health/ready``: readiness, naming each dependency (503
``draining`` while the process stops)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from registry.redact import redact_tree
from services import __version__
from services.http.deps import Svc
from services.http.responses import JSONResponse
from services.http.schemas import HealthResponse, LiveResponse, ReadyResponse

router = APIRouter(tags=["health"])


async def _safe(check: Any) -> dict[str, Any]:
    """A dependency's report, with every URL in it reduced to scheme://host[:port] (RPC and
    IPFS URLs often carry API keys in their paths or userinfo)."""
    try:
        report = dict(await check())
    except Exception as exc:
        report = {"status": "down", "message": f"{type(exc).__name__}: {exc}"}
    return dict(redact_tree(report))


@router.get("/health", response_model=HealthResponse)
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


@router.get("/health/live", response_model=LiveResponse)
async def live() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get(
    "/health/ready",
    response_model=ReadyResponse,
    responses={
        503: {
            "model": ReadyResponse,
            "description": "A required dependency is down (named), or the server is draining",
        }
    },
)
async def ready(svc: Svc) -> JSONResponse:
    """Readiness: 200 when every required dependency answers; 503 naming the ones that don't,
    and 503 ``draining`` once the process has been told to stop (SIGTERM): it finishes the
    requests it has, and load balancers send no new ones."""
    if svc.dataplane.admission.draining:
        return JSONResponse(
            {
                "status": "draining",
                "message": "the server is stopping: it finishes the requests it has received",
                "models_loaded": len(svc.repository.models()),
            },
            status_code=503,
        )
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
