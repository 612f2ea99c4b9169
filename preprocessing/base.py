"""The preprocessing plug-in point: request payload -> model input tensors.

A *kind* (``image``, ``tensor``, ``tabular``, ...) is one module that defines a factory and
registers it here with :func:`register`. At model load the loader calls :func:`create` with
the model's metadata; the returned :class:`Preprocessor` is kept with the session and called
once per request, in a worker thread (it may block on CPU; it must not touch the event loop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from registry.metadata import ModelMetadata


class PreprocessingError(ValueError):
    """The request's input cannot be turned into the model's input (a client error, 400)."""


class InputTooLarge(PreprocessingError):
    """The input is larger than the server allows (413)."""


@dataclass(frozen=True, slots=True)
class ImagePayload:
    """Encoded image bytes (JPEG, PNG, WebP, ... anything Pillow decodes)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TensorPayload:
    """A tensor sent by the client, already parsed into an array (not yet checked)."""

    array: np.ndarray
    input: str | None = None


@dataclass(frozen=True, slots=True)
class FeaturesPayload:
    """Named scalar features (tabular models)."""

    values: dict[str, float]


Payload = ImagePayload | TensorPayload | FeaturesPayload


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on untrusted input, from settings."""

    max_image_pixels: int = 40_000_000
    max_tensor_elements: int = 50_000_000


@dataclass(slots=True)
class Prepared:
    """What a preprocessor hands to the runtime: feeds by input name, plus context for
    postprocessing (e.g. the original image size and letterbox transform for detection)."""

    feeds: dict[str, np.ndarray]
    context: dict[str, Any] = field(default_factory=dict)


class Preprocessor(Protocol):
    """Turns one request payload into model feeds. Called from a worker thread."""

    def __call__(self, payload: Payload) -> Prepared: ...


PreprocessorFactory = Callable[[ModelMetadata, Limits], Preprocessor]

_REGISTRY: dict[str, PreprocessorFactory] = {}


def register(kind: str) -> Callable[[PreprocessorFactory], PreprocessorFactory]:
    """Decorator: make ``factory`` the preprocessor for metadata ``preprocessing.kind == kind``."""

    def deco(factory: PreprocessorFactory) -> PreprocessorFactory:
        _REGISTRY[kind] = factory
        return factory

    return deco


def kinds() -> list[str]:
    """The registered preprocessing kinds."""
    return sorted(_REGISTRY)


def create(metadata: ModelMetadata, limits: Limits) -> Preprocessor:
    """The preprocessor for this model, by its metadata's ``preprocessing.kind``."""
    kind = metadata.preprocessing.kind
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"no preprocessor registered for kind {kind!r}") from None
    return factory(metadata, limits)
