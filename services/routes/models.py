"""``/api/models``: load, list and unload models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.app import Services
from services.errors import ModelNotFound
from services.http import JSONResponse
from services.routes import get_services
from services.schemas import ErrorResponse, LoadRequest, LoadResponse

router = APIRouter(prefix="/api/models", tags=["models"])
Svc = Annotated[Services, Depends(get_services)]
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 403, 404, 413, 422, 502, 503, 504)}


@router.post("/load", response_model=LoadResponse, responses=_ERRORS)  # type: ignore[arg-type]
async def load_model(req: LoadRequest, svc: Svc) -> JSONResponse:
    """Fetch metadata and model by CID, verify, create the session, warm it up, cache it."""
    outcome = await svc.loader.load(req.metadataCid, req.tokenId, req.warmup)
    model = outcome.model
    message = "Model loaded and cached" if outcome.status == "loaded" else "Model already in cache"
    if outcome.fallback_reason:
        message += f" (CPU fallback: {outcome.fallback_reason})"
    return JSONResponse(
        {
            "success": True,
            "model_id": model.model_id,
            "message": message,
            "status": outcome.status,
            "load_time_ms": round(outcome.load_time_ms, 2),
            "execution_provider": model.provider,
            "cacheStatus": svc.cache.status(),
        }
    )


@router.get("")
async def list_models(svc: Svc) -> JSONResponse:
    """Models in the session cache (least recently used first) and every model ever loaded."""
    loaded = svc.cache.models()
    in_cache = {m.model_id for m in loaded}
    known = [{**e.to_dict(), "in_cache": e.model_id in in_cache} for e in await svc.index.entries()]
    return JSONResponse(
        {
            "success": True,
            "cacheStatus": svc.cache.status(),
            "models": [m.describe() for m in loaded],
            "index": known,
            "counters": {
                "session_cache_hits": svc.cache.hits,
                "session_cache_misses": svc.cache.misses,
                "session_cache_evictions": svc.cache.evictions,
            },
        }
    )


@router.get("/{model_id}")
async def get_model(model_id: str, svc: Svc) -> JSONResponse:
    model = svc.cache.peek(model_id)
    if model is None:
        raise ModelNotFound(model_id)
    return JSONResponse({"success": True, **model.describe()})


@router.delete("/{model_id}")
async def unload_model(model_id: str, svc: Svc) -> JSONResponse:
    """Drop the model from the session cache (and from the index: it will not auto-reload)."""
    model = svc.cache.remove(model_id)
    if model is None:
        raise ModelNotFound(model_id)
    await svc.index.forget(model_id)
    return JSONResponse(
        {
            "success": True,
            "model_id": model_id,
            "message": "Model unloaded",
            "cacheStatus": svc.cache.status(),
        }
    )
