"""``/v2``: the Open Inference Protocol (KServe V2) REST API, beside ``/api``.

Triton and KServe clients work against these routes unmodified: health, server and model
metadata, inference (JSON or Triton's binary tensor data, the classification extension) and
the model repository extension. They run on the same session cache, loader, index and license
gate as ``/api``; the protocol's model name is the ``model_id`` of ``/api/models/load`` (or a
published model name, with ``/versions/{v}`` for its metadata version).

Errors here have the protocol's shape, ``{"error": "<message>"}``, with the status the rest
of the gateway would use for the same problem (400, 401, 403, 404, 413, 415, 422, 502, 503,
504). Tensor encoding lives in :mod:`services.http.v2_codec`.

An inference request is taken in this order: the body (bounded by the body-size middleware),
the caller (a signed request is checked over the raw body), the model name resolved and the
license gate passed (``DataPlane.admit``), and only then the body parsed and decoded, in the
preprocess pool (``DataPlane.offload``), never on the event loop. An unknown model or a
caller without a license gets its answer without the body being parsed.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from services import __version__
from services.dataplane.datatypes import datatype_for, protocol_shape
from services.dataplane.plane import TensorRun
from services.errors import DependencyUnavailable
from services.http.deps import Svc, caller_of, services_of
from services.http.errors import UnsupportedMediaType
from services.http.lane import LaneRoute
from services.http.limits import check_rate_limit
from services.http.responses import JSONResponse
from services.http.schemas import SIGNED_OR_OPEN
from services.http.v2_codec import HEADER_LENGTH, InferRequest, V2Error, V2Limits, decode_request
from services.http.v2_reply import OutputTensor, classification_strings, encode_response
from services.http.v2_schemas import (
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
    infer_body,
    v2_errors,
)
from services.wiring import Services

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "parameters"]
_MAX_TIMEOUT_US = 3_600_000_000
_UNSUPPORTED_PARAMS = ("sequence_id", "sequence_start", "sequence_end")


router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

# The metadata is read from the content store when the model is not in memory.
_METADATA_ERRORS = v2_errors(404, 413, 422, 502, 503, 504)
_READY_ERRORS = v2_errors(404, 503)
_INFER_BODY = infer_body()
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs: JSON, or JSON followed by binary tensor data "
        "(Inference-Header-Content-Length gives the JSON part's length)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            HEADER_LENGTH: {
                "description": "with binary outputs: the length of the JSON part",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    },
    **v2_errors(400, 401, 403, 404, 413, 415, 429, 503, 504),
}


def _limits(svc: Services) -> V2Limits:
    return V2Limits(
        max_elements=svc.settings.max_tensor_elements,
        max_classes=svc.settings.max_top_k,
        max_base64_chars=svc.settings.max_base64_chars,
    )


# -------------------------------------------------------------------------------------------
# Health and metadata


@router.get("/health/live", response_model=V2Live)
async def live() -> JSONResponse:
    """Liveness: the server answers."""
    return JSONResponse({"live": True})


@router.get("/health/ready", response_model=V2Ready, responses=v2_errors(503))
async def ready(svc: Svc) -> JSONResponse:
    """Readiness: 200 when the content store and the license backend answer; 503 otherwise."""
    if svc.dataplane.admission.draining:
        raise DependencyUnavailable("not ready: draining (the server is stopping)")
    down: list[str] = []
    for name, check in (("content_store", svc.store.health), ("licensing", svc.licensing.health)):
        try:
            status = (await check()).get("status")
        except Exception:
            status = "down"
        if status == "down":
            down.append(name)
    if down:
        raise DependencyUnavailable("not ready: dependencies down: " + ", ".join(down))
    return JSONResponse({"ready": True})


@router.get("", response_model=V2ServerMetadata)
async def server_metadata() -> JSONResponse:
    """Server name, version and the protocol extensions it implements."""
    return JSONResponse({"name": "cidserve", "version": __version__, "extensions": EXTENSIONS})


async def _model_metadata(svc: Services, model: str, version: str | None) -> JSONResponse:
    model_id = await svc.repository.resolve_name(model, version)
    m = await svc.repository.metadata_of(model_id)
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


@router.get("/models/{model}", response_model=V2ModelMetadata, responses=_METADATA_ERRORS)
async def model_metadata(model: str, svc: Svc) -> JSONResponse:
    """Inputs and outputs with protocol datatypes (-1: a dynamic dimension)."""
    return await _model_metadata(svc, model, None)


@router.get(
    "/models/{model}/versions/{version}",
    response_model=V2ModelMetadata,
    responses=_METADATA_ERRORS,
)
async def model_version_metadata(model: str, version: str, svc: Svc) -> JSONResponse:
    """The same, for the model whose metadata version is ``version``."""
    return await _model_metadata(svc, model, version)


async def _model_ready(svc: Services, model: str, version: str | None) -> JSONResponse:
    model_id = await svc.repository.resolve_name(model, version)
    svc.dataplane.ready(model_id)
    return JSONResponse({"name": model_id, "ready": True})


@router.get("/models/{model}/ready", response_model=V2ModelReady, responses=_READY_ERRORS)
async def model_ready(model: str, svc: Svc) -> JSONResponse:
    """200 when the model is in the session cache; 503 when it was evicted; 404 unknown."""
    return await _model_ready(svc, model, None)


@router.get(
    "/models/{model}/versions/{version}/ready",
    response_model=V2ModelReady,
    responses=_READY_ERRORS,
)
async def model_version_ready(model: str, version: str, svc: Svc) -> JSONResponse:
    """The same, for the model whose metadata version is ``version``."""
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
            labelled = await svc.dataplane.top_classes(
                run.model, item.name, values, item.classification
            )
            strings = classification_strings(values, item.classification, labelled)
            out.append(OutputTensor(item.name, strings, item.binary, "BYTES"))
        else:
            out.append(OutputTensor(item.name, values, item.binary))
    return out


async def _infer(request: Request, model: str, version: str | None) -> Response:
    # The services and the rate limit without FastAPI's dependencies (deps.services_of).
    svc = services_of(request)
    await check_rate_limit(request, svc)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed"
        )
    body = await request.body()
    caller = await caller_of(svc, request)
    model_id = await svc.repository.resolve_name(model, version)
    dataplane = svc.dataplane
    admitted = await dataplane.admit(model_id, caller)
    req: InferRequest = await dataplane.offload(
        decode_request, body, request.headers.get(HEADER_LENGTH), _limits(svc), size=len(body)
    )
    timeout_ms = _timeout_ms(req.parameters)
    feeds = {t.name: t.array for t in req.inputs}
    run = await dataplane.infer_admitted(admitted, feeds, timeout_ms=timeout_ms)
    outputs = await _outputs(svc, req, run)
    header: dict[str, Any] = {
        "model_name": run.model.model_id,
        "model_version": run.model.metadata.version,
    }
    if req.id is not None:
        header["id"] = req.id
    size = sum(o.array.nbytes for o in outputs)
    content, json_length = await svc.dataplane.offload(encode_response, header, outputs, size=size)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(json_length)},
    )


@router.post(
    "/models/{model}/infer",
    response_model=V2InferResponse,
    responses=_INFER_RESPONSES,
    openapi_extra={**_INFER_BODY, **SIGNED_OR_OPEN},
)
async def infer(model: str, request: Request) -> Response:
    """Run the model: JSON tensors, or JSON followed by binary tensor data
    (``Inference-Header-Content-Length``). A BYTES input holding encoded images feeds an
    image model through its preprocessing; output ``parameters.classification: k`` returns
    the top ``k`` classes as ``"value:index:label"``."""
    return await _infer(request, model, None)


@router.post(
    "/models/{model}/versions/{version}/infer",
    response_model=V2InferResponse,
    responses=_INFER_RESPONSES,
    openapi_extra={**_INFER_BODY, **SIGNED_OR_OPEN},
)
async def infer_version(model: str, version: str, request: Request) -> Response:
    """The same, for the model whose metadata version is ``version``."""
    return await _infer(request, model, version)


async def _infer_lane(request: Request, params: dict[str, str]) -> Response:
    return await _infer(request, params["model"], params.get("version"))


LANE = (
    LaneRoute("/v2/models/{model}/infer", _infer_lane),
    LaneRoute("/v2/models/{model}/versions/{version}/infer", _infer_lane),
)
"""These routes on the direct path (services/http/lane.py)."""
