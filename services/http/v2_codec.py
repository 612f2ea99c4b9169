"""Open Inference Protocol (KServe V2) tensors <-> numpy, with Triton's binary tensor data.

An inference request body is a JSON object, optionally followed by binary tensor data; the
``Inference-Header-Content-Length`` header then gives the length of the JSON part. An input
carries its values either as JSON ``data`` (flat or nested, row-major) or, with
``parameters.binary_data_size``, as that many bytes of the binary part (inputs take their
bytes in the order they are listed). JSON ``BYTES`` elements are UTF-8 strings, or base64
when the input has ``parameters.content_type: "base64"`` (how an image fits into JSON).
Binary values are little-endian in the native size of the datatype; ``BOOL`` is one byte
(0 or 1); each ``BYTES`` element is a 4-byte little-endian length followed by the bytes.

Replies mirror this: an output is JSON ``data`` unless binary was asked for (output
``parameters.binary_data``, or request ``parameters.binary_data_output`` as the default),
in which case its bytes follow the JSON and ``parameters.binary_data_size`` says how many.

Everything is bounded before it is built: the declared shape's element count against
``V2Limits.max_elements`` (413), the JSON part's length against the body, every binary size
against what is left of the body and against what the declared shape and datatype take, the
number of JSON values against the declared shape, the number of ``BYTES`` elements a binary
part can hold (4 bytes of length each) against the declared shape. Nothing is allocated for a
tensor before the data present is known to match its declaration, so a small request cannot
make the server reserve memory for a large shape. Errors are :class:`V2Error` (400) or
:class:`V2TooLarge` (413) with a message naming the tensor and both numbers. Decoding is
blocking: the route calls :func:`decode_request` in the preprocess pool, after the caller is
authenticated and the license gate has let the request through.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from services.dataplane.datatypes import DATATYPES
from services.http.codecs import b64decode_bounded
from services.http.errors import HttpError

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_RANK = 16
MAX_TENSORS = 64

LENGTH_PREFIX = struct.Struct("<I")
"""The length before each ``BYTES`` element in binary tensor data."""


class V2Error(HttpError):
    """A request the protocol cannot accept (400); the message names the tensor."""


class V2TooLarge(V2Error):
    """A tensor over the server's bounds (413)."""

    status_code = 413
    title = "Payload too large"


@dataclass(frozen=True, slots=True)
class V2Limits:
    """Bounds on one request, from settings."""

    max_elements: int
    max_classes: int = 1000
    max_base64_chars: int = 28 << 20


