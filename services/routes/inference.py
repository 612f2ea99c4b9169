"""``/api/inference``: run a loaded model; and the raw-upload twin ``/api/models/{id}/predict``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

import postprocessing
import preprocessing
from postprocessing import Options
from preprocessing import ImagePayload, Payload
from services.app import Services
from services.codecs import FORMATS, decode_input
from services.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from services.http import JSONResponse
from services.inference import InferenceResult
from services.licensing import Caller
from services.raw_tensor import CONTENT_TYPE as RAW_TENSOR
from services.raw_tensor import parse_raw_tensor
from services.routes import get_services
from services.schemas import ErrorResponse, ExecuteRequest, ExecuteResponse

router = APIRouter(tags=["inference"])
Svc = Annotated[Services, Depends(get_services)]
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 422, 503, 504)}


class _RequestView:
    """What an authenticator may read of a request (method, path, headers, body)."""

    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, request: Request, body: bytes) -> None:
        self.method = request.method
        # The request target as sent (path + ?query): what a signed request's signature covers.
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else request.url.path
        query = request.scope.get("query_string", b"")
        self.path = f"{path}?{query.decode('latin-1')}" if query else path
        self.headers = {k.lower(): v for k, v in request.headers.items()}
        self.body = body


async def _caller(svc: Services, request: Request) -> Caller | None:
    return await svc.authenticator.authenticate(_RequestView(request, await request.body()))


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
    caller = await _caller(svc, request)
    payload = decode_input(req.input_data.format, req.input_data.content, svc.codec_limits)
    result = await svc.inference.execute(
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
    payload = await _upload_payload(request, svc)
    caller = await _caller(svc, request)
    result = await svc.inference.execute(
        model_id,
        payload,
        Options(top_k=top_k, threshold=threshold),
        caller=caller,
        timeout_ms=timeout,
    )
    return _reply(result)


async def _upload_payload(request: Request, svc: Services) -> Payload:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(
                max_files=1, max_fields=8, max_part_size=svc.settings.max_body_bytes
            )
        except ValueError as exc:  # malformed multipart
            raise BadRequest(f"malformed multipart body: {exc}") from None
        except Exception as exc:
            if getattr(exc, "status_code", None) == 413:
                raise PayloadTooLarge(str(getattr(exc, "detail", exc))) from None
            raise BadRequest(f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
        upload: Any = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest("multipart body needs a 'file' field holding the image")
        data = await upload.read()
        await form.close()
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data = await request.body()
    elif ctype == RAW_TENSOR:
        return parse_raw_tensor(
            await request.body(),
            request.headers.get("x-tensor-dtype"),
            request.headers.get("x-tensor-shape"),
            request.headers.get("x-tensor-input"),
            max_elements=svc.settings.max_tensor_elements,
        )
    else:
        raise UnsupportedMediaType(
            f"content-type {ctype or '(none)'!r} is not accepted here; send the image as "
            f"image/*, application/octet-stream or a multipart 'file' field, or a tensor as "
            f"{RAW_TENSOR}"
        )
    if not data:
        raise BadRequest("the request carries no image bytes")
    return ImagePayload(data)


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
