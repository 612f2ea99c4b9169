"""The ``score`` postprocessing kind: one number per request (e.g. a compatibility score).

The output must hold exactly one value for the request (``[1]``, ``[1, 1]``, a scalar...); a
row of several values (such as a classifier's ``[p0, p1]``) is an error, not a guess. The
value optionally goes through a sigmoid, then optionally is clamped to ``[0, 1]``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from postprocessing.base import (
    NonFiniteOutput,
    Options,
    PostprocessingError,
    PostprocessingKind,
    PostprocessingOptions,
    PostprocessorBase,
    Result,
)
from postprocessing.classification import declared_classes, output_tensor
from registry.metadata import ModelMetadata


class ScorePostprocessing(PostprocessingOptions):
    """One number per request (e.g. a compatibility score), optionally squashed or clamped."""

    kind: Literal["score"] = "score"
    label: str = Field("score", max_length=128)
    sigmoid: bool = False
    clamp: bool = False


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large ``|x|``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class ScorePostprocessor(PostprocessorBase):
    """Reads the single value a score model outputs (no ``classification_output``)."""

    __slots__ = ("_clamp", "_label", "_name", "_sigmoid")

    def __init__(
        self, metadata: ModelMetadata, spec: ScorePostprocessing, labels: list[str] | None
    ) -> None:
        out = metadata.output_spec(spec.output)
        self._name = out.name
        self._label = spec.label
        self._sigmoid = spec.sigmoid
        self._clamp = spec.clamp
        per_row = declared_classes(out.shape)
        if per_row is not None and per_row != 1:
            raise PostprocessingError(
                f"output {out.name!r} has shape {out.shape}: {per_row} values per request; "
                "a score model must give exactly one"
            )

    def __call__(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any], options: Options
    ) -> Result:
        """The score as the only prediction and as ``details["score"]``."""
        arr = output_tensor(outputs, self._name)
        if arr.size != 1:
            raise PostprocessingError(
                f"model output {self._name!r} has shape {list(arr.shape)}; "
                "a score model must give exactly one value per request"
            )
        value = float(arr.reshape(-1)[0])
        if not math.isfinite(value):
            raise NonFiniteOutput(f"model output {self._name!r} is {value}")
        if self._sigmoid:
            value = sigmoid(value)
        if self._clamp:
            value = min(max(value, 0.0), 1.0)
        return Result(
            predictions=[{"class": self._label, "confidence": value, "class_id": 0}],
            details={"score": value},
        )


def score_postprocessor(
    metadata: ModelMetadata, options: ScorePostprocessing, labels: list[str] | None
) -> ScorePostprocessor:
    """Factory for ``postprocessing.kind == "score"``."""
    return ScorePostprocessor(metadata, options, labels)


KIND = PostprocessingKind(options=ScorePostprocessing, factory=score_postprocessor)
"""The ``score`` kind (entry point ``cidserve.postprocessing: score``)."""
