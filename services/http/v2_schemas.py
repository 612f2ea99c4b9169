"""Request and reply models of the ``/v2`` routes (the Open Inference Protocol), for the
OpenAPI document. The routes encode their replies themselves (:mod:`services.http.v2_reply`)
and parse their bodies themselves (:mod:`services.http.v2_codec`); these models describe
exactly what they send and take."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.http.codecs import inline_refs
from services.http.schemas import error_responses

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class V2ErrorResponse(BaseModel):
    """Every ``/v2`` error: the protocol's ``{"error": message}``."""

    model_config = ConfigDict(extra="allow")

    error: str


def v2_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Error replies of a ``/v2`` route."""
    return error_responses(V2ErrorResponse, *codes)


# --- health and metadata --------------------------------------------------------------------


class V2Live(BaseModel):
    live: Literal[True]


class V2Ready(BaseModel):
    ready: Literal[True]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1: a dynamic dimension")


class V2ModelMetadata(BaseModel):
    name: str = Field(description="the model_id")
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ModelReady(BaseModel):
    name: str
    ready: Literal[True]


# --- inference ------------------------------------------------------------------------------


class V2TensorParameters(BaseModel):
    """Per-tensor parameters the server reads (others are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    binary_data_size: int | None = Field(
        None, ge=0, description="the tensor's bytes follow the JSON part of the body"
    )
    content_type: str | None = Field(None, description='"base64": BYTES elements are base64')


class V2InputTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=256)
    datatype: Datatype
    shape: list[int] = Field(max_length=16, description="non-negative sizes")
    data: list[Any] | None = Field(
        None, description="values, flat or nested, row-major (absent with binary_data_size)"
    )
    parameters: V2TensorParameters | None = None


class V2OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data: bool | None = Field(None, description="return this output as binary data")
    classification: int | None = Field(
        None, ge=0, description="the top k classes as 'value:index:label' BYTES"
    )


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: V2OutputParameters | None = None


class V2RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data_output: bool | None = Field(None, description="every output as binary data")
    timeout: int | None = Field(None, ge=0, description="microseconds (0: none)")


class V2InferRequest(BaseModel):
    """The JSON part of an inference request."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: V2RequestParameters | None = None
    inputs: list[V2InputTensor] = Field(min_length=1, max_length=64)
    outputs: list[V2RequestedOutput] | None = Field(None, max_length=64)


class V2OutputTensor(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    data: list[Any] | None = Field(None, description="flat, row-major (absent when binary)")
    parameters: dict[str, int] | None = Field(
        None, description="binary_data_size: the output's bytes after the JSON part"
    )


class V2InferResponse(BaseModel):
    """The JSON part of an inference reply (binary tensor data may follow it: the reply is
    then ``application/octet-stream`` and ``Inference-Header-Content-Length`` gives the JSON
    part's length)."""

    model_name: str
    model_version: str
    id: str | None = Field(None, description="the request's id, when it gave one")
    outputs: list[V2OutputTensor]


# --- the model repository extension ---------------------------------------------------------


class V2IndexRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    ready: bool = Field(False, description="only the models that are ready")


class V2IndexEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class V2LoadParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    metadataCid: str | None = Field(None, min_length=1, max_length=200)
    tokenId: int | str | None = Field(None, description="a non-negative integer (or digits)")
    warmup: bool | None = None
    config: str | None = Field(
        None, description="a JSON object with the same keys (Triton's load_model(config=...))"
    )


class V2LoadRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    parameters: V2LoadParameters | None = None


class V2UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    parameters: dict[str, Any] | None = None


class V2LoadResponse(BaseModel):
    name: str
    version: str
    state: Literal["READY"]
    status: Literal["loaded", "already_loaded"]
    load_time_ms: float


class V2UnloadResponse(BaseModel):
    name: str
    state: Literal["UNAVAILABLE"]


def json_body(model: type[BaseModel], *, required: bool = False) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON body that the route parses itself."""
    schema = inline_refs(model.model_json_schema())
    return {
        "requestBody": {"content": {"application/json": {"schema": schema}}, "required": required}
    }


def infer_body() -> dict[str, Any]:
    """``openapi_extra`` of an inference route: JSON, or JSON followed by binary tensor data."""
    schema = inline_refs(V2InferRequest.model_json_schema())
    return {
        "requestBody": {
            "content": {
                "application/json": {"schema": schema},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    # Not an OpenAPI field: how the binary form is laid out.
                    "x-layout": "the JSON request, then the inputs' binary data; the header "
                    "Inference-Header-Content-Length gives the JSON part's length",
                },
            },
            "required": True,
        }
    }
