"""What each client method sends and how its reply is read, shared by :class:`Client` and
:class:`AsyncClient` (which differ only in how they do I/O).

A :class:`Call` is one request (method, path, query, headers, body) and the model its reply
parses into. :func:`parse_reply` turns a status, headers and a body read up to the client's
bound into that model, or raises the typed error of :mod:`cidserve_client.errors`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from cidserve_client.errors import InvalidResponseError, api_error
from cidserve_client.models import (
    ExecuteOptions,
    Health,
    InferInput,
    InferResult,
    InputData,
    LoadResult,
    ModelList,
    PredictResult,
    RequestedOutput,
    UnloadResult,
)

ImageSource: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview"
"""A file path, or the encoded image itself."""

HEADER_MODEL_ID = "X-Model-Id"
HEADER_JSON_LENGTH = "inference-header-content-length"
JSON = "application/json"

# Magic numbers of the image formats the server decodes, for the upload's Content-Type.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    method: str
    path: str
    reply: type[R]
    params: dict[str, str | int | float] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None


def _segment(value: str, what: str) -> str:
    """A path segment, percent-encoded (a ``/`` in an id cannot reach another route)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return quote(value, safe="")


def _json_body(doc: object) -> bytes:
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise ValueError(f"the request is not valid JSON: {exc}") from None


def image_content_type(data: bytes) -> str:
    """The Content-Type for an encoded image, from its first bytes."""
    for magic, ctype in _MAGIC:
        if data.startswith(magic):
            return ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def read_image(image: ImageSource) -> bytes:
    """The bytes of ``image``: read from the file when it is a path."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    raise TypeError(f"image must be a path or bytes, not {type(image).__name__}")


# --- the calls ------------------------------------------------------------------------------


def health() -> Call[Health]:
    return Call("GET", "/health", Health)


def models() -> Call[ModelList]:
    return Call("GET", "/api/models", ModelList)


def load(
    metadata_cid: str | None, token_id: int | None, warmup: bool, model: str | None = None
) -> Call[LoadResult]:
    if bool(metadata_cid) == bool(model):
        raise ValueError(
            "give exactly one of metadata_cid (the CID of the model's metadata.json) and model "
            "(a reference: NAME@latest, NAME@VERSION or NAME@LABEL)"
        )
    body: dict[str, object] = {"warmup": bool(warmup)}
    if model:
        body["model"] = model
    else:
        body["metadataCid"] = metadata_cid
    if token_id is not None:
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise ValueError("token_id must be a non-negative integer")
        body["tokenId"] = token_id
    return Call(
        "POST",
        "/api/models/load",
        LoadResult,
        headers={"Content-Type": JSON},
        content=_json_body(body),
    )


def unload(model_id: str) -> Call[UnloadResult]:
    return Call("DELETE", f"/api/models/{_segment(model_id, 'model_id')}", UnloadResult)


def predict(
    model_id: str,
    image: bytes,
    *,
    top_k: int,
    threshold: float | None,
    timeout_ms: int | None,
    content_type: str | None,
) -> Call[PredictResult]:
    params: dict[str, str | int | float] = {"top_k": top_k}
    if threshold is not None:
        params["threshold"] = threshold
    if timeout_ms is not None:
        params["timeout"] = timeout_ms
    return Call(
        "POST",
        f"/api/models/{_segment(model_id, 'model_id')}/predict",
        PredictResult,
        params=params,
        headers={"Content-Type": content_type or image_content_type(image)},
        content=image,
    )


def execute(
    model_id: str,
    input_data: InputData | Mapping[str, Any],
    options: ExecuteOptions | Mapping[str, Any] | None,
) -> Call[PredictResult]:
    data = input_data if isinstance(input_data, InputData) else InputData(**input_data)
    opts = options if isinstance(options, ExecuteOptions) else ExecuteOptions(**(options or {}))
    body = {
        "model_id": model_id,
        "input_data": data.model_dump(),
        "options": opts.model_dump(exclude_none=True),
    }
    return Call(
        "POST",
        "/api/inference/execute",
        PredictResult,
        # The body names the model too; the header lets a proxy route without reading it.
        headers={"Content-Type": JSON, HEADER_MODEL_ID: model_id},
        content=_json_body(body),
    )


def infer(
    model_name: str,
    inputs: Sequence[InferInput | Mapping[str, Any]],
    *,
    outputs: Sequence[RequestedOutput | Mapping[str, Any] | str] | None,
    request_id: str | None,
    parameters: Mapping[str, Any] | None,
    version: str | None,
) -> Call[InferResult]:
    if not inputs:
        raise ValueError("inputs: give at least one tensor")
    tensors = [t if isinstance(t, InferInput) else InferInput(**t) for t in inputs]
    body: dict[str, Any] = {"inputs": [t.model_dump(exclude_none=True) for t in tensors]}
    if outputs is not None:
        wanted = [
            o
            if isinstance(o, RequestedOutput)
            else RequestedOutput(name=o)
            if isinstance(o, str)
            else RequestedOutput(**o)
            for o in outputs
        ]
        body["outputs"] = [o.model_dump(exclude_none=True) for o in wanted]
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = dict(parameters)
    path = f"/v2/models/{_segment(model_name, 'model_name')}"
    if version is not None:
        path += f"/versions/{_segment(version, 'version')}"
    return Call(
        "POST",
        path + "/infer",
        InferResult,
        headers={"Content-Type": JSON},
        content=_json_body(body),
    )


# --- replies --------------------------------------------------------------------------------


def _json(body: bytes, status: int) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise InvalidResponseError(
            f"HTTP {status}: the reply is not JSON: {body[:200]!r}", status
        ) from None


def _v2_binary(body: bytes, json_length: str, status: int) -> dict[str, Any]:
    """A V2 reply whose outputs' bytes follow its JSON part: each output gets ``raw``."""
    try:
        split = int(json_length)
    except ValueError:
        raise InvalidResponseError(f"bad {HEADER_JSON_LENGTH}: {json_length!r}", status) from None
    if not 0 <= split <= len(body):
        raise InvalidResponseError(f"{HEADER_JSON_LENGTH} is past the end of the reply", status)
    doc = _json(body[:split], status)
    offset = split
    for out in doc.get("outputs", []) if isinstance(doc, dict) else []:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if isinstance(size, int):
            if offset + size > len(body):
                raise InvalidResponseError("binary output data past the end of the reply", status)
            out["raw"] = body[offset : offset + size]
            offset += size
    return doc  # type: ignore[no-any-return]


def parse_reply(call: Call[R], status: int, headers: Mapping[str, str], body: bytes) -> R:
    """The reply as ``call.reply``; an error status raises its :class:`APIError`."""
    if status >= 400:
        try:
            doc: Any = json.loads(body)
        except ValueError:
            doc = None
        text = body[:500].decode("utf-8", "replace").strip()
        raise api_error(status, doc, text, headers.get("retry-after"))
    json_length = headers.get(HEADER_JSON_LENGTH)
    if call.reply is InferResult and json_length is not None:
        doc = _v2_binary(body, json_length, status)
    else:
        doc = _json(body, status)
    try:
        return call.reply.model_validate(doc)
    except ValidationError as exc:
        raise InvalidResponseError(
            f"HTTP {status}: the reply is not a {call.reply.__name__}: {exc}", status
        ) from None
