"""The postprocessing plug-in point: model outputs -> predictions a user reads.

Same pattern as ``preprocessing.base``: a kind is one module with a factory registered by
:func:`register`; :func:`create` builds the postprocessor once per model at load time (with
the labels already resolved), and it is called once per request with the run's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from registry.metadata import ModelMetadata


class PostprocessingError(ValueError):
    """The model's outputs do not fit the postprocessing spec (a server-side model error)."""


@dataclass(frozen=True, slots=True)
class Options:
    """Per-request options that change the answer."""

    top_k: int = 5
    threshold: float = 0.0


@dataclass(slots=True)
class Result:
    """Predictions (``{"class", "confidence", "class_id", ...}`` dicts, best first) and
    kind-specific details (``entropy``, ``confidence``, ``score``, ...)."""

    predictions: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)


class Postprocessor(Protocol):
    """Turns one run's outputs (by output name; batch of 1) into a :class:`Result`."""

    def __call__(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any], options: Options
    ) -> Result: ...


PostprocessorFactory = Callable[[ModelMetadata, list[str] | None], Postprocessor]

_REGISTRY: dict[str, PostprocessorFactory] = {}


def register(kind: str) -> Callable[[PostprocessorFactory], PostprocessorFactory]:
    """Decorator: make ``factory`` the postprocessor for ``postprocessing.kind == kind``."""

    def deco(factory: PostprocessorFactory) -> PostprocessorFactory:
        _REGISTRY[kind] = factory
        return factory

    return deco


def kinds() -> list[str]:
    """The registered postprocessing kinds."""
    return sorted(_REGISTRY)


def create(metadata: ModelMetadata, labels: list[str] | None) -> Postprocessor:
    """The postprocessor for this model; ``labels`` already resolved (inline or by CID)."""
    kind = metadata.postprocessing.kind
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"no postprocessor registered for kind {kind!r}") from None
    return factory(metadata, labels)
