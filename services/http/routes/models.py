"""``/api/models``: load, list and unload models."""

from __future__ import annotations

from fastapi import APIRouter

from services.errors import ModelNotFound
from services.http.deps import Svc
from services.http.responses import JSONResponse
from services.http.schemas import ErrorResponse, LoadRequest, LoadResponse

router = APIRouter(prefix="/api/models", tags=["models"])
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 403, 404, 413, 422, 502, 503, 504)}


@router.post("/load", response_model=LoadResponse, responses=_ERRORS)  # type: ignore[arg-type]
async def load_model(req: LoadRequest, svc: Svc) -> JSONResponse:
    """Fetch metadata and model by CID, verify, create the session, warm it up, cache it."""
    outcome = await svc.repository.load(req.metadataCid, req.tokenId, req.warmup)
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
            "cacheStatus": svc.repository.cache_status(),
        }
    )


@router.get("")
async def list_models(svc: Svc) -> JSONResponse:
    """Models in the session cache (least recently used first) and every model ever loaded."""
    loaded = svc.repository.models()
    in_cache = {m.model_id for m in loaded}
    entries = await svc.repository.entries()
    known = [{**e.to_dict(), "in_cache": e.model_id in in_cache} for e in entries]
    return JSONResponse(
        {
            "success": True,
            "cacheStatus": svc.repository.cache_status(),
            "models": [m.describe() for m in loaded],
            "index": known,
            "counters": {
                "session_cache_hits": svc.repository.cache.hits,
                "session_cache_misses": svc.repository.cache.misses,
                "session_cache_evictions": svc.repository.cache.evictions,
            },
        }
    )


@router.get("/{model_id}")
async def get_model(model_id: str, svc: Svc) -> JSONResponse:
    model = svc.repository.peek(model_id)
    if model is None:
        raise ModelNotFound(model_id)
    return JSONResponse({"success": True, **model.describe()})


@router.delete("/{model_id}")
async def unload_model(model_id: str, svc: Svc) -> JSONResponse:
    """Drop the model from the session cache (and from the index: it will not auto-reload)."""
    if svc.repository.peek(model_id) is None:
        raise ModelNotFound(model_id)
    await svc.repository.unload(model_id)
    return JSONResponse(
        {
            "success": True,
            "model_id": model_id,
            "message": "Model unloaded",
            "cacheStatus": svc.repository.cache_status(),
        }
    )
