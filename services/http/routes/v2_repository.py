"""``/v2/repository``: the Open Inference Protocol's model repository extension.

Index, load and unload on the same model repository as ``/api/models``; the protocol's model
name is the ``model_id`` (or the published name when loading by metadata CID). Every route here
is the control plane: it needs the operator (:mod:`services.http.control`).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request

from services.http.control import require_operator
from services.http.deps import Svc
from services.http.responses import JSONResponse
from services.http.schemas import OPERATOR_ONLY
from services.http.v2_codec import V2Error, parameters_of, parse_object
from services.http.v2_schemas import (
    V2IndexEntry,
    V2IndexRequest,
    V2LoadRequest,
    V2LoadResponse,
    V2UnloadRequest,
    V2UnloadResponse,
    json_body,
    v2_errors,
)

# The whole extension is the control plane: index, load and unload need the operator.
router = APIRouter(
    prefix="/v2",
    tags=["open inference protocol (v2)"],
    dependencies=[Depends(require_operator)],
)


@router.post(
    "/repository/index",
    response_model=list[V2IndexEntry],
    responses=v2_errors(400, 401, 413, 415),
    openapi_extra={**OPERATOR_ONLY, **json_body(V2IndexRequest)},
)
async def repository_index(request: Request, svc: Svc) -> JSONResponse:
    """Every model this server has loaded: READY in memory, UNAVAILABLE once evicted.
    Body ``{"ready": true}``: only the ready ones."""
    doc = parse_object(await request.body(), "the index request")
    ready_only = doc.get("ready", False)
    if not isinstance(ready_only, bool):
        raise V2Error("ready must be true or false")
    loaded = {m.model_id: m for m in svc.repository.models()}
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for entry in await svc.repository.entries():
        seen.add(entry.model_id)
        if entry.model_id in loaded:
            rows.append(_index_row(entry.model_id, entry.version, "READY", ""))
        elif not ready_only:
            reason = (
                "evicted from the session cache; reloads on its next request"
                if svc.repository.reload_evicted
                else "evicted from the session cache; load it again"
            )
            rows.append(_index_row(entry.model_id, entry.version, "UNAVAILABLE", reason))
    for model_id, m in loaded.items():
        if model_id not in seen:
            rows.append(_index_row(model_id, m.metadata.version, "READY", ""))
    return JSONResponse(rows)


def _index_row(name: str, version: str, state: str, reason: str) -> dict[str, str]:
    return {"name": name, "version": version, "state": state, "reason": reason}


def _load_parameters(params: dict[str, Any]) -> tuple[str | None, int | None, bool]:
    """``metadataCid``, ``tokenId`` and ``warmup`` from the load request's parameters, or from
    the JSON object in ``parameters.config`` (what Triton's ``load_model(config=...)`` sends)."""
    merged = dict(params)
    config = params.get("config")
    if config is not None:
        if not isinstance(config, str):
            raise V2Error("parameters.config must be a string holding a JSON object")
        try:
            parsed = orjson.loads(config)
        except orjson.JSONDecodeError as exc:
            raise V2Error(f"parameters.config is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise V2Error("parameters.config must hold a JSON object")
        merged = {**parsed, **{k: v for k, v in params.items() if k != "config"}}
    cid = merged.get("metadataCid")
    if cid is not None and (not isinstance(cid, str) or not 0 < len(cid) <= 200):
        raise V2Error("parameters.metadataCid must be a CID string")
    token = merged.get("tokenId")
    if isinstance(token, str) and token.strip().isdigit():
        token = int(token)
    if token is not None and (
        not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < 2**256
    ):
        raise V2Error("parameters.tokenId must be a non-negative integer")
    warmup = merged.get("warmup", True)
    if not isinstance(warmup, bool):
        raise V2Error("parameters.warmup must be true or false")
    return cid, token, warmup


@router.post(
    "/repository/models/{model}/load",
    response_model=V2LoadResponse,
    responses=v2_errors(400, 401, 403, 404, 409, 413, 415, 422, 502, 503, 504),
    openapi_extra={**OPERATOR_ONLY, **json_body(V2LoadRequest)},
)
async def repository_load(model: str, request: Request, svc: Svc) -> JSONResponse:
    """Load a model by ``parameters.metadataCid`` (optional ``tokenId``, ``warmup``), as
    ``POST /api/models/load`` does. ``{model}`` must be the model's published name or the
    model_id it gets. Without a CID, a model this server loaded before is loaded again."""
    doc = parse_object(await request.body(), "the load request")
    cid, token, warmup = _load_parameters(parameters_of(doc, "load request"))
    outcome = await svc.repository.load_named(model, cid, token, warmup, bind_name=True)
    m = outcome.model
    return JSONResponse(
        {
            "name": m.model_id,
            "version": m.metadata.version,
            "state": "READY",
            "status": outcome.status,
            "load_time_ms": round(outcome.load_time_ms, 2),
        }
    )


@router.post(
    "/repository/models/{model}/unload",
    response_model=V2UnloadResponse,
    responses=v2_errors(400, 401, 404, 413, 415, 503),
    openapi_extra={**OPERATOR_ONLY, **json_body(V2UnloadRequest)},
)
async def repository_unload(model: str, request: Request, svc: Svc) -> JSONResponse:
    """Unload as ``DELETE /api/models/{id}`` does: out of memory and out of the index (so it
    does not reload by itself); load it again by its metadata CID."""
    doc = parse_object(await request.body(), "the unload request")
    parameters_of(doc, "unload request")  # unload_dependents: no model has dependents here
    model_id = await svc.repository.resolve_name(model)
    await svc.repository.unload(model_id)
    return JSONResponse({"name": model_id, "state": "UNAVAILABLE"})
