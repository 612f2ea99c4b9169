"""Request and response models of the REST API (the OpenAPI contract lives here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class LoadRequest(BaseModel):
    """``POST /api/models/load``."""

    model_config = ConfigDict(extra="forbid")

    # No length bound here: the loader answers 400 "not a CID" (it refuses an over-long
    # string before parsing it), where a schema bound would answer 422.
    metadataCid: str | None = Field(None, min_length=1, description="CID of metadata.json")
    model: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Instead of metadataCid: a reference resolved through the operator's "
        "catalogue, NAME@latest (the newest version), NAME@VERSION or NAME@LABEL",
    )
    tokenId: int | None = Field(
        None, ge=0, lt=2**256, description="Token that licenses the model; omitted: open model"
    )
    warmup: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> LoadRequest:
        if (self.metadataCid is None) == (self.model is None):
            raise ValueError("give exactly one of metadataCid and model")
        return self

    @field_validator("tokenId", mode="before")
    @classmethod
    def _token_from_string(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip().isdigit():
                raise ValueError("tokenId must be a non-negative integer")
            return int(v)
        return v


class CacheStatus(BaseModel):
    """The session cache: models in memory (least recently used first) and their bytes."""

    current_size: int
    max_size: int
    models_in_cache: list[str]
    total_bytes: int
    max_bytes: int | None = Field(description="null: no byte bound")
    memory_bytes: dict[str, int] = Field(description="model_id -> bytes it holds")


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

    format: str = Field(
        description="base64_jpeg, base64_png, base64_image, tensor, tensors (one tensor per "
        "model input, by name), features, ...: see GET /api/inference/formats"
    )
    content: Any = Field(
        description='e.g. for "tensors": {"<input name>": <nested list> | '
        '{"b64": ..., "dtype": ..., "shape": [...]}, ...}'
    )


class ExecuteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(5, ge=0, description="0: every class")
    threshold: float = Field(0.0, ge=0.0, le=1.0)
    timeout: int | None = Field(None, ge=1, le=3_600_000, description="milliseconds")
    execution_mode: Literal["sync", "async"] | None = Field(
        None, description="the request's execution_mode, given here instead (this one wins)"
    )


class ExecuteRequest(BaseModel):
    """``POST /api/inference/execute``."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=200)
    execution_mode: Literal["sync", "async"] = Field(
        "sync",
        description="sync: the reply holds the result; async: 202 with a job_id to poll at "
        "GET /api/inference/jobs/{job_id}",
    )
    input_data: InputData
    options: ExecuteOptions = ExecuteOptions()

    @property
    def mode(self) -> Literal["sync", "async"]:
        """``options.execution_mode`` when given, else ``execution_mode``."""
        return self.options.execution_mode or self.execution_mode


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
    """Every ``/api`` (and health) error: a title, a message naming the problem, and fields
    that depend on the error (``details`` of a 422, ``model_id``, ``field``, ``cid``, ...)."""

    model_config = ConfigDict(extra="allow")

    success: Literal[False] = False
    error: str = Field(description="a short title (e.g. 'Model not found')")
    message: str = Field(description="what went wrong, naming the field or the limit")


# --- replies of /api/models, /api/inference and /health --------------------------------------


class TensorDescription(BaseModel):
    """A model input or output as its metadata declares it."""

    name: str
    dtype: str
    shape: list[int | str | None] = Field(description="a size, or a name / null: dynamic")


class ModelDescription(BaseModel):
    """A model in the session cache."""

    model_id: str
    name: str
    version: str
    metadataCid: str
    modelCid: str
    tokenId: int | None
    licensed: bool
    size_bytes: int
    execution_provider: str
    cross_request_batching: bool = Field(
        description="whether one run of this model may hold rows of several requests"
    )
    preprocessing: str
    postprocessing: str
    inputs: list[TensorDescription]
    outputs: list[TensorDescription]
    load_time_ms: float
    loaded_at: float = Field(description="Unix time")
    requests: int
    errors: int


class ModelInfoResponse(ModelDescription):
    """``GET /api/models/{model_id}``."""

    success: Literal[True] = True


class IndexRecord(BaseModel):
    """A model ever loaded here (the model index), in memory or not."""

    model_id: str
    metadata_cid: str
    name: str
    version: str
    token_id: int | None
    loads: int
    last_loaded_at: float
    last_load_ms: float | None
    last_source: str | None
    bound_at: float | None = Field(
        description="when its published name was bound to it (null: never)"
    )
    in_cache: bool


class CacheCounters(BaseModel):
    session_cache_hits: int
    session_cache_misses: int
    session_cache_evictions: int


class LoadingRecord(BaseModel):
    """A load under way."""

    metadataCid: str
    tokenId: int | None
    name: str | None = Field(description="null until its metadata is read")
    stage: Literal["fetching metadata", "fetching model", "building", "warming up"]
    bytes_fetched: int = Field(
        description="model bytes received so far (a remote store; the whole file once fetched)"
    )
    size_bytes: int | None = Field(description="the model's declared size (null until known)")
    elapsed_ms: float


class ModelListResponse(BaseModel):
    """``GET /api/models``."""

    success: Literal[True] = True
    cacheStatus: CacheStatus
    models: list[ModelDescription] = Field(description="in memory, least recently used first")
    loading: list[LoadingRecord] = Field(description="loads under way, oldest first")
    index: list[IndexRecord] = Field(description="every model ever loaded here")
    counters: CacheCounters


class CatalogVersionInfo(BaseModel):
    version: str
    metadataCid: str
    model_id: str
    labels: list[str] = Field(description="labels pointing at this version")
    loaded: bool = Field(description="in the session cache now")


