"""Tensor feeds: the raw-tensor path that every preprocessing kind shares.

A client may send a model's input tensor itself (a :class:`TensorPayload`), or a tensor for each
of its inputs (a :class:`TensorsPayload`), to a model of any kind: it bypasses image decoding or
feature scaling and is only checked against the inputs the metadata declares. A
:class:`TensorsPayload` must feed every input and nothing else, within
``Limits.max_tensor_elements`` elements in all. The checks of each tensor, in order: the element
count against ``Limits.max_tensor_elements``; the dtype (a cast must keep the value's kind:
integers may feed a float input, floats may not feed an integer input, integers feeding a
narrower integer input must fit its range); the rank (a tensor one rank short gets a batch
dimension of 1); every fixed dimension. The feed is a contiguous array of the declared dtype (a
string input takes text only, fed as an array of ``str``).

The helpers here (the input a kind feeds, dtype names, "model expects ..." errors) are for
kinds to share; :mod:`preprocessing.tensor` is the ``tensor`` kind itself.
"""

from __future__ import annotations

import numpy as np

from preprocessing.base import (
    FeaturesPayload,
    ImagePayload,
    InputTooLarge,
    Limits,
    Prepared,
    PreprocessingError,
    TensorPayload,
    TensorsPayload,
)
from registry.metadata import Dim, MetadataError, ModelMetadata, TensorSpec


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that feeds an ONNX input declared as ``dtype`` (strings: object)."""
    return np.dtype(object) if dtype == "string" else np.dtype(dtype)


def format_shape(shape: list[Dim] | tuple[int, ...]) -> str:
    """A shape as users read it: ``[batch, 3, 224, 224]``; unnamed dynamic dims are ``?``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def describe_payload(payload: object) -> str:
    """What a request sent, for "model expects ...; got ..." messages."""
    if isinstance(payload, ImagePayload):
        return "an image"
    if isinstance(payload, TensorPayload):
        return "a tensor"
    if isinstance(payload, TensorsPayload):
        return "tensors"
    if isinstance(payload, FeaturesPayload):
        return "features"
    return type(payload).__name__


def wrong_payload(expects: str, payload: object) -> PreprocessingError:
    """The error for a payload type the model's preprocessing does not take."""
    return PreprocessingError(f"model expects {expects}; got {describe_payload(payload)}")


def single_input(metadata: ModelMetadata, name: str | None) -> TensorSpec:
    """The one input a request feeds: ``name`` if given, else the first; the model must have
    exactly one input, since a request carries one tensor."""
    names = [t.name for t in metadata.inputs]
    if name is not None and name not in names:
        raise PreprocessingError(
            f"model has no input {name!r}; its inputs are {', '.join(map(repr, names))}"
        )
    if len(names) > 1:
        raise PreprocessingError(
            f"model has {len(names)} inputs ({', '.join(map(repr, names))}); "
            "send a tensor for each with the 'tensors' format"
        )
    return metadata.input_spec(name)


