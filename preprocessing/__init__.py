"""Request payload -> model input tensors.

Importing this package registers the built-in kinds (``image``, ``tensor``, ``tabular``);
:func:`create` builds a model's preprocessor from its metadata, and :func:`tensor_feeds`
feeds a raw tensor to a model of any kind.
"""

from preprocessing import image, tabular, tensor
from preprocessing.base import (
    FeaturesPayload,
    ImagePayload,
    InputTooLarge,
    Limits,
    Payload,
    Prepared,
    PreprocessingError,
    Preprocessor,
    PreprocessorFactory,
    TensorPayload,
    create,
    kinds,
    register,
)
from preprocessing.tensor import tensor_feeds

__all__ = [
    "FeaturesPayload",
    "ImagePayload",
    "InputTooLarge",
    "Limits",
    "Payload",
    "Prepared",
    "PreprocessingError",
    "Preprocessor",
    "PreprocessorFactory",
    "TensorPayload",
    "create",
    "image",
    "kinds",
    "register",
    "tabular",
    "tensor",
    "tensor_feeds",
]
