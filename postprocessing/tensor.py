"""The ``tensor`` postprocessing kind: the model's outputs themselves, by name.

The reply holds no predictions; ``details["outputs"]`` maps each returned output's name to
``{"dtype", "shape", "data"}`` (``data`` a nested list; strings as text). The outputs are
``outputs`` when given, else ``output`` alone when given, else every output the metadata
declares, in its order. The reply is bounded: more than ``max_elements`` elements in all, or
string outputs of more than ``max_text_chars`` characters in all, is an error naming the
output and the bound, as is a NaN or infinite value (JSON has no spelling for them).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from postprocessing.base import (
    NonFiniteOutput,
    Options,
    PostprocessingError,
    PostprocessingKind,
    PostprocessingOptions,
    PostprocessorBase,
    Result,
)
from registry.metadata import MetadataError, ModelMetadata


class TensorPostprocessing(PostprocessingOptions):
    """The named outputs as tensors (``outputs``; None: ``output``, else every output)."""

    kind: Literal["tensor"] = "tensor"
    outputs: list[str] | None = Field(None, min_length=1, max_length=64)
    max_elements: int = Field(1_000_000, ge=1, le=100_000_000)
    max_text_chars: int = Field(16 << 20, ge=1, le=1 << 30)

    @model_validator(mode="after")
    def _one_way_to_name(self) -> TensorPostprocessing:
        if self.output is not None and self.outputs is not None:
            raise ValueError("give 'output' or 'outputs', not both")
        return self


class TensorPostprocessor(PostprocessorBase):
    """Writes the chosen outputs out as ``{"dtype", "shape", "data"}`` (it does not classify)."""

    __slots__ = ("_max_elements", "_max_text", "_names")

    def __init__(self, metadata: ModelMetadata, spec: TensorPostprocessing) -> None:
        declared = {t.name: t.dtype for t in metadata.outputs}
        if spec.outputs is not None:
            names = list(spec.outputs)
        elif spec.output is not None:
            names = [spec.output]
        else:
            names = list(declared)
        unknown = [n for n in names if n not in declared]
        if unknown:
            raise MetadataError(
                f"invalid metadata: postprocessing.outputs names {unknown[0]!r}, which is not "
                f"one of the outputs {sorted(declared)}",
                "postprocessing.outputs",
            )
        if len(set(names)) != len(names):
            raise MetadataError(
                "invalid metadata: postprocessing.outputs names an output twice",
                "postprocessing.outputs",
            )
        self._names = names
        self._max_elements = spec.max_elements
        self._max_text = spec.max_text_chars

    def __call__(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any], options: Options
    ) -> Result:
        """``details["outputs"]``: each chosen output as dtype, shape and data."""
        arrays: dict[str, np.ndarray] = {}
        total = 0
        for name in self._names:
            arr = outputs.get(name)
            if not isinstance(arr, np.ndarray):
                raise PostprocessingError(
                    f"model output {name!r} is missing; the run gave {sorted(outputs)}"
                )
            total += arr.size
            if total > self._max_elements:
                raise PostprocessingError(
                    f"model output {name!r} has {arr.size} elements, which takes the reply past "
                    f"{self._max_elements} (postprocessing.max_elements)"
                )
            arrays[name] = arr
        text = 0
        written: dict[str, dict[str, Any]] = {}
        for name, arr in arrays.items():
            if arr.dtype.kind == "O":
                data = [_text(name, v) for v in arr.reshape(-1)]
                text += sum(len(s) for s in data)
                if text > self._max_text:
                    raise PostprocessingError(
                        f"model output {name!r} takes the reply past {self._max_text} "
                        "characters of text (postprocessing.max_text_chars)"
                    )
                values: Any = np.array(data, dtype=object).reshape(arr.shape).tolist()
                dtype = "string"
            else:
                if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                    raise NonFiniteOutput(f"model output {name!r} holds NaN or infinity")
                values = arr.tolist()
                dtype = str(arr.dtype)
            written[name] = {"dtype": dtype, "shape": list(arr.shape), "data": values}
        return Result(predictions=[], details={"outputs": written})


def _text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise PostprocessingError(
                f"model output {name!r} holds bytes that are not UTF-8"
            ) from None
    raise PostprocessingError(f"model output {name!r} holds {type(value).__name__} values")


def tensor_postprocessor(
    metadata: ModelMetadata, options: TensorPostprocessing, labels: list[str] | None
) -> TensorPostprocessor:
    """Factory for ``postprocessing.kind == "tensor"``."""
    return TensorPostprocessor(metadata, options)


KIND = PostprocessingKind(options=TensorPostprocessing, factory=tensor_postprocessor)
"""The ``tensor`` kind (entry point ``cidserve.postprocessing: tensor``)."""
