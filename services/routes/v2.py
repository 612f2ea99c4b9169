"""``/v2``: the Open Inference Protocol (KServe V2) REST API, beside ``/api``.

Triton and KServe clients work against these routes unmodified: health, server and model
metadata, inference (JSON or Triton's binary tensor data, the classification extension) and
the model repository extension. They run on the same session cache, loader, index and license
gate as ``/api``; the protocol's model name is the ``model_id`` of ``/api/models/load`` (or a
published model name, with ``/versions/{v}`` for its metadata version).

Errors here have the protocol's shape, ``{"error": "<message>"}``, with the status the rest
of the gateway would use for the same problem (400, 401, 403, 404, 413, 415, 422, 502, 503,
504). Tensor encoding lives in :mod:`services.v2_codec`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from registry.index import model_id_for
from registry.metadata import ModelMetadata, parse_metadata
from services import __version__
from services.app import Services, _status_for
from services.errors import ApiError, ModelNotFound, ServiceUnavailable, UnsupportedMediaType
from services.http import JSONResponse
from services.inference import TensorRun
from services.routes import get_services
from services.routes.inference import _caller
from services.v2_codec import (
    HEADER_LENGTH,
    InferRequest,
    OutputTensor,
    V2Error,
    V2Limits,
    classification_strings,
    datatype_for,
    decode_request,
    encode_response,
    parameters_of,
    parse_object,
    protocol_shape,
)

log = logging.getLogger("cidserve.v2")

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "parameters"]
# Bodies over this size are decoded and encoded in a worker thread, off the event loop.
_INLINE_BYTES = 64 << 10
_MAX_TIMEOUT_US = 3_600_000_000
_UNSUPPORTED_PARAMS = ("sequence_id", "sequence_start", "sequence_end")


def v2_error(exc: Exception) -> JSONResponse:
    """Any exception as the protocol's error reply ``{"error": ...}``."""
    headers: dict[str, str] = {}
    if isinstance(exc, V2Error):
        status, message = exc.status_code, str(exc)
    elif isinstance(exc, ApiError):
        status, message, headers = exc.status_code, exc.message, exc.headers
    elif isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        status, message = 400, f"{where}: {first['msg']}" if where else str(first["msg"])
    elif isinstance(exc, StarletteHTTPException):
        status, message = exc.status_code, str(exc.detail)
        headers = dict(exc.headers or {})
    else:
        status, title, _, headers = _status_for(exc)
        if status == 500 and title == "Internal error":
            log.exception("unhandled error", exc_info=exc)
            message = f"internal error ({type(exc).__name__})"
        else:
            message = str(exc)
            if status >= 500:
                log.error("%s: %s", title, exc)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _V2Route(APIRoute):
    """A route whose errors, of any kind, come back as ``{"error": ...}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return v2_error(exc)

        return guarded


router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], route_class=_V2Route)
Svc = Annotated[Services, Depends(get_services)]


def _limits(svc: Services) -> V2Limits:
    return V2Limits(
        max_elements=svc.settings.max_tensor_elements,
        max_classes=svc.settings.max_top_k,
        max_base64_chars=svc.settings.max_base64_chars,
    )


async def _off_loop(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` inline for small bodies, in a worker thread for large ones."""
    if size <= _INLINE_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


# -------------------------------------------------------------------------------------------
# Health and metadata


@router.get("/health/live")
async def live() -> JSONResponse:
    """Liveness: the server answers."""
    return JSONResponse({"live": True})


@router.get("/health/ready")
async def ready(svc: Svc) -> JSONResponse:
    """Readiness: 200 when the content store and the license backend answer; 503 otherwise."""
    down: list[str] = []
    for name, check in (("content_store", svc.store.health), ("licensing", svc.licensing.health)):
        try:
            status = (await check()).get("status")
        except Exception:
            status = "down"
        if status == "down":
            down.append(name)
    if down:
        raise ServiceUnavailable("not ready: dependencies down: " + ", ".join(down))
    return JSONResponse({"ready": True})


@router.get("")
async def server_metadata() -> JSONResponse:
    """Server name, version and the protocol extensions it implements."""
    return JSONResponse({"name": "cidserve", "version": __version__, "extensions": EXTENSIONS})


