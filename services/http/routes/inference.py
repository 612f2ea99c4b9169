"""``/api/inference``: run a loaded model; and the raw-upload twin ``/api/models/{id}/predict``.

Both take the same steps in the same order: the body, bounded by the body-size middleware;
the caller (``caller_of``: a signed request is checked over the raw body); the model found
and the license gate passed (``DataPlane.admit``); only then the payload decoded, by the
inference worker that also preprocesses, runs and postprocesses it (a :class:`Deferred`
payload: one hand-off from the event loop), never on the event loop. An unknown model or a
caller without a license is answered before any of the payload is decoded.
``/api/inference/execute`` names its model inside the JSON body, so that body is parsed
(without decoding ``input_data``; a large body in the preprocess pool) before the model is
looked up.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response

import postprocessing
import preprocessing
from postprocessing import Options
from preprocessing import Payload
from services.dataplane.plane import Deferred, InferenceResult
from services.http.codecs import (
    FORMATS,
    URL_FORMAT,
    CodecLimits,
    decode_input,
    inline_refs,
    parse_execute_request,
)
from services.http.deps import caller_of, services_of
from services.http.errors import BadRequest
from services.http.lane import LaneRoute
from services.http.limits import check_rate_limit
from services.http.raw_tensor import CONTENT_TYPE as RAW_TENSOR
from services.http.responses import JSONResponse
from services.http.routes.jobs import JobAccepted
from services.http.routes.jobs import submit as submit_job
from services.http.schemas import (
    SIGNED_OR_OPEN,
    ExecuteRequest,
    ExecuteResponse,
    FormatsResponse,
    api_errors,
)
from services.http.upload import UploadLimits, decode_upload
from services.http.url_input import fetch_image, url_policy
from services.wiring import Services

router = APIRouter(tags=["inference"])
_ERRORS = api_errors(400, 401, 403, 404, 413, 415, 422, 429, 503, 504)
_ASYNC = {202: {"model": JobAccepted, "description": "execution_mode async: the job's id"}}


def _check_top_k(svc: Services, top_k: int) -> None:
    if top_k > svc.settings.max_top_k:
        raise BadRequest(f"options.top_k is {top_k}; the limit is {svc.settings.max_top_k}")


def reply_body(result: InferenceResult) -> dict[str, Any]:
    """The reply's body (also an async job's ``result``)."""
    return {
        "success": True,
        "model_id": result.model_id,
        "predictions": result.predictions,
        "details": result.details,
        "metrics": result.times.as_metrics(),
        "cache": result.cache,
    }


def _reply(result: InferenceResult) -> JSONResponse:
    """The reply; ``cache`` and the ``X-Cache`` header say hit, miss or bypass."""
    return JSONResponse(reply_body(result), headers={"X-Cache": result.cache})


async def _payload(svc: Services, req: ExecuteRequest) -> Payload | Deferred:
    """``input_data`` to be decoded by the worker that runs the request, or (``url``) the
    image fetched."""
    fmt, content = req.input_data.format, req.input_data.content
    if fmt == URL_FORMAT:
        return await fetch_image(content, url_policy(svc.settings))
    limits = CodecLimits(svc.settings.max_base64_chars, svc.settings.max_tensor_elements)
    size = len(content) if isinstance(content, str) else None
    return Deferred(functools.partial(decode_input, fmt, content, limits), size)


# The body is parsed by the route (off the event loop, after authentication), not by FastAPI;
# the OpenAPI document still describes it.
_EXECUTE_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": inline_refs(ExecuteRequest.model_json_schema())}
        },
        "required": True,
    }
}


@router.post(
    "/api/inference/execute",
    response_model=ExecuteResponse,
    responses={**_ASYNC, **_ERRORS},
    openapi_extra={**_EXECUTE_BODY, **SIGNED_OR_OPEN},
)
async def execute(request: Request) -> JSONResponse:
    """Run one input (base64 image, URL of an image, tensor or features) through a loaded
    model; with ``execution_mode: "async"``, answer 202 with a job id at once."""
    svc = services_of(request)
    await check_rate_limit(request, svc)
    body = await request.body()
    caller = await caller_of(svc, request)
    dataplane = svc.dataplane
    req = await dataplane.offload(parse_execute_request, body, size=len(body))
    _check_top_k(svc, req.options.top_k)
    admitted = await dataplane.admit(req.model_id, caller)
    payload = await _payload(svc, req)
    options = Options(top_k=req.options.top_k, threshold=req.options.threshold)
    if req.mode == "async":
        if isinstance(payload, Deferred):  # an input that cannot be decoded is answered now
            payload = await dataplane.offload(payload.decode)

        async def work() -> dict[str, Any]:
            done = await dataplane.execute_admitted(
                admitted, payload, options, timeout_ms=req.options.timeout
            )
            return reply_body(done)

        return await submit_job(svc, caller, work)
    result = await dataplane.execute_admitted(
        admitted, payload, options, timeout_ms=req.options.timeout
    )
    return _reply(result)


class PredictQuery(BaseModel):
    """The query of ``/api/models/{model_id}/predict`` (declared to FastAPI and checked by
    :func:`predict_query` on the direct path)."""

    top_k: int = Field(5, ge=0)
    threshold: float = Field(0.0, ge=0.0, le=1.0)
    timeout: int | None = Field(None, ge=1, le=3_600_000, description="ms")


@router.post(
    "/api/models/{model_id}/predict",
    response_model=ExecuteResponse,
    responses=_ERRORS,
    openapi_extra={
        **SIGNED_OR_OPEN,
        "requestBody": {
            "content": {
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                RAW_TENSOR: {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
            "required": True,
        },
    },
)
async def predict_upload(
    model_id: str,
    request: Request,
    query: Annotated[PredictQuery, Query()],
) -> JSONResponse:
    """The image as the raw request body (``image/*``, ``application/octet-stream``) or as a
    multipart ``file`` field: no base64 needed; or a tensor's raw bytes
    (``application/x-cidserve-tensor`` with ``X-Tensor-Dtype`` and ``X-Tensor-Shape``)."""
    svc = services_of(request)
    await check_rate_limit(request, svc)
    _check_top_k(svc, query.top_k)
    body = await request.body()  # read (bounded) once; the authenticator reuses it
    caller = await caller_of(svc, request)
    dataplane = svc.dataplane
    admitted = await dataplane.admit(model_id, caller)
    limits = UploadLimits(svc.settings.max_body_bytes, svc.settings.max_tensor_elements)
    decode = functools.partial(decode_upload, body, dict(request.headers), limits)
    payload = Deferred(decode, len(body))
    result = await dataplane.execute_admitted(
        admitted,
        payload,
        Options(top_k=query.top_k, threshold=query.threshold),
        timeout_ms=query.timeout,
    )
    return _reply(result)


@router.get("/api/inference/formats", response_model=FormatsResponse)
async def formats() -> JSONResponse:
    """Input formats, upload content types, and the registered pre/postprocessing kinds."""
    return JSONResponse(
        {
            "success": True,
            "formats": [{"format": k, "description": v} for k, v in FORMATS.items()],
            "upload": {
                "endpoint": "POST /api/models/{model_id}/predict",
                "content_types": [
                    "image/*",
                    "application/octet-stream",
                    "multipart/form-data",
                    RAW_TENSOR,
                ],
            },
            "preprocessing_kinds": preprocessing.kinds(),
            "postprocessing_kinds": postprocessing.kinds(),
            "options": {"top_k": "int >= 0 (0: all)", "threshold": "0..1", "timeout": "ms"},
        }
    )


def predict_query(request: Request) -> PredictQuery:
    """The query parameters checked as FastAPI checks the route's (422 naming the field)."""
    try:
        return PredictQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = [
            {"loc": ("query", *e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise RequestValidationError(errors) from None


async def _execute_lane(request: Request, _: dict[str, str]) -> Response:
    return await execute(request)


async def _predict_lane(request: Request, params: dict[str, str]) -> Response:
    return await predict_upload(params["model_id"], request, predict_query(request))


LANE = (
    LaneRoute("/api/inference/execute", _execute_lane),
    LaneRoute("/api/models/{model_id}/predict", _predict_lane),
)
"""These routes on the direct path (services/http/lane.py)."""
