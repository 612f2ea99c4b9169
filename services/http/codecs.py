"""Request codecs: the ``input_data`` of ``/api/inference/execute`` -> a preprocessing payload.

Formats (also listed by ``GET /api/inference/formats``):

* ``base64_jpeg``, ``base64_png``, ``base64_image``: base64 of an encoded image (any format
  Pillow decodes; a ``data:image/...;base64,`` prefix is accepted);
* ``tensor``: a nested JSON list, or ``{"data": <base64 little-endian bytes>, "dtype": ..,
  "shape": [..]}``, or ``{"data": <nested list>}``; optional ``"input"`` names the model input;
* ``features``: a JSON object of named numbers (tabular models).

Everything is bounded before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from preprocessing import FeaturesPayload, ImagePayload, Payload, TensorPayload
from registry.metadata import NUMERIC_DTYPES
from services.http.errors import BadRequest, PayloadTooLarge

IMAGE_FORMATS = ("base64_jpeg", "base64_png", "base64_image")
FORMATS: dict[str, str] = {
    "base64_jpeg": "base64 of a JPEG image",
    "base64_png": "base64 of a PNG image",
    "base64_image": "base64 of any image Pillow decodes (JPEG, PNG, WebP, BMP, GIF, TIFF)",
    "tensor": "a nested JSON list, or {data: base64 little-endian bytes, dtype, shape}",
    "features": "a JSON object of named numbers, for tabular models",
}
TENSOR_DTYPES = frozenset(NUMERIC_DTYPES)


@dataclass(frozen=True, slots=True)
class CodecLimits:
    max_base64_chars: int
    max_tensor_elements: int


def b64decode_bounded(text: str, max_chars: int, what: str) -> bytes:
    """Strict base64 (no stray characters), its length checked before anything is decoded."""
    if len(text) > max_chars:
        raise PayloadTooLarge(
            f"{what} has {len(text)} base64 characters; the limit is {max_chars} "
            "(CIDSERVE_MAX_BASE64_CHARS)"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{what} is not valid base64: {exc}") from None


def decode_base64(text: Any, limits: CodecLimits, what: str = "input_data.content") -> bytes:
    """Strict base64 decode with a length bound checked first."""
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a base64 string")
    if text.startswith("data:"):
        head, sep, rest = text.partition(",")
        if not sep or ";base64" not in head:
            raise BadRequest(f"{what} is a data URL without ';base64,'")
        text = rest
    data = b64decode_bounded(text, limits.max_base64_chars, what)
    if not data:
        raise BadRequest(f"{what} is empty")
    return data


def _tensor_from_list(content: Any, limits: CodecLimits) -> np.ndarray:
    _check_list_size(content, limits.max_tensor_elements)
    try:
        array = np.asarray(content)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"tensor is not a regular nested list of numbers: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"tensor must hold numbers; got {array.dtype.kind!r} values")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest("tensor holds NaN or infinite values")
    return array


def _check_list_size(content: Any, limit: int) -> None:
    """Bound a nested list's element count without building it (depth-first on first items)."""
    count = 1
    node = content
    depth = 0
    while isinstance(node, list):
        if not node:
            raise BadRequest("tensor has an empty dimension")
        count *= len(node)
        node = node[0]
        depth += 1
        if depth > 16:
            raise BadRequest("tensor has more than 16 dimensions")
    if count > limit:
        raise PayloadTooLarge(
            f"tensor has {count} elements; the limit is {limit} (CIDSERVE_MAX_TENSOR_ELEMENTS)"
        )


def decode_tensor(content: Any, limits: CodecLimits) -> TensorPayload:
    """A ``tensor`` input in any of its three spellings."""
    if isinstance(content, list):
        return TensorPayload(_tensor_from_list(content, limits))
    if not isinstance(content, dict):
        raise BadRequest("tensor content must be a nested list or an object with 'data'")
    unknown = set(content) - {"data", "dtype", "shape", "input"}
    if unknown:
        raise BadRequest(f"tensor content has unknown fields: {sorted(unknown)}")
    name = content.get("input")
    if name is not None and not isinstance(name, str):
        raise BadRequest("tensor 'input' must be a string naming a model input")
    data = content.get("data")
    if isinstance(data, list):
        array = _tensor_from_list(data, limits)
        if content.get("dtype") is not None:
            array = array.astype(_dtype(content.get("dtype")))
        return TensorPayload(array, name)
    dtype = _dtype(content.get("dtype"))
    shape = content.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest("tensor 'shape' must be a list of non-negative integers")
    if len(shape) > 16:
        raise BadRequest("tensor has more than 16 dimensions")
    elements = math.prod(shape)
    if elements > limits.max_tensor_elements:
        raise PayloadTooLarge(
            f"tensor has {elements} elements; the limit is {limits.max_tensor_elements} "
            "(CIDSERVE_MAX_TENSOR_ELEMENTS)"
        )
    raw = decode_base64(data, limits, "tensor 'data'")
    expected = elements * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"tensor 'data' has {len(raw)} bytes; shape {shape} of {dtype.name} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest("tensor holds NaN or infinite values")
    return TensorPayload(array, name)


def _dtype(name: Any) -> np.dtype[Any]:
    if name not in TENSOR_DTYPES:
        raise BadRequest(f"tensor 'dtype' must be one of {sorted(TENSOR_DTYPES)}; got {name!r}")
    return np.dtype(name)


def decode_features(content: Any) -> FeaturesPayload:
    if not isinstance(content, dict):
        raise BadRequest("features content must be a JSON object of named numbers")
    values: dict[str, float] = {}
    for key, value in content.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"feature {key!r} must be a number; got {type(value).__name__}")
        values[key] = float(value)
    return FeaturesPayload(values)


def decode_input(fmt: str, content: Any, limits: CodecLimits) -> Payload:
    """``input_data{format, content}`` -> payload; 400/413 naming the problem."""
    if fmt in IMAGE_FORMATS:
        return ImagePayload(decode_base64(content, limits))
    if fmt == "tensor":
        return decode_tensor(content, limits)
    if fmt == "features":
        return decode_features(content)
    raise BadRequest(f"input_data.format {fmt!r} is not supported; use one of {sorted(FORMATS)}")