class VersionsResponse(BaseModel):
    """``GET /api/models/{name}/versions``: the catalogue's versions of a name, oldest first."""

    success: Literal[True] = True
    name: str
    latest: str | None = Field(description="the newest version (what NAME@latest resolves to)")
    labels: dict[str, str] = Field(description="label -> version")
    versions: list[CatalogVersionInfo]


class UnloadResponse(BaseModel):
    """``DELETE /api/models/{model_id}``."""

    success: Literal[True] = True
    model_id: str
    message: str
    cacheStatus: CacheStatus


class FormatInfo(BaseModel):
    format: str
    description: str


class UploadInfo(BaseModel):
    endpoint: str
    content_types: list[str]


class FormatsResponse(BaseModel):
    """``GET /api/inference/formats``."""

    success: Literal[True] = True
    formats: list[FormatInfo]
    upload: UploadInfo
    preprocessing_kinds: list[str]
    postprocessing_kinds: list[str]
    options: dict[str, str]


class HealthResponse(BaseModel):
    """``GET /health``."""

    status: Literal["ok"]
    version: str
    uptime_s: float
    models_loaded: int
    cacheStatus: CacheStatus
    execution_provider: str
    store: str
    licensing: dict[str, Any] = Field(description="the license backend's own report")


class LiveResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    """``GET /health/ready``: 200 ``ready`` or ``degraded``; 503 ``unavailable`` (naming the
    dependencies that are down) or ``draining`` (the process is stopping)."""

    status: Literal["ready", "degraded", "unavailable", "draining"]
    models_loaded: int
    dependencies: dict[str, dict[str, Any]] | None = Field(
        None, description="each dependency's report (absent while draining)"
    )
    degraded: list[str] | None = Field(None, description="present when some are degraded")
    message: str | None = Field(None, description="present unless everything is ready")


# --- the OpenAPI document: error replies, headers, the operator's bearer ----------------------

OPERATOR_SCHEME = "operatorBearer"
"""The security scheme of the control plane: ``Authorization: Bearer <CIDSERVE_ADMIN_TOKEN>``."""

OPERATOR_SCHEME_SPEC: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "CIDSERVE_ADMIN_TOKEN (or the content of CIDSERVE_ADMIN_TOKEN_FILE). Without "
    "a configured token the control plane answers requests addressed to a loopback host only.",
}
OPERATOR_ONLY: dict[str, Any] = {"security": [{OPERATOR_SCHEME: []}]}
"""``openapi_extra`` of a control-plane route."""

# A licensee's signed request (docs/LICENSING.md): five headers sent together, declared as
# one requirement of five API-key schemes (OpenAPI has no scheme for a request signature).
SIGNATURE_HEADERS: dict[str, str] = {
    "X-Cidserve-Version": "cidserve-request-v2: the version of the canonical string",
    "X-Cidserve-Address": "the signer's address (0x + 40 hex)",
    "X-Cidserve-Timestamp": "unix seconds of the canonical string",
    "X-Cidserve-Nonce": "8-64 characters of [A-Za-z0-9_-], used once",
    "X-Cidserve-Signature": "EIP-191 signature of the canonical string, 0x + 130 hex",
}
SIGNATURE_SCHEMES: dict[str, dict[str, Any]] = {
    "signature" + header.removeprefix("X-Cidserve-"): {
        "type": "apiKey",
        "in": "header",
        "name": header,
        "description": f"{text} (a licensee's signed request; docs/LICENSING.md)",
    }
    for header, text in SIGNATURE_HEADERS.items()
}
_SIGNED: dict[str, list[str]] = {name: [] for name in SIGNATURE_SCHEMES}
SIGNED_OR_OPEN: dict[str, Any] = {"security": [_SIGNED, {}]}
"""``openapi_extra`` of the inference routes: signed for a licensed model, nothing for an open
one."""
OPERATOR_OR_SIGNED: dict[str, Any] = {"security": [{OPERATOR_SCHEME: []}, _SIGNED, {}]}
"""``openapi_extra`` of ``POST /api/models/load``: the operator, or a licensee's signed
request (see LICENSING.md), or anyone for an open model on a server without licensing."""

RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {
        "description": "seconds to wait before trying again (when the failure is transient)",
        "schema": {"type": "integer", "minimum": 0},
    }
}
WWW_AUTHENTICATE: dict[str, Any] = {
    "WWW-Authenticate": {
        "description": "on a control-plane refusal: the bearer scheme the operator token uses",
        "schema": {"type": "string"},
    }
}
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: the message names the field or the value",
    401: "Operator credentials, or a valid request signature, required",
    403: "The caller holds no valid license (or the token is not trusted)",
    404: "Unknown model, version, token or content",
    409: "The token names other content, or the content has another token",
    413: "Body, input or content over a configured bound (the message names it)",
    415: "Unsupported media type or content encoding",
    422: "The request (or the model's metadata) does not validate; the message names the field",
    429: "Over the per-caller rate limit (CIDSERVE_RATE_LIMIT_RPS)",
    502: "The content store returned content that failed verification, or an error",
    503: "Overloaded, draining, or a dependency (content store, chain, Redis) is unavailable",
    504: "The deadline passed (inference or content store)",
}


def error_responses(model: type[BaseModel], *codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: ``model`` for each status in ``codes``, with the
    ``Retry-After`` header on 429/503 and ``WWW-Authenticate`` on 401."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": model, "description": ERROR_DESCRIPTIONS[code]}
        if code in (429, 503):
            entry["headers"] = RETRY_AFTER
        elif code == 401:
            entry["headers"] = WWW_AUTHENTICATE
        out[code] = entry
    return out


def api_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Error replies of an ``/api`` route: ``{success: false, error, message, ...}``."""
    return error_responses(ErrorResponse, *codes)