class TensorInput:
    """Checks client tensors against one declared model input; built once per model."""

    __slots__ = ("_dtype", "_max_elements", "_name", "_shape")

    def __init__(self, spec: TensorSpec, limits: Limits) -> None:
        self._name = spec.name
        self._shape = list(spec.shape)
        self._dtype = numpy_dtype(spec.dtype)
        self._max_elements = limits.max_tensor_elements

    @property
    def name(self) -> str:
        """The input this checker feeds."""
        return self._name

    def __call__(self, payload: TensorPayload) -> Prepared:
        """Check ``payload.array`` and return it as the feed of this input."""
        if payload.input is not None and payload.input != self._name:
            raise PreprocessingError(
                f"model has no input {payload.input!r}; its input is {self._name!r}"
            )
        arr = payload.array
        if not isinstance(arr, np.ndarray):
            raise PreprocessingError(f"input {self._name!r}: the tensor is not an array")
        if arr.size > self._max_elements:
            raise InputTooLarge(
                f"tensor for input {self._name!r} has {arr.size} elements; "
                f"the limit is {self._max_elements}"
            )
        self._check_dtype(arr)
        arr = self._check_shape(arr)
        with np.errstate(over="ignore", invalid="ignore"):
            feed = np.ascontiguousarray(arr, dtype=self._dtype)
        if (
            arr.dtype.kind == "f"
            and feed.dtype.itemsize < arr.dtype.itemsize
            and not np.isfinite(feed).all()
            and np.isfinite(arr).all()
        ):
            raise PreprocessingError(
                f"input {self._name!r}: values out of the range of {self._dtype_name()}"
            )
        return Prepared(feeds={self._name: feed})

    def _mismatch(self, reason: str, arr: np.ndarray) -> PreprocessingError:
        return PreprocessingError(
            f"{reason}: input {self._name!r} expects shape {format_shape(self._shape)} "
            f"of {self._dtype_name()}; got shape {format_shape(arr.shape)} of {arr.dtype}"
        )

    def _dtype_name(self) -> str:
        return "string" if self._dtype == np.dtype(object) else str(self._dtype)

    def _check_dtype(self, arr: np.ndarray) -> None:
        src, dst = arr.dtype, self._dtype
        if dst.kind == "O":
            ok = src.kind == "U" or (
                src.kind == "O" and all(isinstance(v, str) for v in arr.reshape(-1))
            )
        elif src.kind == "b":
            ok = dst.kind in "biuf"
        elif src.kind in "iu" and dst.kind == "f":
            ok = True
        elif src.kind in "iu" and dst.kind in "iu":
            ok = np.can_cast(src, dst, "safe") or self._fits(arr, dst)
            if not ok:
                raise self._mismatch(f"values do not fit {dst}", arr)
        elif src.kind == "f":
            ok = dst.kind == "f"
        else:
            ok = False
        if not ok:
            what = "string" if src.kind in "UO" else str(src)
            raise self._mismatch(f"cannot feed {what} values to a {self._dtype_name()} input", arr)

    @staticmethod
    def _fits(arr: np.ndarray, dst: np.dtype) -> bool:
        if arr.size == 0:
            return True
        info = np.iinfo(dst)
        return int(arr.min()) >= info.min and int(arr.max()) <= info.max

    def _check_shape(self, arr: np.ndarray) -> np.ndarray:
        rank = len(self._shape)
        if arr.ndim == rank - 1 and rank > 0 and not _fixed_above_one(self._shape[0]):
            arr = arr[np.newaxis]
        if arr.ndim != rank:
            raise self._mismatch(f"rank {arr.ndim} does not match", arr)
        for axis, (want, got) in enumerate(zip(self._shape, arr.shape, strict=True)):
            if isinstance(want, int) and want != got:
                raise self._mismatch(f"dimension {axis} is {got}, not {want}", arr)
        if rank and not isinstance(self._shape[0], int) and arr.shape[0] != 1:
            # One input per request: predictions, timings and caching are per input;
            # batching across requests happens server-side.
            raise self._mismatch(
                f"one input per request, but the batch dimension is {arr.shape[0]}", arr
            )
        return arr


class ModelInputs:
    """Checks a :class:`TensorsPayload` against the inputs it must feed, all of them and no
    other, within ``Limits.max_tensor_elements`` elements in all; built once per model."""

    __slots__ = ("_checks", "_max_elements")

    def __init__(self, specs: list[TensorSpec], limits: Limits) -> None:
        self._checks = {spec.name: TensorInput(spec, limits) for spec in specs}
        self._max_elements = limits.max_tensor_elements

    def __call__(self, payload: TensorsPayload) -> Prepared:
        """The feeds of every input; errors name the input."""
        tensors = payload.tensors
        names = ", ".join(repr(n) for n in self._checks)
        for name in tensors:
            if name not in self._checks:
                raise PreprocessingError(f"model has no input {name!r}; its inputs are {names}")
        for name in self._checks:
            if name not in tensors:
                raise PreprocessingError(
                    f"input {name!r} is missing; the model's inputs are {names}"
                )
        total = sum(int(getattr(arr, "size", 0)) for arr in tensors.values())
        if total > self._max_elements:
            raise InputTooLarge(
                f"the tensors have {total} elements in all; the limit is {self._max_elements}"
            )
        feeds: dict[str, np.ndarray] = {}
        for name, check in self._checks.items():
            feeds.update(check(TensorPayload(tensors[name], name)).feeds)
        return Prepared(feeds=feeds)


def _fixed_above_one(dim: Dim) -> bool:
    return isinstance(dim, int) and dim != 1


def model_input(metadata: ModelMetadata) -> TensorSpec:
    """The input a preprocessor feeds, checked at model load: ``preprocessing.input`` or the
    first input, and the model must have no other."""
    try:
        return single_input(metadata, metadata.preprocessing.input)
    except PreprocessingError as exc:
        raise MetadataError(f"invalid metadata: {exc}", "inputs") from None


def tensor_feeds(
    metadata: ModelMetadata, payload: TensorPayload | TensorsPayload, limits: Limits
) -> Prepared:
    """Feeds for raw tensors sent to a model of any preprocessing kind.

    A :class:`TensorsPayload` feeds every model input (:class:`ModelInputs`). A
    :class:`TensorPayload` feeds one input: ``payload.input``, else the metadata's
    ``preprocessing.input``, else the model's only input."""
    if isinstance(payload, TensorsPayload):
        return ModelInputs(list(metadata.inputs), limits)(payload)
    name = payload.input if payload.input is not None else metadata.preprocessing.input
    return TensorInput(single_input(metadata, name), limits)(payload)
