"""Raw uploads to ``/api/models/{id}/predict``: an image body, a multipart ``file``, or a
tensor's raw bytes.

:func:`decode_upload` is a blocking function of the body (already read, bounded by the body
limit) and the request headers: the route calls it in the preprocess pool, after the caller
is authenticated and the license gate has let the request through. A multipart body is parsed
here too (``python_multipart``, not Starlette's form parser on the event loop): at most
:data:`MAX_PARTS` parts, each header block bounded, and only the ``file`` part's bytes kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from preprocessing import ImagePayload, Payload
from services.http.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from services.http.raw_tensor import CONTENT_TYPE as RAW_TENSOR
from services.http.raw_tensor import parse_raw_tensor

MAX_PARTS = 9
"""Parts a multipart upload may have: the ``file`` and a few other fields."""


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """Bounds on one upload, from settings."""

    max_body_bytes: int
    max_tensor_elements: int


def decode_upload(body: bytes, headers: Mapping[str, str], limits: UploadLimits) -> Payload:
    """The payload of a raw upload: the image as the body or a multipart ``file`` field, or a
    tensor's raw bytes (``application/x-cidserve-tensor``). ``headers`` has lower-case names.
    Blocking: call it off the event loop."""
    full_type = headers.get("content-type", "")
    ctype = full_type.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        data = multipart_file(body, full_type, limits.max_body_bytes)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data = body
    elif ctype == RAW_TENSOR:
        return parse_raw_tensor(
            body,
            headers.get("x-tensor-dtype"),
            headers.get("x-tensor-shape"),
            headers.get("x-tensor-input"),
            max_elements=limits.max_tensor_elements,
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


class _Parts:
    """Callbacks of the multipart parser: counts the parts and keeps the ``file`` part's bytes."""

    def __init__(self, max_part_bytes: int) -> None:
        self.max_part_bytes = max_part_bytes
        self.count = 0
        self.file: bytearray | None = None
        self._field = bytearray()
        self._value = bytearray()
        self._disposition = b""
        self._keep = False

    def on_part_begin(self) -> None:
        self.count += 1
        if self.count > MAX_PARTS:
            raise BadRequest(f"multipart body has more than {MAX_PARTS} parts")
        self._disposition = b""
        self._keep = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.strip().lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != b"file":
            return
        if self.file is not None:
            raise BadRequest("multipart body has more than one 'file' field")
        if b"filename" not in options:  # a plain form field, not an uploaded file
            return
        self.file = bytearray()
        self._keep = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep and self.file is not None:
            if len(self.file) + (end - start) > self.max_part_bytes:
                raise PayloadTooLarge(
                    f"the multipart 'file' part is over {self.max_part_bytes} bytes"
                )
            self.file += data[start:end]

    def on_part_end(self) -> None:
        self._keep = False


def multipart_file(body: bytes, content_type: str, max_part_bytes: int) -> bytes:
    """The bytes of the ``file`` part of a ``multipart/form-data`` body; 400 naming what is
    wrong with a malformed body or a missing part."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("malformed multipart body: the Content-Type has no boundary")
    parts = _Parts(max_part_bytes)
    callbacks = {
        name: getattr(parts, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    if parts.file is None:
        raise BadRequest("multipart body needs a 'file' field holding the image")
    return bytes(parts.file)