async def _metadata_of(svc: Services, model_id: str) -> ModelMetadata:
    """A known model's metadata: from memory, or (evicted) re-read from the content store."""
    loaded = svc.cache.peek(model_id)
    if loaded is not None:
        return loaded.metadata
    entry = await svc.index.get(model_id)
    if entry is None:
        raise ModelNotFound(model_id)
    limit = svc.settings.max_metadata_bytes
    return parse_metadata(await svc.store.get_bytes(entry.metadata_cid, limit), limit)


async def _model_metadata(svc: Services, model: str, version: str | None) -> JSONResponse:
    model_id = await svc.inference.model_id_named(model, version)
    m = await _metadata_of(svc, model_id)
    return JSONResponse(
        {
            "name": model_id,
            "versions": [m.version],
            "platform": PLATFORM,
            "inputs": [_tensor_metadata(t.name, t.dtype, t.shape) for t in m.inputs],
            "outputs": [_tensor_metadata(t.name, t.dtype, t.shape) for t in m.outputs],
        }
    )


def _tensor_metadata(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype_for(dtype), "shape": protocol_shape(shape)}


@router.get("/models/{model}")
async def model_metadata(model: str, svc: Svc) -> JSONResponse:
    """Inputs and outputs with protocol datatypes (-1: a dynamic dimension)."""
    return await _model_metadata(svc, model, None)


@router.get("/models/{model}/versions/{version}")
async def model_version_metadata(model: str, version: str, svc: Svc) -> JSONResponse:
    """The same, for the model whose metadata version is ``version``."""
    return await _model_metadata(svc, model, version)


async def _model_ready(svc: Services, model: str, version: str | None) -> JSONResponse:
    model_id = await svc.inference.model_id_named(model, version)
    if svc.cache.peek(model_id) is None:
        raise ServiceUnavailable(
            f"model {model_id!r} is not in memory (evicted); load it again, or send it a "
            "request to reload it"
        )
    return JSONResponse({"name": model_id, "ready": True})


@router.get("/models/{model}/ready")
async def model_ready(model: str, svc: Svc) -> JSONResponse:
    """200 when the model is in the session cache; 503 when it was evicted; 404 unknown."""
    return await _model_ready(svc, model, None)


@router.get("/models/{model}/versions/{version}/ready")
async def model_version_ready(model: str, version: str, svc: Svc) -> JSONResponse:
    return await _model_ready(svc, model, version)


# -------------------------------------------------------------------------------------------
# Inference


def _timeout_ms(params: dict[str, Any]) -> int | None:
    """The request's ``timeout`` parameter (microseconds, as Triton clients send it) in ms."""
    for key in _UNSUPPORTED_PARAMS:
        if params.get(key) not in (None, 0, False, ""):
            raise V2Error(f"parameters.{key}: sequence batching is not supported")
    value = params.get("timeout")
    if value is None or value == 0:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX_TIMEOUT_US:
        raise V2Error(f"parameters.timeout must be microseconds in 1..{_MAX_TIMEOUT_US}")
    return max(1, math.ceil(value / 1000))


async def _outputs(svc: Services, req: InferRequest, run: TensorRun) -> list[OutputTensor]:
    """The reply's outputs: the ones asked for (all the model declares if none), with the
    classification extension applied where asked."""
    declared = [t.name for t in run.model.metadata.outputs]
    wanted = req.outputs
    if wanted is None:
        return [OutputTensor(n, run.outputs[n], req.binary_output) for n in declared]
    out: list[OutputTensor] = []
    for item in wanted:
        if item.name not in declared or item.name not in run.outputs:
            raise V2Error(
                f"model has no output {item.name!r}; its outputs are "
                + ", ".join(repr(n) for n in declared)
            )
        values = run.outputs[item.name]
        if item.classification:
            labelled = await svc.inference.top_classes(
                run.model, item.name, values, item.classification
            )
            strings = classification_strings(values, item.classification, labelled)
            out.append(OutputTensor(item.name, strings, item.binary, "BYTES"))
        else:
            out.append(OutputTensor(item.name, values, item.binary))
    return out


