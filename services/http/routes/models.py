"""``/api/models``: load, list and unload models."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends, Request

from registry.identity import model_id_for
from registry.unixfs import canonical_cid
from services.errors import ModelNotFound
from services.http.control import is_operator, require_operator
from services.http.deps import Svc, caller_of
from services.http.responses import JSONResponse
from services.http.schemas import (
    OPERATOR_ONLY,
    OPERATOR_OR_SIGNED,
    LoadRequest,
    LoadResponse,
    ModelInfoResponse,
    ModelListResponse,
    UnloadResponse,
    VersionsResponse,
    api_errors,
)
from services.licensing import Requester
from services.state.catalog import check_name

router = APIRouter(prefix="/api/models", tags=["models"])
_LOAD_ERRORS = api_errors(400, 401, 403, 404, 409, 413, 415, 422, 502, 503, 504)


@router.post(
    "/load",
    response_model=LoadResponse,
    responses=_LOAD_ERRORS,
    openapi_extra=OPERATOR_OR_SIGNED,
)
async def load_model(req: LoadRequest, request: Request, svc: Svc) -> JSONResponse:
    """Fetch metadata and model by CID, verify, create the session, warm it up, cache it.

    The operator may load anything; a licensee may load (signed request) the content of a
    token it holds a license for. The chain decides the content's token. ``model`` names the
    content by a reference into the operator's catalogue (``NAME@latest``, ``NAME@VERSION``,
    ``NAME@LABEL``) instead of its CID; the same rules apply to what it resolves to.
    """
    operator = await is_operator(svc, request)
    requester = Requester(operator, None if operator else await caller_of(svc, request))
    metadata_cid = req.metadataCid
    if req.model is not None:
        _, metadata_cid = await svc.repository.resolve_reference(req.model)
    assert metadata_cid is not None  # LoadRequest holds exactly one of them
    outcome = await svc.repository.load(
        metadata_cid,
        req.tokenId,
        req.warmup,
        authorize=partial(svc.dataplane.gate.authorize_load, requester),
        bind_name=operator,
    )
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


@router.get("", response_model=ModelListResponse)
async def list_models(svc: Svc) -> JSONResponse:
    """Models in the session cache (least recently used first), loads under way, and every
    model ever loaded."""
    loaded = svc.repository.models()
    in_cache = {m.model_id for m in loaded}
    entries = await svc.repository.entries()
    known = [{**e.to_dict(), "in_cache": e.model_id in in_cache} for e in entries]
    return JSONResponse(
        {
            "success": True,
            "cacheStatus": svc.repository.cache_status(),
            "models": [m.describe() for m in loaded],
            "loading": svc.repository.loader.loading.snapshot(),
            "index": known,
            "counters": {
                "session_cache_hits": svc.repository.cache.hits,
                "session_cache_misses": svc.repository.cache.misses,
                "session_cache_evictions": svc.repository.cache.evictions,
            },
        }
    )


@router.get(
    "/{name}/versions", response_model=VersionsResponse, responses=api_errors(400, 404, 503)
)
async def model_versions(name: str, svc: Svc) -> JSONResponse:
    """The catalogue's versions of a published name (oldest first), its labels, which version
    ``NAME@latest`` stands for, and which versions are in memory now."""
    entry = await svc.repository.catalogue_entry(check_name(name))
    newest = entry.newest()
    by_version: dict[str, list[str]] = {}
    for label, version in sorted(entry.labels.items()):
        by_version.setdefault(version, []).append(label)
    versions = []
    for v in entry.ordered():
        try:
            model_id = model_id_for(entry.name, canonical_cid(v.metadata_cid))
        except ValueError:
            continue
        versions.append(
            {
                "version": v.version,
                "metadataCid": v.metadata_cid,
                "model_id": model_id,
                "labels": by_version.get(v.version, []),
                "loaded": svc.repository.peek(model_id) is not None,
            }
        )
    return JSONResponse(
        {
            "success": True,
            "name": entry.name,
            "latest": newest.version if newest is not None else None,
            "labels": dict(sorted(entry.labels.items())),
            "versions": versions,
        }
    )


@router.get("/{model_id}", response_model=ModelInfoResponse, responses=api_errors(404))
async def get_model(model_id: str, svc: Svc) -> JSONResponse:
    """One model in the session cache (404 when it is not in memory)."""
    model = svc.repository.peek(model_id)
    if model is None:
        raise ModelNotFound(model_id)
    return JSONResponse({"success": True, **model.describe()})


@router.delete(
    "/{model_id}",
    dependencies=[Depends(require_operator)],
    response_model=UnloadResponse,
    responses=api_errors(401, 404, 503),
    openapi_extra=OPERATOR_ONLY,
)
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
