"""The ``tensor`` preprocessing kind: the request carries the model's input tensor itself.

It is checked against the input the metadata declares (:class:`preprocessing.feeds.TensorInput`:
element count, dtype, rank, fixed dimensions) and fed as is. Any kind accepts a raw tensor the
same way (:func:`preprocessing.feeds.tensor_feeds`); this kind accepts nothing else.
"""

from __future__ import annotations

from typing import Literal

from preprocessing.base import (
    Limits,
    Payload,
    Prepared,
    PreprocessingKind,
    PreprocessingOptions,
    PreprocessorBase,
    TensorPayload,
)
from preprocessing.feeds import TensorInput, model_input, numpy_dtype, tensor_feeds, wrong_payload
from registry.metadata import ModelMetadata

__all__ = [
    "KIND",
    "TensorPreprocessing",
    "TensorPreprocessor",
    "numpy_dtype",
    "tensor_feeds",
    "tensor_preprocessor",
]


class TensorPreprocessing(PreprocessingOptions):
    """The request carries the tensor itself; it is checked against the input's dtype/shape."""

    kind: Literal["tensor"] = "tensor"


class TensorPreprocessor(PreprocessorBase):
    """The ``tensor`` kind: the request carries the input tensor itself (no images; the
    warm-up input is the declared shape with 1 for each dynamic dimension)."""

    __slots__ = ("_check",)

    def __init__(self, metadata: ModelMetadata, limits: Limits) -> None:
        self._check = TensorInput(model_input(metadata), limits)

    def __call__(self, payload: Payload) -> Prepared:
        """Check the tensor and feed it; any other payload is an error."""
        if not isinstance(payload, TensorPayload):
            raise wrong_payload("a tensor", payload)
        return self._check(payload)


def tensor_preprocessor(
    metadata: ModelMetadata, options: TensorPreprocessing, limits: Limits
) -> TensorPreprocessor:
    """Factory for ``preprocessing.kind == "tensor"``."""
    return TensorPreprocessor(metadata, limits)


KIND = PreprocessingKind(options=TensorPreprocessing, factory=tensor_preprocessor)
"""The ``tensor`` kind (entry point ``cidserve.preprocessing: tensor``)."""
