"""The ``tabular`` preprocessing kind: named features -> one row ``[1, n_features]``.

Features are placed in the order the metadata lists them, each as ``(value - offset) /
scale``. A missing feature takes its ``default`` or is an error; unknown names, values that
are not finite numbers and values outside ``[min, max]`` (checked on the value as sent) are
errors that name the feature. Offsets and scales are arrays built once per model.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from preprocessing.base import (
    FeaturesPayload,
    Limits,
    Payload,
    Prepared,
    PreprocessingError,
    PreprocessingKind,
    PreprocessingOptions,
    TensorPayload,
)
from preprocessing.feeds import (
    TensorInput,
    format_shape,
    model_input,
    numpy_dtype,
    wrong_payload,
)
from registry.metadata import MetadataError, ModelMetadata

EXPECTS = "features (a JSON object of named numbers) or a tensor"
_MAX_NAMED = 10


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_NAMED])
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return shown + more


class Feature(BaseModel):
    """One named feature of a tabular model: ``(value - offset) / scale``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    offset: float = 0.0
    scale: float = 1.0
    default: float | None = None
    min: float | None = None
    max: float | None = None

    @field_validator("scale")
    @classmethod
    def _scale_nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v


class TabularPreprocessing(PreprocessingOptions):
    """Named features (a JSON object) to one row vector, in the order given here."""

    kind: Literal["tabular"] = "tabular"
    features: list[Feature] = Field(min_length=1, max_length=10_000)

    @field_validator("features")
    @classmethod
    def _unique(cls, v: list[Feature]) -> list[Feature]:
        names = [f.name for f in v]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        return v


class TabularPreprocessor:
    """Scales a request's named features into the model's input row.

    Capabilities: takes no images; the warm-up input is one row ``[1, n_features]``."""

    image_input = None

    def __init__(self, metadata: ModelMetadata, spec: TabularPreprocessing, limits: Limits) -> None:
        target = model_input(metadata)
        dtype = numpy_dtype(target.dtype)
        n = len(spec.features)
        if dtype.kind != "f":
            raise MetadataError(
                f"invalid metadata: tabular input {target.name!r} is {target.dtype}; "
                "it must be a float type",
                "inputs",
            )
        shape = target.shape
        if (
            len(shape) != 2
            or (isinstance(shape[1], int) and shape[1] != n)
            or (isinstance(shape[0], int) and shape[0] != 1)
        ):
            raise MetadataError(
                f"invalid metadata: input {target.name!r} has shape {format_shape(shape)}; "
                f"{n} features make a row [1, {n}]",
                "preprocessing.features",
            )
        self._name = target.name
        self._dtype = dtype
        self._tensor = TensorInput(target, limits)
        self._features: list[Feature] = list(spec.features)
        self._known = frozenset(f.name for f in spec.features)
        self._offset = np.array([f.offset for f in spec.features], np.float64)
        self._scale = np.array([f.scale for f in spec.features], np.float64)

    def warmup_shapes(self) -> dict[str, list[int]]:
        """One row of the model's features."""
        return {self._name: [1, len(self._features)]}

    def __call__(self, payload: Payload) -> Prepared:
        """The input row for one request's features; a tensor is checked and fed as is."""
        if isinstance(payload, TensorPayload):
            return self._tensor(payload)
        if not isinstance(payload, FeaturesPayload):
            raise wrong_payload(EXPECTS, payload)
        values = payload.values
        unknown = [k for k in values if k not in self._known]
        if unknown:
            raise PreprocessingError(f"unknown features: {_names(sorted(map(str, unknown)))}")
        row = np.empty(len(self._features), np.float64)
        missing: list[str] = []
        for i, feature in enumerate(self._features):
            value = values.get(feature.name)
            if value is None:
                if feature.default is None:
                    missing.append(feature.name)
                    continue
                value = feature.default
            row[i] = _checked(feature, value)
        if missing:
            raise PreprocessingError(f"missing features: {_names(missing)}")
        row -= self._offset
        row /= self._scale
        return Prepared(feeds={self._name: row.astype(self._dtype).reshape(1, -1)})


def _checked(feature: Feature, value: object) -> float:
    """``value`` as a float, if it is a finite number inside the feature's bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise PreprocessingError(
            f"feature {feature.name!r} must be a number; got {type(value).__name__}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise PreprocessingError(f"feature {feature.name!r} must be finite; got {number}")
    if feature.min is not None and number < feature.min:
        raise PreprocessingError(
            f"feature {feature.name!r} is {number}; the minimum is {feature.min}"
        )
    if feature.max is not None and number > feature.max:
        raise PreprocessingError(
            f"feature {feature.name!r} is {number}; the maximum is {feature.max}"
        )
    return number


def tabular_preprocessor(
    metadata: ModelMetadata, options: TabularPreprocessing, limits: Limits
) -> TabularPreprocessor:
    """Factory for ``preprocessing.kind == "tabular"``."""
    return TabularPreprocessor(metadata, options, limits)


KIND = PreprocessingKind(options=TabularPreprocessing, factory=tabular_preprocessor)
"""The ``tabular`` kind (entry point ``cidserve.preprocessing: tabular``)."""
