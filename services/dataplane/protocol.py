"""Open Inference Protocol inputs: client tensors checked against the model, encoded images
fed through the model's preprocessing, and the model's own classification of an output.

What a model can do comes from its plug-ins' declared capabilities
(``Preprocessor.image_input``, ``Postprocessor.classification_output``), never from kind names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from postprocessing import Options
from preprocessing import ImagePayload, InputTooLarge, PreprocessingError
from preprocessing.tensor import numpy_dtype
from registry.metadata import ModelMetadata, TensorSpec
from services.dataplane.datatypes import datatype_for, datatype_of, protocol_shape
from services.repository.model import LoadedModel

Feeds = dict[str, np.ndarray]
Classes = list[list[tuple[float, int, str | None]]]


def encoded_images(model: LoadedModel, feeds: Feeds) -> list[bytes] | None:
    """The encoded images when ``feeds`` is one BYTES tensor for the input that the model's
    preprocessor feeds from encoded images; else None (the feeds are tensors)."""
    name = model.preprocessor.image_input
    if name is None or len(feeds) != 1:
        return None
    arr = feeds.get(name)
    if arr is None or arr.dtype != object or model.metadata.input_spec(name).dtype == "string":
        return None
    images: list[bytes] = []
    for item in arr.reshape(-1):
        if not isinstance(item, bytes):
            raise PreprocessingError(f"input {name!r}: every element must hold an encoded image")
        images.append(item)
    return images


def image_batch(model: LoadedModel, images: list[bytes], max_elements: int) -> Callable[[], Feeds]:
    """A blocking function that runs the model's preprocessing on each image and stacks the
    results into one batch (checked here: the count against a fixed batch dimension)."""
    name = model.preprocessor.image_input
    if name is None:
        raise PreprocessingError(f"model {model.model_id} does not take encoded images")
    spec = model.metadata.input_spec(name)
    n = len(images)
    if n == 0:
        raise PreprocessingError(f"input {name!r} holds no image")
    batch = spec.shape[0] if spec.shape else None
    if isinstance(batch, int) and batch != n:
        raise PreprocessingError(f"input {name!r} takes {batch} image(s) per request; got {n}")

    def prepare() -> Feeds:
        arrays: list[np.ndarray] = []
        for data in images:
            arrays.append(model.preprocessor(ImagePayload(data)).feeds[name])
            if arrays[0].size * n > max_elements:
                raise InputTooLarge(
                    f"{n} images make {arrays[0].size * n} elements for input {name!r}; "
                    f"the limit is {max_elements}"
                )
        return {name: arrays[0] if n == 1 else np.concatenate(arrays, axis=0)}

    return prepare


def protocol_feeds(metadata: ModelMetadata, feeds: Feeds, max_elements: int) -> Feeds:
    """Check client tensors against the model's inputs, as the Open Inference Protocol does.

    Every input exactly once; the datatype exactly the model's (strings: UTF-8 bytes, fed
    as ``str``); the rank and every fixed dimension as declared; dynamic dimensions, the
    batch included, any size. Errors name the input."""
    specs = {t.name: t for t in metadata.inputs}
    names = ", ".join(repr(n) for n in specs)
    for name in feeds:
        if name not in specs:
            raise PreprocessingError(f"model has no input {name!r}; its inputs are {names}")
    for name in specs:
        if name not in feeds:
            raise PreprocessingError(f"input {name!r} is missing; the model's inputs are {names}")
    out: Feeds = {}
    for name, arr in feeds.items():
        spec = specs[name]
        got = datatype_of(arr)
        if arr.size > max_elements:
            raise InputTooLarge(
                f"input {name!r} has {arr.size} elements; the limit is {max_elements}"
            )
        if got != datatype_for(spec.dtype):
            raise _mismatch(spec, arr, f"datatype {got} does not match")
        if arr.ndim != len(spec.shape):
            raise _mismatch(spec, arr, f"rank {arr.ndim} does not match")
        for axis, (dim, size) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise _mismatch(spec, arr, f"dimension {axis} is {size}, not {dim}")
        if spec.dtype == "string":
            out[name] = _as_text(name, arr)
        else:
            out[name] = np.ascontiguousarray(arr, dtype=numpy_dtype(spec.dtype))
    return out


def _mismatch(spec: TensorSpec, arr: np.ndarray, reason: str) -> PreprocessingError:
    return PreprocessingError(
        f"input {spec.name!r}: {reason}; the model expects {datatype_for(spec.dtype)} "
        f"{protocol_shape(spec.shape)}, got {datatype_of(arr)} {list(arr.shape)}"
    )


def _as_text(name: str, arr: np.ndarray) -> np.ndarray:
    text = np.empty(arr.shape, dtype=object)
    flat = text.reshape(-1)
    for i, item in enumerate(arr.reshape(-1)):
        try:
            flat[i] = item.decode() if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError:
            raise PreprocessingError(f"input {name!r}: element {i} is not UTF-8 text") from None
    return text


def model_classes(model: LoadedModel, output: str, values: np.ndarray, k: int) -> Classes | None:
    """The model's own classification of ``values`` (one output's batch), top ``k`` per row:
    ``(confidence, class index, label or None)``. None when the model's postprocessor does
    not classify ``output`` (then raw values are all there is). Blocking: a worker thread."""
    if model.postprocessor.classification_output != output or values.ndim == 0:
        return None
    rows = values.reshape(values.shape[0], -1) if values.ndim > 1 else values[None]
    out: Classes = []
    for row in rows:
        result = model.postprocessor({output: row[None]}, {}, Options(top_k=k))
        out.append(
            [
                (
                    float(p["confidence"]),
                    int(p["class_id"]),
                    None if p["class"] == str(p["class_id"]) else str(p["class"]),
                )
                for p in result.predictions
            ]
        )
    return out
