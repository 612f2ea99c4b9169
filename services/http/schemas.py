"""Request and response models of the REST API (the OpenAPI contract lives here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LoadRequest(BaseModel):
    """``POST /api/models/load``."""

    model_config = ConfigDict(extra="forbid")

    metadataCid: str = Field(min_length=1, max_length=200, description="CID of metadata.json")
    tokenId: int | None = Field(
        None, ge=0, lt=2**256, description="Token that licenses the model; omitted: open model"
    )
    warmup: bool = True

    @field_validator("tokenId", mode="before")
    @classmethod
    def _token_from_string(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip().isdigit():
                raise ValueError("tokenId must be a non-negative integer")
            return int(v)
        return v


class CacheStatus(BaseModel):
    current_size: int
    max_size: int
    models_in_cache: list[str]
    total_bytes: int
    max_bytes: int | None = None


class LoadResponse(BaseModel):
    success: Literal[True] = True
    model_id: str
    message: str
    status: Literal["loaded", "already_loaded"]
    load_time_ms: float
    execution_provider: str
    cacheStatus: CacheStatus


class InputData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = Field(description="See GET /api/inference/formats")
    content: Any


class ExecuteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(5, ge=0, description="0: every class")
    threshold: float = Field(0.0, ge=0.0, le=1.0)
    timeout: int | None = Field(None, ge=1, le=3_600_000, description="milliseconds")


class ExecuteRequest(BaseModel):
    """``POST /api/inference/execute``."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=200)
    execution_mode: Literal["sync"] = "sync"
    input_data: InputData
    options: ExecuteOptions = ExecuteOptions()


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    class_: str = Field(alias="class")
    confidence: float
    class_id: int


class Metrics(BaseModel):
    preprocessing_time_ms: float
    inference_time_ms: float
    postprocessing_time_ms: float
    total_time_ms: float


class ExecuteResponse(BaseModel):
    success: Literal[True] = True
    model_id: str
    predictions: list[Prediction]
    details: dict[str, Any]
    metrics: Metrics
    cache: Literal["hit", "miss", "bypass"] = Field(
        description="prediction cache: hit (served from the cache, no inference), miss "
        "(computed and stored), bypass (not cached: disabled, opted out, or cache unavailable); "
        "also in the X-Cache header"
    )


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: str
    message: str
