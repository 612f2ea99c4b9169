"""``/api/inference``: run a loaded model; and the raw-upload twin ``/api/models/{id}/predict``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

import postprocessing
import preprocessing
from postprocessing import Options
from services.dataplane.plane import InferenceResult
from services.http.codecs import FORMATS, CodecLimits, decode_input
from services.http.deps import Svc, caller_of
from services.http.errors import BadRequest
from services.http.raw_tensor import CONTENT_TYPE as RAW_TENSOR
from services.http.responses import JSONResponse
from services.http.schemas import ErrorResponse, ExecuteRequest, ExecuteResponse
from services.http.upload import upload_payload
from services.wiring import Services

router = APIRouter(tags=["inference"])
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 422, 503, 504)}


def _check_top_k(svc: Services, top_k: int) -> None:
    if top_k > svc.settings.max_top_k:
        raise BadRequest(f"options.top_k is {top_k}; the limit is {svc.settings.max_top_k}")


def _reply(result: InferenceResult) -> JSONResponse:
    """The reply; ``cache`` and the ``X-Cache`` header say hit, miss or bypass."""
    return JSONResponse(
        {
            "success": True,
            "model_id": result.model_id,
            "predictions": result.predictions,
            "details": result.details,
            "metrics": result.times.as_metrics(),
            "cache": result.cache,
        },
        headers={"X-Cache": result.cache},
    )


@router.post(
    "/api/inference/execute",
    response_model=ExecuteResponse,
    responses=_ERRORS,  # type: ignore[arg-type]
)
async def execute(req: ExecuteRequest, request: Request, svc: Svc) -> JSONResponse:
    """Run one input (base64 image, tensor or features) through a loaded model."""
    _check_top_k(svc, req.options.top_k)
    caller = await caller_of(svc, request)
    limits = CodecLimits(svc.settings.max_base64_chars, svc.settings.max_tensor_elements)
    payload = decode_input(req.input_data.format, req.input_data.content, limits)
    result = await svc.dataplane.execute(
        req.model_id,
        payload,
        Options(top_k=req.options.top_k, threshold=req.options.threshold),
        caller=caller,
        timeout_ms=req.options.timeout,
    )
    return _reply(result)


@router.post(
    "/api/models/{model_id}/predict",
    response_model=ExecuteResponse,
    responses=_ERRORS,  # type: ignore[arg-type]
    openapi_extra={
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
        }
    },
)
async def predict_upload(
    model_id: str,
    request: Request,
    svc: Svc,
    top_k: Annotated[int, Query(ge=0)] = 5,
    threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.0,
    timeout: Annotated[int | None, Query(ge=1, le=3_600_000, description="ms")] = None,
) -> JSONResponse:
    """The image as the raw request body (``image/*``, ``application/octet-stream``) or as a
    multipart ``file`` field: no base64 needed; or a tensor's raw bytes
    (``application/x-cidserve-tensor`` with ``X-Tensor-Dtype`` and ``X-Tensor-Shape``)."""
    _check_top_k(svc, top_k)
    await request.body()  # read (bounded) once; form parsing and the authenticator reuse it
    payload = await upload_payload(
        request, svc.settings.max_body_bytes, svc.settings.max_tensor_elements
    )
    caller = await caller_of(svc, request)
    result = await svc.dataplane.execute(
        model_id,
        payload,
        Options(top_k=top_k, threshold=threshold),
        caller=caller,
        timeout_ms=timeout,
    )
    return _reply(result)


@router.get("/api/inference/formats")
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