async def _infer(svc: Services, request: Request, model: str, version: str | None) -> Response:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed"
        )
    body = await request.body()
    req: InferRequest = await _off_loop(
        len(body), decode_request, body, request.headers.get(HEADER_LENGTH), _limits(svc)
    )
    timeout_ms = _timeout_ms(req.parameters)
    caller = await _caller(svc, request)
    model_id = await svc.inference.model_id_named(model, version)
    feeds = {t.name: t.array for t in req.inputs}
    run = await svc.inference.infer_tensors(model_id, feeds, caller=caller, timeout_ms=timeout_ms)
    outputs = await _outputs(svc, req, run)
    header: dict[str, Any] = {
        "model_name": run.model.model_id,
        "model_version": run.model.metadata.version,
    }
    if req.id is not None:
        header["id"] = req.id
    size = sum(o.array.nbytes for o in outputs)
    content, json_length = await _off_loop(size, encode_response, header, outputs)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(json_length)},
    )


@router.post("/models/{model}/infer")
async def infer(model: str, request: Request, svc: Svc) -> Response:
    """Run the model: JSON tensors, or JSON followed by binary tensor data
    (``Inference-Header-Content-Length``). A BYTES input holding encoded images feeds an
    image model through its preprocessing; output ``parameters.classification: k`` returns
    the top ``k`` classes as ``"value:index:label"``."""
    return await _infer(svc, request, model, None)


@router.post("/models/{model}/versions/{version}/infer")
async def infer_version(model: str, version: str, request: Request, svc: Svc) -> Response:
    return await _infer(svc, request, model, version)


# -------------------------------------------------------------------------------------------
# Model repository extension


@router.post("/repository/index")
async def repository_index(request: Request, svc: Svc) -> JSONResponse:
    """Every model this server has loaded: READY in memory, UNAVAILABLE once evicted.
    Body ``{"ready": true}``: only the ready ones."""
    doc = parse_object(await request.body(), "the index request")
    ready_only = doc.get("ready", False)
    if not isinstance(ready_only, bool):
        raise V2Error("ready must be true or false")
    loaded = {m.model_id: m for m in svc.cache.models()}
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for entry in await svc.index.entries():
        seen.add(entry.model_id)
        if entry.model_id in loaded:
            rows.append(_index_row(entry.model_id, entry.version, "READY", ""))
        elif not ready_only:
            reason = (
                "evicted from the session cache; reloads on its next request"
                if svc.inference.reload_evicted
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


@router.post("/repository/models/{model}/load")
async def repository_load(model: str, request: Request, svc: Svc) -> JSONResponse:
    """Load a model by ``parameters.metadataCid`` (optional ``tokenId``, ``warmup``), as
    ``POST /api/models/load`` does. ``{model}`` must be the model's published name or the
    model_id it gets. Without a CID, a model this server loaded before is loaded again."""
    doc = parse_object(await request.body(), "the load request")
    cid, token, warmup = _load_parameters(parameters_of(doc, "load request"))
    if cid is None:
        try:
            model_id = await svc.inference.model_id_named(model)
        except ModelNotFound:
            raise V2Error(
                f"{model!r} was never loaded here: give its metadata CID in parameters.metadataCid"
            ) from None
        loaded = svc.cache.peek(model_id)
        entry = None if loaded is not None else await svc.index.get(model_id)
        if loaded is not None:
            cid, token = loaded.metadata_cid, loaded.token_id
        elif entry is not None:
            cid, token = entry.metadata_cid, entry.token_id
        else:
            raise ModelNotFound(model_id)
    else:
        known = svc.loader.find_by_cid(cid)
        if known is not None:
            metadata = known.metadata
        else:
            limit = svc.settings.max_metadata_bytes
            metadata = parse_metadata(await svc.store.get_bytes(cid, limit), limit)
        model_id = model_id_for(metadata.name, cid)
        if model not in (metadata.name, model_id):
            raise V2Error(
                f"metadata {cid} describes model {metadata.name!r} (model_id {model_id!r}); "
                f"load it under one of those names, not {model!r}"
            )
    outcome = await svc.loader.load(cid, token, warmup)
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


@router.post("/repository/models/{model}/unload")
async def repository_unload(model: str, request: Request, svc: Svc) -> JSONResponse:
    """Unload as ``DELETE /api/models/{id}`` does: out of memory and out of the index (so it
    does not reload by itself); load it again by its metadata CID."""
    doc = parse_object(await request.body(), "the unload request")
    parameters_of(doc, "unload request")  # unload_dependents: no model has dependents here
    model_id = await svc.inference.model_id_named(model)
    svc.cache.remove(model_id)
    await svc.index.forget(model_id)
    return JSONResponse({"name": model_id, "state": "UNAVAILABLE"})
