"""Raw tensor uploads: the request body is the tensor's bytes, described by headers.

``POST /api/models/{model_id}/predict`` with ``Content-Type: application/x-cidserve-tensor``,
``X-Tensor-Dtype`` (``float32``, ``uint8``, ...: little-endian numpy names), ``X-Tensor-Shape``
(comma-separated sizes, e.g. ``1,3,224,224``) and optionally ``X-Tensor-Input`` (the model
input to feed). The array is a view of the body (``np.frombuffer``): no base64, no JSON and
no copy before ``session.run``. The body must be exactly ``prod(shape) * itemsize`` bytes.
"""

from __future__ import annotations

import math

import numpy as np

from preprocessing import InputTooLarge, PreprocessingError, TensorPayload
from registry.metadata import NUMERIC_DTYPES

CONTENT_TYPE = "application/x-cidserve-tensor"
MAX_RANK = 8
DTYPES: dict[str, np.dtype] = {name: np.dtype(name).newbyteorder("<") for name in NUMERIC_DTYPES}


def parse_raw_tensor(
    body: bytes,
    dtype: str | None,
    shape: str | None,
    input_name: str | None,
    *,
    max_elements: int,
) -> TensorPayload:
    """The payload that ``body`` and its headers describe; errors name the header at fault."""
    if not dtype:
        raise PreprocessingError(f"{CONTENT_TYPE} needs an X-Tensor-Dtype header")
    np_dtype = DTYPES.get(dtype.strip().lower())
    if np_dtype is None:
        raise PreprocessingError(
            f"X-Tensor-Dtype {dtype[:40]!r} is not supported; use one of {', '.join(DTYPES)}"
        )
    if shape is None:
        raise PreprocessingError(f"{CONTENT_TYPE} needs an X-Tensor-Shape header (e.g. 1,8)")
    parts = [p.strip() for p in shape.split(",")] if shape.strip() else []
    if len(parts) > MAX_RANK or not all(p.isdigit() and len(p) <= 12 for p in parts):
        raise PreprocessingError(
            f"X-Tensor-Shape {shape[:80]!r} must be up to {MAX_RANK} comma-separated sizes"
        )
    dims = [int(p) for p in parts]
    count = math.prod(dims)
    if count > max_elements:
        raise InputTooLarge(f"the tensor has {count} elements; the limit is {max_elements}")
    if len(body) != count * np_dtype.itemsize:
        raise PreprocessingError(
            f"the body has {len(body)} bytes; {dtype} {dims} needs {count * np_dtype.itemsize}"
        )
    array = np.frombuffer(body, dtype=np_dtype).reshape(dims)
    name = input_name.strip() if input_name else None
    return TensorPayload(array, name or None)
