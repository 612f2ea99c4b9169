"""Request codecs: the ``input_data`` of ``/api/inference/execute`` -> a preprocessing payload.

Formats (also listed by ``GET /api/inference/formats``):

* ``base64_jpeg``, ``base64_png``, ``base64_image``: base64 of an encoded image (any format
  Pillow decodes; a ``data:image/...;base64,`` prefix is accepted);
* ``tensor``: a nested JSON list, or ``{"data": <base64 little-endian bytes>, "dtype": ..,
  "shape": [..]}``, or ``{"data": <nested list>}``; optional ``"input"`` names the model input;
* ``tensors``: one tensor per model input, ``{"<input name>": <nested list of numbers or
  strings> | {"b64": <base64 little-endian bytes>, "dtype": .., "shape": [..]}}``; the
  element counts of all of them together are bounded;
* ``features``: a JSON object of named numbers (tabular models).
* ``url``: an http(s) URL of an image; the route fetches it (:mod:`services.http.url_input`)
  and it is decoded as a base64 image would be.

Everything is bounded before it is decoded: a base64 text's length against
``CIDSERVE_MAX_BASE64_CHARS``, the bytes it decodes to against what a declared shape needs,
a tensor's element count against ``CIDSERVE_MAX_TENSOR_ELEMENTS`` (413 over a limit, 400 when
the declared sizes and the data disagree, naming both numbers), all before any array is
built. :func:`parse_execute_request` reads the JSON body itself (the route calls it in the
preprocess pool, after authentication); :func:`decode_input` runs there too, after the
license gate.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybase64
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from preprocessing import FeaturesPayload, ImagePayload, Payload, TensorPayload, TensorsPayload
from registry.metadata import NUMERIC_DTYPES
from services.http.errors import BadRequest, PayloadTooLarge
from services.http.schemas import ExecuteRequest

IMAGE_FORMATS = ("base64_jpeg", "base64_png", "base64_image")
FORMATS: dict[str, str] = {
    "base64_jpeg": "base64 of a JPEG image",
    "base64_png": "base64 of a PNG image",
    "base64_image": "base64 of any image Pillow decodes (JPEG, PNG, WebP, BMP, GIF, TIFF)",
    "tensor": "a nested JSON list, or {data: base64 little-endian bytes, dtype, shape}",
    "tensors": "an object of model input name -> nested JSON list (numbers or strings) or "
    "{b64: base64 little-endian bytes, dtype, shape}, one for every model input",
    "features": "a JSON object of named numbers, for tabular models",
    "url": "an http(s) URL of an image, fetched by the server (public addresses only, "
    "bounded in bytes and time; see http/url_input.py)",
}
URL_FORMAT = "url"  # fetched by the route (http/url_input.py), then decoded as an image
TENSOR_DTYPES = frozenset(NUMERIC_DTYPES)


@dataclass(frozen=True, slots=True)
class CodecLimits:
    max_base64_chars: int
    max_tensor_elements: int


def parse_execute_request(body: bytes) -> ExecuteRequest:
    """The ``/api/inference/execute`` body (JSON) as an :class:`ExecuteRequest`; 422 naming
    the field, as FastAPI would. ``input_data.content`` is not decoded here. Blocking: call
    it off the event loop."""
    try:
        return ExecuteRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = [
            {"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise RequestValidationError(errors) from None


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place (for ``openapi_extra``, where
    ``#/$defs/...`` would not resolve)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def b64_decoded_length(text: str, what: str) -> int:
    """How many bytes strict base64 ``text`` decodes to, from its length alone (400 when the
    length cannot be base64)."""
    if len(text) % 4:
        raise BadRequest(
            f"{what} is not valid base64: {len(text)} characters is not a multiple of 4"
        )
    padding = (text[-1:] == "=") + (text[-2:] == "==")
    return len(text) // 4 * 3 - padding


def b64decode_bounded(
    text: str, max_chars: int, what: str, *, expected: int | None = None
) -> bytes:
    """Strict base64 (no stray characters), its length checked before anything is decoded:
    against ``max_chars`` (413) and, with ``expected``, against the number of bytes the
    caller declared (400 naming both)."""
    if len(text) > max_chars:
        raise PayloadTooLarge(
            f"{what} has {len(text)} base64 characters; the limit is {max_chars} "
            "(CIDSERVE_MAX_BASE64_CHARS)"
        )
    if expected is not None:
        size = b64_decoded_length(text, what)
        if size != expected:
            raise BadRequest(f"{what} decodes to {size} bytes; its declaration needs {expected}")
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{what} is not valid base64: {exc}") from None


def decode_base64(
    text: Any,
    limits: CodecLimits,
    what: str = "input_data.content",
    *,
    expected: int | None = None,
) -> bytes:
    """Strict base64 decode with a length bound (and, with ``expected``, the declared size)
    checked first."""
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a base64 string")
    if text.startswith("data:"):
        head, sep, rest = text.partition(",")
        if not sep or ";base64" not in head:
            raise BadRequest(f"{what} is a data URL without ';base64,'")
        text = rest
    data = b64decode_bounded(text, limits.max_base64_chars, what, expected=expected)
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
            array = _cast(array, _dtype(content.get("dtype")))
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
    expected = elements * dtype.itemsize
    what = f"tensor 'data' (shape {shape} of {dtype.name})"
    raw = decode_base64(data, limits, what, expected=expected)
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest("tensor holds NaN or infinite values")
    return TensorPayload(array, name)


def _cast(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``array`` as ``dtype``; 400 when a value does not fit it (no silent wrap-around or
    overflow to infinity)."""
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise BadRequest(f"tensor holds values out of the range of {dtype.name}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(dtype)
    if dtype.kind == "f" and not np.isfinite(out).all():
        raise BadRequest(f"tensor holds values out of the range of {dtype.name}")
    return out


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


_MAX_TENSORS = 64
_MAX_NAME_CHARS = 256
_TENSORS_SPELLING = "a nested JSON list or an object {b64, dtype, shape}"


def _nested_shape(content: Any, what: str) -> list[int]:
    """The shape of a nested list, read down its first items (nothing is built); 400 for an
    empty dimension or more than 16."""
    shape: list[int] = []
    node = content
    while isinstance(node, list):
        if not node:
            raise BadRequest(f"{what} has an empty dimension")
        shape.append(len(node))
        if len(shape) > 16:
            raise BadRequest(f"{what} has more than 16 dimensions")
        node = node[0]
    return shape


def _b64_shape(spec: dict[str, Any], what: str) -> list[int]:
    unknown = set(spec) - {"b64", "dtype", "shape"}
    if unknown:
        raise BadRequest(f"{what} has unknown fields: {sorted(unknown)}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
    ):
        raise BadRequest(f"{what} 'shape' must be a list of positive integers")
    if len(shape) > 16:
        raise BadRequest(f"{what} has more than 16 dimensions")
    return shape


def _tensors_list(content: list[Any], shape: list[int], what: str) -> np.ndarray:
    """A nested list of numbers (or of strings) as an array. It is built as an array of
    references first (8 bytes an element: never a fixed-width string array sized by the
    longest text), and its values' types are checked before any conversion."""
    try:
        refs = np.asarray(content, dtype=object)
    except (ValueError, TypeError):
        refs = None
    if refs is None or list(refs.shape) != shape:
        raise BadRequest(f"{what} is not a regular nested list (its shape would be {shape})")
    kinds = set(map(type, refs.reshape(-1)))
    if kinds == {str}:
        return refs
    if kinds == {bool}:
        return refs.astype(np.bool_)
    if kinds == {int}:
        try:
            return refs.astype(np.int64)
        except OverflowError:
            raise BadRequest(f"{what} holds integers out of the range of int64") from None
    if kinds <= {int, float}:
        array = refs.astype(np.float64)
        if not np.isfinite(array).all():
            raise BadRequest(f"{what} holds NaN or infinite values")
        return array
    names = sorted(k.__name__ for k in kinds)
    raise BadRequest(f"{what} must hold only numbers, only booleans or only strings; got {names}")


def decode_tensors(content: Any, limits: CodecLimits) -> TensorsPayload:
    """A ``tensors`` input: ``{"<input name>": <nested list> | {"b64", "dtype", "shape"}}``,
    one tensor per model input. Every tensor's element count is read before any is built
    and their sum bounded by ``CIDSERVE_MAX_TENSOR_ELEMENTS``; a ``b64`` text's length is
    checked against the bytes its shape and dtype need before it is decoded."""
    if not isinstance(content, dict) or not content:
        raise BadRequest(
            f"tensors content must be a JSON object of model input name -> {_TENSORS_SPELLING}"
        )
    if len(content) > _MAX_TENSORS:
        raise BadRequest(f"tensors content has {len(content)} entries; the limit is {_MAX_TENSORS}")
    shapes: dict[str, list[int]] = {}
    for name, value in content.items():
        if len(name) > _MAX_NAME_CHARS:
            raise BadRequest(
                f"tensors content names an input of more than {_MAX_NAME_CHARS} characters"
            )
        what = f"tensor {name!r}"
        if isinstance(value, list):
            shapes[name] = _nested_shape(value, what)
        elif isinstance(value, dict):
            shapes[name] = _b64_shape(value, what)
        else:
            raise BadRequest(f"{what} must be {_TENSORS_SPELLING}")
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > limits.max_tensor_elements:
        raise PayloadTooLarge(
            f"the tensors have {total} elements in all; the limit is "
            f"{limits.max_tensor_elements} (CIDSERVE_MAX_TENSOR_ELEMENTS)"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, value in content.items():
        what, shape = f"tensor {name!r}", shapes[name]
        if isinstance(value, list):
            arrays[name] = _tensors_list(value, shape, what)
            continue
        dtype = value.get("dtype")
        if not isinstance(dtype, str) or dtype not in TENSOR_DTYPES:
            raise BadRequest(
                f"{what} 'dtype' must be one of {sorted(TENSOR_DTYPES)}; got {dtype!r}"
            )
        np_dtype = np.dtype(dtype)
        expected = math.prod(shape) * np_dtype.itemsize
        raw = decode_base64(
            value.get("b64"),
            limits,
            f"{what} 'b64' (shape {shape} of {np_dtype.name})",
            expected=expected,
        )
        array = np.frombuffer(raw, dtype=np_dtype.newbyteorder("<")).reshape(shape)
        if np_dtype.kind == "f" and not np.isfinite(array).all():
            raise BadRequest(f"{what} holds NaN or infinite values")
        arrays[name] = array
    return TensorsPayload(arrays)


def decode_input(fmt: str, content: Any, limits: CodecLimits) -> Payload:
    """``input_data{format, content}`` -> payload; 400/413 naming the problem."""
    if fmt in IMAGE_FORMATS:
        return ImagePayload(decode_base64(content, limits))
    if fmt == "tensor":
        return decode_tensor(content, limits)
    if fmt == "tensors":
        return decode_tensors(content, limits)
    if fmt == "features":
        return decode_features(content)
    raise BadRequest(f"input_data.format {fmt!r} is not supported; use one of {sorted(FORMATS)}")