@dataclass(slots=True)
class InputTensor:
    """One decoded request input. ``binary``: its values came from the binary part."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of the request's ``outputs``: binary or JSON, and the classification count."""

    name: str
    binary: bool
    classification: int = 0


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request. ``outputs`` is None when the request names none."""

    id: str | None
    parameters: dict[str, Any]
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    binary_output: bool


# ---------------------------------------------------------------------------------------------
# Requests


def parse_object(body: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a request body; an empty body is ``{}``."""
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise V2Error(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise V2Error(f"{what} must be a JSON object")
    return doc


def parameters_of(doc: dict[str, Any], what: str) -> dict[str, Any]:
    """``doc["parameters"]``: an object (absent: empty)."""
    params = doc.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise V2Error(f"{what}.parameters must be a JSON object")
    return params


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request body (a view: not copied)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise V2Error(f"{HEADER_LENGTH} is not a number: {header_length[:40]!r}") from None
    if n < 0 or n > len(body):
        raise V2Error(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def decode_request(body: bytes, header_length: str | None, limits: V2Limits) -> InferRequest:
    """Decode and check an inference request body (JSON, or JSON followed by binary data)."""
    head, binary = split_body(body, header_length)
    doc = parse_object(head, "the inference request")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise V2Error("id must be a string")
    params = parameters_of(doc, "request")
    binary_output = _flag(params, "binary_data_output", "request.parameters")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise V2Error("inputs must be a non-empty list")
    if len(raw_inputs) > MAX_TENSORS:
        raise V2Error(f"{len(raw_inputs)} inputs; at most {MAX_TENSORS} are accepted")
    offset = 0
    inputs: list[InputTensor] = []
    for raw in raw_inputs:
        tensor, offset = _decode_input(raw, binary, offset, limits)
        if any(t.name == tensor.name for t in inputs):
            raise V2Error(f"input {tensor.name!r} is given twice")
        inputs.append(tensor)
    if offset != len(binary):
        raise V2Error(
            f"the body has {len(binary)} bytes of binary data after the JSON; "
            f"the inputs' binary_data_size add up to {offset}"
        )
    outputs = _decode_outputs(doc.get("outputs"), binary_output, limits)
    return InferRequest(req_id, params, inputs, outputs, binary_output)


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise V2Error(f"{where}.{key} must be true or false")
    return value


def _decode_input(
    raw: Any, binary: memoryview, offset: int, limits: V2Limits
) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise V2Error("every input must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > 256:
        raise V2Error("every input needs a 'name' (a string of 1-256 characters)")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise V2Error(
            f"input {name!r}: datatype {str(datatype)[:20]!r} is not supported; "
            f"use one of {', '.join(DATATYPES)}"
        )
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise V2Error(
            f"input {name!r}: shape must be a list of at most {MAX_RANK} non-negative integers"
        )
    count = math.prod(shape)
    if count > limits.max_elements:
        raise V2TooLarge(
            f"input {name!r} has {count} elements; the limit is {limits.max_elements} "
            "(CIDSERVE_MAX_TENSOR_ELEMENTS)"
        )
    params = parameters_of(raw, f"input {name!r}")
    size = params.get("binary_data_size")
    has_data = "data" in raw
    if size is not None:
        if has_data:
            raise V2Error(f"input {name!r} has both 'data' and parameters.binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise V2Error(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise V2Error(
                f"input {name!r}: binary_data_size is {size}, but only "
                f"{len(binary) - offset} bytes of binary data are left in the body"
            )
        chunk = binary[offset : offset + size]
        array = _from_binary(name, datatype, chunk, count)
        return InputTensor(name, datatype, tuple(shape), array.reshape(shape), True, params), (
            offset + size
        )
    if not has_data:
        raise V2Error(f"input {name!r} has no 'data' and no parameters.binary_data_size")
    b64 = limits.max_base64_chars if params.get("content_type") == "base64" else None
    array = _from_json(name, datatype, raw["data"], count, b64)
    return InputTensor(name, datatype, tuple(shape), array.reshape(shape), False, params), offset


def _from_binary(name: str, datatype: str, chunk: memoryview, count: int) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_elements(name, chunk, count)
    dtype = DATATYPES[datatype]
    want = count * dtype.itemsize
    if len(chunk) != want:
        raise V2Error(
            f"input {name!r}: binary_data_size is {len(chunk)} bytes; {count} {datatype} "
            f"elements take {want}"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise V2Error(f"input {name!r}: BOOL bytes must be 0 or 1")
        return raw.view(np.bool_)
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def _bytes_elements(name: str, chunk: memoryview, count: int) -> np.ndarray:
    if count * LENGTH_PREFIX.size > len(chunk):
        raise V2Error(
            f"input {name!r}: binary_data_size is {len(chunk)} bytes; {count} BYTES elements "
            f"take at least {count * LENGTH_PREFIX.size} (a 4-byte length each)"
        )
    out = np.empty(count, dtype=object)
    view = chunk
    pos = 0
    for i in range(count):
        if pos + 4 > len(chunk):
            raise V2Error(
                f"input {name!r}: BYTES data ends after {i} of {count} elements "
                "(each is a 4-byte little-endian length, then the bytes)"
            )
        (n,) = LENGTH_PREFIX.unpack_from(view, pos)
        pos += 4
        if pos + n > len(chunk):
            raise V2Error(
                f"input {name!r}: BYTES element {i} says {n} bytes; {len(chunk) - pos} are left"
            )
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != len(chunk):
        raise V2Error(
            f"input {name!r}: {len(chunk) - pos} bytes left over after {count} BYTES elements"
        )
    return out


def _from_json(name: str, datatype: str, data: Any, count: int, b64: int | None) -> np.ndarray:
    if not isinstance(data, list):
        raise V2Error(f"input {name!r}: data must be a JSON array (flat or nested)")
    if datatype == "BYTES":
        return _json_bytes(name, data, count, b64)
    dtype = DATATYPES[datatype]
    present = _leading_count(data)
    if present != count:
        raise V2Error(f"input {name!r}: data has {present} values; its shape needs {count}")
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise V2Error(f"input {name!r}: data is not a regular array of {datatype} values") from None
    if arr.size != count:
        raise V2Error(f"input {name!r}: data has {arr.size} values; its shape needs {count}")
    kind = arr.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise V2Error(f"input {name!r}: BOOL data must be true/false values")
        return arr.reshape(-1)
    if dtype.kind in "iu":
        return _json_integers(name, datatype, data, arr).reshape(-1)
    if kind not in "iuf":
        raise V2Error(f"input {name!r}: {datatype} data must be numbers")
    with np.errstate(over="ignore"):
        out = arr.astype(dtype).reshape(-1)
    if kind == "f" and not np.isfinite(out).all():
        raise V2Error(f"input {name!r}: a value is out of the range of {datatype}")
    return out


def _json_integers(name: str, datatype: str, data: list[Any], arr: np.ndarray) -> np.ndarray:
    dtype = DATATYPES[datatype]
    kind = arr.dtype.kind
    if kind == "f" and arr.size and bool(np.all(np.mod(arr, 1) == 0)):
        # Integers past int64 (UINT64 values) make numpy infer float64: convert exactly.
        try:
            return np.array(data, dtype=dtype)
        except OverflowError:
            raise V2Error(f"input {name!r}: a value is out of the range of {datatype}") from None
    if kind not in "iu" and arr.size:
        raise V2Error(f"input {name!r}: {datatype} data must be integers")
    if arr.size:
        info = np.iinfo(dtype)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise V2Error(f"input {name!r}: a value is out of the range of {datatype}")
    return arr.astype(dtype)


def _leading_count(data: list[Any]) -> int:
    """The number of values a regular nested list holds, from the length of its first item at
    each depth (nothing is built; a ragged list is refused when it is converted)."""
    count = 1
    node: Any = data
    for _ in range(MAX_RANK + 1):
        if not isinstance(node, list):
            return count
        count *= len(node)
        if not node:
            return count
        node = node[0]
    return count


def _json_bytes(name: str, data: list[Any], count: int, b64: int | None) -> np.ndarray:
    """BYTES from JSON strings: UTF-8, or base64 (``b64``: the length bound) when asked. The
    strings are counted against the shape before the array is made."""
    items: list[bytes] = []
    filled = 0
    stack: list[Any] = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        if isinstance(item, list):
            if len(stack) > MAX_RANK:
                raise V2Error(f"input {name!r}: data is nested deeper than {MAX_RANK}")
            stack.append(iter(item))
            continue
        if not isinstance(item, str):
            raise V2Error(f"input {name!r}: BYTES data must be strings")
        filled += 1
        if filled > count:  # counted, not decoded: the error names how many there are
            continue
        items.append(
            item.encode()
            if b64 is None
            else b64decode_bounded(item, b64, f"input {name!r}: an element")
        )
    if filled != count:
        raise V2Error(f"input {name!r}: data has {filled} values; its shape needs {count}")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


_END = object()


def _decode_outputs(
    raw: Any, binary_default: bool, limits: V2Limits
) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
        raise V2Error(f"outputs must be a list of at most {MAX_TENSORS} objects")
    outputs: list[RequestedOutput] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise V2Error("every requested output must be an object with a 'name'")
        name = item["name"]
        params = parameters_of(item, f"output {name!r}")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise V2Error(f"output {name!r}: parameters.binary_data must be true or false")
        k = params.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise V2Error(f"output {name!r}: parameters.classification must be an integer >= 0")
        if k > limits.max_classes:
            raise V2Error(
                f"output {name!r}: classification is {k}; the limit is {limits.max_classes} "
                "(CIDSERVE_MAX_TOP_K)"
            )
        if any(o.name == name for o in outputs):
            raise V2Error(f"output {name!r} is requested twice")
        outputs.append(RequestedOutput(name, binary, k))
    return outputs
