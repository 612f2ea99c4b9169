"""Typed replies (and request parts) of the cidserve API, as pydantic models.

They mirror what the server sends (its OpenAPI document: ``GET /openapi.json``). Field names
are snake_case; the server's camelCase names (``cacheStatus``, ``metadataCid``, ``tokenId``,
``modelCid``) are their aliases, and a prediction's ``class`` is ``label``. Fields a newer
server adds are kept (``model_extra``), never refused.
"""

from __future__ import annotations

import base64
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Reply(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


# --- /api/models ----------------------------------------------------------------------------


class CacheStatus(_Reply):
    """The session cache: models in memory (least recently used first) and their bytes."""

    current_size: int
    max_size: int
    models_in_cache: list[str]
    total_bytes: int
    max_bytes: int | None = None
    memory_bytes: dict[str, int] = Field(default_factory=dict)


class LoadResult(_Reply):
    """``POST /api/models/load``."""

    model_id: str
    message: str
    status: str = Field(description="loaded | already_loaded")
    load_time_ms: float
    execution_provider: str
    cache_status: CacheStatus = Field(alias="cacheStatus")


class TensorDescription(_Reply):
    name: str
    dtype: str
    shape: list[int | str | None]


class ModelDescription(_Reply):
    """A model in the server's session cache."""

    model_id: str
    name: str
    version: str
    metadata_cid: str = Field(alias="metadataCid")
    model_cid: str = Field(alias="modelCid")
    token_id: int | None = Field(None, alias="tokenId")
    licensed: bool
    size_bytes: int
    execution_provider: str
    cross_request_batching: bool = False
    preprocessing: str
    postprocessing: str
    inputs: list[TensorDescription]
    outputs: list[TensorDescription]
    load_time_ms: float
    loaded_at: float
    requests: int
    errors: int


class IndexRecord(_Reply):
    """A model ever loaded on the server, in memory or not."""

    model_id: str
    metadata_cid: str
    name: str
    version: str
    token_id: int | None = None
    loads: int
    last_loaded_at: float
    last_load_ms: float | None = None
    last_source: str | None = None
    bound_at: float | None = None
    in_cache: bool


class CacheCounters(_Reply):
    session_cache_hits: int
    session_cache_misses: int
    session_cache_evictions: int


class ModelList(_Reply):
    """``GET /api/models``."""

    cache_status: CacheStatus = Field(alias="cacheStatus")
    models: list[ModelDescription]
    index: list[IndexRecord] = Field(default_factory=list)
    counters: CacheCounters | None = None

    def ids(self) -> list[str]:
        """The ids of the models in memory."""
        return [m.model_id for m in self.models]


class UnloadResult(_Reply):
    """``DELETE /api/models/{model_id}``."""

    model_id: str
    message: str
    cache_status: CacheStatus = Field(alias="cacheStatus")


# --- /api/inference -------------------------------------------------------------------------


class Prediction(_Reply):
    """One class (detections add ``box`` and other fields, kept as extra fields)."""

    label: str = Field(alias="class")
    confidence: float
    class_id: int


class StageMetrics(_Reply):
    preprocessing_time_ms: float
    inference_time_ms: float
    postprocessing_time_ms: float
    total_time_ms: float


class PredictResult(_Reply):
    """``POST /api/models/{id}/predict`` and ``POST /api/inference/execute``."""

    model_id: str
    predictions: list[Prediction]
    details: dict[str, Any] = Field(default_factory=dict)
    metrics: StageMetrics
    cache: str = Field(description="hit | miss | bypass: the prediction cache")

    @property
    def top(self) -> Prediction | None:
        """The first (most confident) prediction, if any."""
        return self.predictions[0] if self.predictions else None


class InputData(BaseModel):
    """``input_data`` of ``execute``: a format from ``GET /api/inference/formats`` (e.g.
    ``base64_jpeg``, ``tensor``, ``features``) and its content."""

    model_config = ConfigDict(extra="forbid")

    format: str
    content: Any

    @classmethod
    def image(cls, data: bytes) -> InputData:
        """An encoded image (JPEG, PNG, WebP, ...) as ``base64_image``."""
        return cls(format="base64_image", content=base64.b64encode(data).decode("ascii"))

    @classmethod
    def tensor(cls, values: list[Any]) -> InputData:
        """A nested list of numbers (the model's input shape)."""
        return cls(format="tensor", content=values)

    @classmethod
    def features(cls, values: dict[str, float]) -> InputData:
        """Named numbers, for tabular models."""
        return cls(format="features", content=values)


class ExecuteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(5, ge=0, description="0: every class")
    threshold: float = Field(0.0, ge=0.0, le=1.0)
    timeout: int | None = Field(None, ge=1, description="milliseconds")


# --- /health --------------------------------------------------------------------------------


class Health(_Reply):
    """``GET /health``."""

    status: str
    version: str
    uptime_s: float
    models_loaded: int
    cache_status: CacheStatus = Field(alias="cacheStatus")
    execution_provider: str
    store: str
    licensing: dict[str, Any] = Field(default_factory=dict)


# --- /v2 (the Open Inference Protocol) ------------------------------------------------------


class InferInput(BaseModel):
    """One input tensor of a V2 request: values flat or nested, row-major."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16/32/64, BYTES")
    shape: list[int]
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] | None = None


class InferOutput(_Reply):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None
    raw: bytes | None = Field(None, description="the output's bytes, when sent as binary data")


class InferResult(_Reply):
    """``POST /v2/models/{name}/infer``."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]

    def output(self, name: str) -> InferOutput:
        """The output called ``name`` (``KeyError`` when the reply has none)."""
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(name)
