"""Tensor datatypes of the Open Inference Protocol (``FP32``, ``INT64``, ``BYTES``, ...)."""

from __future__ import annotations

import numpy as np

from preprocessing import PreprocessingError

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""Protocol datatype -> numpy dtype (``BYTES``: an object array of ``bytes``)."""

_METADATA_TO_V2 = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}


def datatype_for(dtype_name: str) -> str:
    """The protocol datatype of a metadata dtype name (``float32`` -> ``FP32``)."""
    return _METADATA_TO_V2[dtype_name]


def datatype_of(arr: np.ndarray) -> str:
    """The protocol datatype of an array (object and string arrays are ``BYTES``)."""
    if arr.dtype.kind in "OUS":
        return "BYTES"
    name = _METADATA_TO_V2.get(arr.dtype.name)
    if name is None:
        raise PreprocessingError(f"datatype {arr.dtype} has no protocol equivalent")
    return name


def protocol_shape(shape: list[int | str | None]) -> list[int]:
    """A metadata shape with every dynamic dimension as -1."""
    return [d if isinstance(d, int) else -1 for d in shape]
