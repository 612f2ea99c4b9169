"""Raw uploads to ``/api/models/{id}/predict``: an image body, a multipart ``file``, or a
tensor's raw bytes. Bounded by the body limit before anything is decoded."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from preprocessing import ImagePayload, Payload
from services.http.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from services.http.raw_tensor import CONTENT_TYPE as RAW_TENSOR
from services.http.raw_tensor import parse_raw_tensor


async def upload_payload(
    request: Request, max_body_bytes: int, max_tensor_elements: int
) -> Payload:
    """The payload of a raw upload: the image as the body or a multipart ``file`` field, or a
    tensor's raw bytes (``application/x-cidserve-tensor``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=max_body_bytes)
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
            max_elements=max_tensor_elements,
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
