"""Service configuration: environment variables, validated once at start-up.

Every setting is ``CIDSERVE_<NAME>`` (pydantic-settings' ``env_prefix``; any case). A few also
accept a name of the original design (``PORT``, ``DATA_DIR``, ``MODEL_DIR``,
``MAX_MODELS_IN_MEMORY``, ``INFERENCE_TIMEOUT``, ``LOG_LEVEL``, ``AVALANCHE_RPC_URL``): those
fields, and only those, carry an explicit alias (:func:`_or_legacy`); the ``CIDSERVE_`` name wins
when both are set. ``Settings(field=value)`` takes python field names and wins over the
environment. A bad value stops start-up with :class:`SettingsError`, whose message names the
variable. The checks of single values live in :mod:`services.settings_validation`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from services import settings_validation as check
from services.settings_validation import is_evm_address

__all__ = [
    "PREFIX",
    "SECRET_FIELDS",
    "Settings",
    "SettingsError",
    "is_evm_address",
    "load_settings",
]

PREFIX = "CIDSERVE_"
# Values never echoed in an error message or a log line.
SECRET_FIELDS = frozenset({"private_key", "keystore_password", "redis_url"})


def _or_legacy(field: str, *legacy: str) -> AliasChoices:
    """``CIDSERVE_<FIELD>``, else the first of the legacy names that is set."""
    return AliasChoices(PREFIX + field.upper(), *legacy)


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


# Field types with their checks (services/settings_validation.py).
_IpfsUrl = Annotated[str | None, AfterValidator(check.ipfs_url)]
_Lower = BeforeValidator(check.lower)


class Settings(BaseSettings):
    """All settings of one service process. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, populate_by_name=True, extra="ignore", frozen=True
    )

    # Network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, validation_alias=_or_legacy("port", "PORT"))

    # Storage
    data_dir: Path = Field(Path("./data"), validation_alias=_or_legacy("data_dir", "DATA_DIR"))
    model_dir: Path | None = Field(
        None,
        validation_alias=_or_legacy("model_dir", "MODEL_DIR"),
        description="Where model files made on this host live (the demo's export); "
        "default <data_dir>/models.",
    )

    # IPFS (docs/IPFS.md): content comes from an IPFS node when one of the URLs is set
    ipfs_api_url: _IpfsUrl = Field(
        None,
        description="Kubo RPC API of the IPFS node, e.g. http://127.0.0.1:5001 (reads: "
        "block/get + dag/export, verified block by block; writes: add + pin).",
    )
    ipfs_gateway_url: _IpfsUrl = Field(
        None, description="HTTP path gateway (/ipfs/<cid>), used for reads when no API URL is set."
    )
    ipfs_connect_timeout_s: float = Field(2.0, gt=0, le=60)
    ipfs_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest the node may stay silent during a request (else 504).",
    )
    ipfs_find_timeout_s: Annotated[float, AfterValidator(check.find_timeout)] = Field(
        10.0,
        gt=0,
        le=3600,
        description="How long the node may look for a CID it does not have (else 404); "
        "less than CIDSERVE_IPFS_TIMEOUT_S.",
    )
    ipfs_fetch_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="Longest one file may take to fetch and verify (else 504).",
    )
    ipfs_file_stream: bool = Field(
        True,
        description="Read files of raw leaves with cat, checked leaf by leaf against their "
        "CIDs; false: always walk the blocks of a dag/export CAR stream (slower).",
    )
    ipfs_retries: int = Field(3, ge=0, le=20)
    ipfs_retry_backoff_s: float = Field(0.2, ge=0, le=60)
    ipfs_retry_after_s: int = Field(
        5, ge=1, le=3600, description="Retry-After of a 503 when the node cannot be reached."
    )
    blob_cache_dir: Path | None = Field(
        None, description="On-disk cache of verified IPFS content; default <data_dir>/blob-cache."
    )
    blob_cache_max_bytes: int = Field(10 << 30, ge=1 << 20)

    # Session cache
    max_models_in_memory: int = Field(
        3,
        ge=1,
        le=1000,
        validation_alias=_or_legacy("max_models_in_memory", "MAX_MODELS_IN_MEMORY"),
    )
    max_cache_bytes: int | None = Field(
        None,
        gt=0,
        description="Optional bound on the summed model file sizes in the session cache.",
    )
    reload_evicted: bool = Field(
        True,
        description="Reload a model that was loaded before and evicted when a request names it.",
    )

    # Execution
    execution_provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: CUDA when onnxruntime offers it, else CPU. cuda: ask for CUDA and "
        "fall back to CPU with a warning unless require_gpu is set.",
    )
    require_gpu: bool = False
    cuda_device_id: int = Field(0, ge=0)
    intra_op_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime decide "
        "(one per core). Default 1, with one concurrent run per core (docs/PERFORMANCE.md).",
    )
    inference_workers: int = Field(
        default_factory=lambda: min(os.cpu_count() or 1, 256),
        ge=1,
        le=256,
        description="Concurrent session.run calls (threads); default: one per core.",
    )
    optimized_model_cache: bool = Field(
        True,
        description="Keep ONNX Runtime's optimized graph of each model in <model_dir>/optimized "
        "and start later CPU sessions of the model from it.",
    )
    intra_op_spinning: bool = Field(
        False,
        description="ONNX Runtime's intra-op threads spin while waiting for work "
        "(session.intra_op.allow_spinning).",
    )
    batch_enabled: bool = Field(
        True,
        description="Dynamic batching: concurrent requests for a model with a dynamic batch "
        "dimension share one session.run.",
    )
    batch_max_size: int = Field(
        8,
        ge=1,
        le=1024,
        description="Most rows (requests of one row each) in one batched session.run.",
    )
    batch_max_delay_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a batch that is not full waits for more requests; 0: it runs "
        "as soon as an inference slot is free (an idle model adds no latency).",
    )
    preprocess_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    inference_timeout_ms: int = Field(
        30_000,
        ge=1,
        le=3_600_000,
        validation_alias=_or_legacy(
            "inference_timeout_ms", "CIDSERVE_INFERENCE_TIMEOUT", "INFERENCE_TIMEOUT"
        ),
    )

    # Bounds on untrusted input
    max_body_bytes: int = Field(32 << 20, ge=1024)
    max_base64_chars: int = Field(28 << 20, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_tensor_elements: int = Field(50_000_000, ge=1)
    max_model_bytes: int = Field(4 << 30, ge=1)
    max_metadata_bytes: int = Field(1 << 20, ge=256)
    max_labels_bytes: int = Field(8 << 20, ge=16)
    max_top_k: int = Field(1000, ge=1)

    # Shared state (docs/REDIS.md): Redis when a URL is set, else in-process
    redis_url: Annotated[str | None, AfterValidator(check.redis_url)] = Field(
        None,
        description="redis://, rediss:// or unix:// URL; every replica on the same Redis "
        "shares the prediction cache, nonces, license checks and the model index.",
    )
    redis_timeout_ms: float = Field(
        5.0,
        ge=0.5,
        le=10_000,
        description="Bound on every Redis call (pool wait, connect, round trip).",
    )
    redis_prefix: str = Field(
        "cidserve:",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:{}\-]+$",
        description="Prefix of every key cidserve writes (one per deployment sharing a Redis).",
    )
    redis_backoff_ms: float = Field(
        1000.0,
        ge=10,
        le=600_000,
        description="After Redis fails, how long to serve without it before trying again.",
    )
    redis_max_connections: int = Field(64, ge=1, le=10_000)
    prediction_cache: bool = Field(
        True, description="Cache replies (per model opt-out: cache_predictions in metadata.json)."
    )
    prediction_cache_ttl_s: float = Field(3600.0, gt=0, le=30 * 86_400)
    prediction_cache_max_entries: int = Field(10_000, ge=1, le=100_000_000)
    prediction_cache_max_bytes: int = Field(64 << 20, ge=1024)
    index_history: int = Field(
        1000, ge=1, le=1_000_000, description="Load events kept in the shared model index (Redis)."
    )

    # On-chain licensing (docs/LICENSING.md): enabled when the RPC URL and the contract are set
    chain_rpc_url: Annotated[str | None, AfterValidator(check.rpc_url)] = Field(
        None,
        validation_alias=_or_legacy("chain_rpc_url", "AVALANCHE_RPC_URL"),
        description="JSON-RPC endpoint (http/https) of the EVM chain holding the licenses.",
    )
    license_contract: Annotated[str | None, AfterValidator(check.license_contract)] = Field(
        None, description="Address of the ModelLicense contract (0x + 40 hex)."
    )
    chain_id: int | None = Field(
        None,
        ge=1,
        description="Expected chain id; start-up refuses an RPC endpoint on another chain.",
    )
    chain_timeout_s: float = Field(2.0, gt=0, le=60, description="Per RPC call.")
    signature_skew_s: int = Field(
        300,
        ge=1,
        le=3600,
        description="Largest difference between a signed request's timestamp and the clock.",
    )
    license_cache_ttl_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="How long a valid license check is cached (never past the license's "
        "expiry); 0 disables the cache.",
    )
    license_negative_cache_ttl_s: float = Field(
        2.0, ge=0, le=3600, description="How long a 'no license' answer is cached."
    )
    license_fail_open: bool = Field(
        False,
        description="Chain unreachable: serve licensed models anyway (logged) instead of 503.",
    )
    private_key: Annotated[SecretStr | None, AfterValidator(check.private_key)] = Field(
        None, description="Signing key of the CLI (0x + 64 hex). Never from argv, never logged."
    )
    keystore: Annotated[Path | None, AfterValidator(check.keystore_file)] = Field(
        None, description="Encrypted JSON keystore of the CLI's key (CIDSERVE_KEYSTORE_PASSWORD)."
    )
    keystore_password: SecretStr | None = None

    # Logging
    log_level: Annotated[Literal["debug", "info", "warning", "error"], _Lower] = Field(
        "info", validation_alias=_or_legacy("log_level", "LOG_LEVEL")
    )
    log_format: Annotated[Literal["auto", "json", "text"], _Lower] = Field(
        "auto",
        description="json: one JSON object per line; text: for a terminal; auto: text when "
        "stderr is a terminal, json otherwise.",
    )

    # Processes
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes of `cidserve serve` (--workers); metrics are aggregated "
        "across them.",
    )

    @property
    def licensing_enabled(self) -> bool:
        """True when an RPC endpoint and a license contract are configured."""
        return self.chain_rpc_url is not None and self.license_contract is not None

    @property
    def store_dir(self) -> Path:
        """The embedded content store's directory."""
        return self.data_dir / "store"

    @property
    def models_dir(self) -> Path:
        return self.model_dir or (self.data_dir / "models")

    @property
    def blob_cache_path(self) -> Path:
        """The directory of the IPFS store's on-disk blob cache."""
        return self.blob_cache_dir or (self.data_dir / "blob-cache")

    @property
    def ipfs_enabled(self) -> bool:
        """True when content comes from an IPFS node (an API or a gateway URL is set)."""
        return self.ipfs_api_url is not None or self.ipfs_gateway_url is not None


def _env_names(field: str) -> tuple[str, ...]:
    """The environment variables that set ``field``, the one that wins first."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(c) for c in alias.choices)
    return (PREFIX + field.upper(),)


def _field_of(loc: str) -> str | None:
    """The field an error location names: its python name or one of its variables."""
    for name in Settings.model_fields:
        if loc == name or loc in _env_names(name):
            return name
    return None


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (and ``overrides``, by field name).

    Raises :class:`SettingsError` naming the bad variable(s).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else ""
            field = _field_of(loc)
            names = " / ".join(_env_names(field)) if field else PREFIX + loc.upper()
            bad = "<redacted>" if field in SECRET_FIELDS else err.get("input")
            problems.append(f"{names}={bad!r}: {err['msg']}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None
