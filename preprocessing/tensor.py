"""The ``tensor`` preprocessing kind: the request carries the model's input tensors themselves.

Without ``preprocessing.input`` the kind feeds every input the model has, whatever their
number, dtypes (strings included) and shapes: a request sends one tensor per input (a
:class:`TensorsPayload`, the ``tensors`` format), or, for a model with a single input, that
tensor alone (a :class:`TensorPayload`). With ``preprocessing.input`` it feeds that one input,
and the model must have no other. Each tensor is checked against the input the metadata
declares (:class:`preprocessing.feeds.TensorInput`: element count, dtype, rank, fixed
dimensions) and fed as is. Any kind accepts raw tensors the same way
(:func:`preprocessing.feeds.tensor_feeds`); this kind accepts nothing else.
"""

from __future__ import annotations

from typing import Literal

from preprocessing.base import (
    Limits,
    Payload,
    Prepared,
    PreprocessingError,
    PreprocessingKind,
    PreprocessingOptions,
    PreprocessorBase,
    TensorPayload,
    TensorsPayload,
)
from preprocessing.feeds import (
    ModelInputs,
    TensorInput,
    model_input,
    numpy_dtype,
    tensor_feeds,
    wrong_payload,
)
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
    """The request carries the tensors themselves; each is checked against its input's
    dtype/shape. ``input`` None: every model input is fed."""

    kind: Literal["tensor"] = "tensor"


class TensorPreprocessor(PreprocessorBase):
    """The ``tensor`` kind: the request carries the input tensors themselves (no images; the
    warm-up input is each declared shape with 1 for each dynamic dimension)."""

    __slots__ = ("_all", "_single")

    def __init__(
        self, metadata: ModelMetadata, options: TensorPreprocessing, limits: Limits
    ) -> None:
        specs = [model_input(metadata)] if options.input is not None else list(metadata.inputs)
        self._all = ModelInputs(specs, limits)
        self._single = TensorInput(specs[0], limits) if len(specs) == 1 else None

    def __call__(self, payload: Payload) -> Prepared:
        """Check the tensors and feed them; any other payload is an error."""
        if isinstance(payload, TensorsPayload):
            return self._all(payload)
        if not isinstance(payload, TensorPayload):
            raise wrong_payload("a tensor" if self._single else "tensors", payload)
        if self._single is None:
            raise PreprocessingError(
                "model has several inputs; send a tensor for each with the 'tensors' format"
            )
        return self._single(payload)


def tensor_preprocessor(
    metadata: ModelMetadata, options: TensorPreprocessing, limits: Limits
) -> TensorPreprocessor:
    """Factory for ``preprocessing.kind == "tensor"``."""
    return TensorPreprocessor(metadata, options, limits)


KIND = PreprocessingKind(options=TensorPreprocessing, factory=tensor_preprocessor)
"""The ``tensor`` kind (entry point ``cidserve.preprocessing: tensor``)."""
