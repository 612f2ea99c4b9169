"""Open Inference Protocol replies: outputs as JSON ``data`` or binary tensor data, and the
classification extension's ``"value:index:label"`` strings (see :mod:`services.http.v2_codec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from postprocessing.classification import top_indices
from services.dataplane.datatypes import DATATYPES, datatype_of
from services.http.v2_codec import LENGTH_PREFIX, V2Error


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """One reply output, ready to encode."""

    name: str
    array: np.ndarray
    binary: bool
    datatype: str | None = None


def classification_strings(
    values: np.ndarray, k: int, labelled: list[list[tuple[float, int, str | None]]] | None
) -> np.ndarray:
    """The classification extension's BYTES tensor: ``"value:index[:label]"`` per class.

    ``labelled`` holds, per batch row, ``(value, index, label)`` for the top ``k`` classes
    when the model's own classification gave them; otherwise the top ``k`` of ``values``
    (per row of a batched output, all axes after the first flattened) are taken as they
    are. The shape is ``[batch, k]`` for a batched output, ``[k]`` for a 1-D one.
    """
    if values.ndim == 0:
        raise V2Error("classification needs an output with at least one dimension")
    rows = values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(1, -1)
    if labelled is None:
        labelled = [_top_k(row, k) for row in rows]
    width = max((len(r) for r in labelled), default=0)
    out = np.empty((len(labelled), width), dtype=object)
    for i, row_classes in enumerate(labelled):
        for j, (value, index, label) in enumerate(row_classes):
            text = f"{_format_value(value)}:{index}"
            out[i, j] = (text if label is None else f"{text}:{label}").encode()
    return out if values.ndim > 1 else out.reshape(-1)


def _top_k(row: np.ndarray, k: int) -> list[tuple[float, int, str | None]]:
    k = min(k, row.size)
    if k <= 0:
        return []
    return [(row[i].item(), int(i), None) for i in top_indices(row.astype(np.float64), k)]


def _format_value(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def encode_response(
    header: dict[str, Any], outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The reply body, and the JSON part's length when binary data follows it (else None)."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out in outputs:
        arr = out.array
        datatype = out.datatype or datatype_of(arr)
        entry: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": list(arr.shape)}
        if out.binary:
            raw = _to_binary(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(out.name, arr, datatype)
        entries.append(entry)
    doc = {**header, "outputs": entries}
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _to_binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in arr.reshape(-1):
            data = _as_bytes(item)
            parts.append(LENGTH_PREFIX.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if datatype == "BOOL":
        return np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    dtype = DATATYPES[datatype].newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def _to_json(name: str, arr: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        try:
            return [
                item.decode() if isinstance(item, bytes) else str(item) for item in arr.reshape(-1)
            ]
        except UnicodeDecodeError:
            raise V2Error(
                f"output {name!r} holds bytes that are not UTF-8 text; "
                "request it with parameters.binary_data"
            ) from None
    return np.ascontiguousarray(arr).reshape(-1)


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return str(item).encode()
