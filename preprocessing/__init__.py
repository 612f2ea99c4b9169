"""Request payload -> model input tensors.

Kinds are plug-ins found by entry point (group ``cidserve.preprocessing``; cidserve's own
``image``, ``tensor`` and ``tabular`` are declared the same way): :func:`kinds` lists them,
:func:`create` builds a model's preprocessor from its metadata, :func:`validate_options`
checks a ``preprocessing`` spec (publishing), and :func:`tensor_feeds` feeds raw tensors (one,
or one per input) to a model of any kind. See docs/EXTENDING.md.
"""

from preprocessing.base import (
    GROUP,
    KINDS,
    FeaturesPayload,
    ImagePayload,
    InputTooLarge,
    Limits,
    Payload,
    Prepared,
    PreprocessingError,
    PreprocessingKind,
    PreprocessingOptions,
    Preprocessor,
    PreprocessorBase,
    PreprocessorFactory,
    TensorPayload,
    TensorsPayload,
    create,
    kinds,
    parse_options,
    register,
    validate_options,
)
from preprocessing.feeds import tensor_feeds

__all__ = [
    "GROUP",
    "KINDS",
    "FeaturesPayload",
    "ImagePayload",
    "InputTooLarge",
    "Limits",
    "Payload",
    "Prepared",
    "PreprocessingError",
    "PreprocessingKind",
    "PreprocessingOptions",
    "Preprocessor",
    "PreprocessorBase",
    "PreprocessorFactory",
    "TensorPayload",
    "TensorsPayload",
    "create",
    "kinds",
    "parse_options",
    "register",
    "tensor_feeds",
    "validate_options",
]
