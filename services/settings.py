"""Service configuration: environment variables, validated once at start-up.

Every setting is ``CIDSERVE_<NAME>``; the original design's names (``PORT``, ``MODEL_DIR``,
``DATA_DIR``, ``MAX_MODELS_IN_MEMORY``, ``INFERENCE_TIMEOUT``, ``LOG_LEVEL``) are accepted too.
A bad value stops start-up with :class:`SettingsError`, whose message names the variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "CIDSERVE_"


def _env(name: str, *legacy: str) -> AliasChoices:
    return AliasChoices(PREFIX + name.upper(), *legacy)


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
# Values never echoed in an error message or a log line.
SECRET_FIELDS = frozenset({"private_key", "keystore_password", "redis_url"})


def is_evm_address(value: str) -> bool:
    """``0x`` + 40 hex digits; mixed case must be a valid EIP-55 checksum."""
    if not _ADDRESS.fullmatch(value):
        return False
    body = value[2:]
    if body == body.lower() or body == body.upper():
        return True
    from eth_utils import is_checksum_address

    return bool(is_checksum_address(value))


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


class Settings(BaseSettings):
    """All settings of one service process. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, populate_by_name=True, extra="ignore", frozen=True
    )

    # Network
    host: str = Field("127.0.0.1", validation_alias=_env("host"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=_env("port", "PORT"))

    # Storage
    data_dir: Path = Field(Path("./data"), validation_alias=_env("data_dir", "DATA_DIR"))
    model_dir: Path | None = Field(
        None,
        validation_alias=_env("model_dir", "MODEL_DIR"),
        description="Where model files made on this host live (the demo's export); "
        "default <data_dir>/models.",
    )

    # IPFS (docs/IPFS.md): content comes from an IPFS node when one of the URLs is set
    ipfs_api_url: str | None = Field(
        None,
        validation_alias=_env("ipfs_api_url"),
        description="Kubo RPC API of the IPFS node, e.g. http://127.0.0.1:5001 (reads: "
        "block/get + dag/export, verified block by block; writes: add + pin).",
    )
    ipfs_gateway_url: str | None = Field(
        None,
        validation_alias=_env("ipfs_gateway_url"),
        description="HTTP path gateway (/ipfs/<cid>), used for reads when no API URL is set.",
    )
    ipfs_connect_timeout_s: float = Field(
        2.0, gt=0, le=60, validation_alias=_env("ipfs_connect_timeout_s")
    )
    ipfs_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        validation_alias=_env("ipfs_timeout_s"),
        description="Longest the node may stay silent during a request (else 504).",
    )
    ipfs_find_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        validation_alias=_env("ipfs_find_timeout_s"),
        description="How long the node may look for a CID it does not have (else 404); "
        "less than CIDSERVE_IPFS_TIMEOUT_S.",
    )
    ipfs_fetch_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        validation_alias=_env("ipfs_fetch_timeout_s"),
        description="Longest one file may take to fetch and verify (else 504).",
    )
    ipfs_file_stream: bool = Field(
        True,
        validation_alias=_env("ipfs_file_stream"),
        description="Read files of raw leaves with cat, checked leaf by leaf against their "
        "CIDs; false: always walk the blocks of a dag/export CAR stream (slower).",
    )
    ipfs_retries: int = Field(3, ge=0, le=20, validation_alias=_env("ipfs_retries"))
    ipfs_retry_backoff_s: float = Field(
        0.2, ge=0, le=60, validation_alias=_env("ipfs_retry_backoff_s")
    )
    ipfs_retry_after_s: int = Field(
        5,
        ge=1,
        le=3600,
        validation_alias=_env("ipfs_retry_after_s"),
        description="Retry-After of a 503 when the node cannot be reached.",
    )
    blob_cache_dir: Path | None = Field(
        None,
        validation_alias=_env("blob_cache_dir"),
        description="On-disk cache of verified IPFS content; default <data_dir>/blob-cache.",
    )
    blob_cache_max_bytes: int = Field(
        10 << 30, ge=1 << 20, validation_alias=_env("blob_cache_max_bytes")
    )

    @field_validator("ipfs_api_url", "ipfs_gateway_url")
    @classmethod
    def _check_ipfs_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise ValueError("has an invalid port") from None
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        return v.strip().rstrip("/")

    @field_validator("ipfs_find_timeout_s")
    @classmethod
    def _check_find_timeout(cls, v: float, info: ValidationInfo) -> float:
        read = info.data.get("ipfs_timeout_s")
        if read is not None and v >= read:
            raise ValueError(f"must be less than CIDSERVE_IPFS_TIMEOUT_S ({read:g})")
        return v

    # Session cache
    max_models_in_memory: int = Field(
        3, ge=1, le=1000, validation_alias=_env("max_models_in_memory", "MAX_MODELS_IN_MEMORY")
    )
    max_cache_bytes: int | None = Field(
        None,
        gt=0,
        validation_alias=_env("max_cache_bytes"),
        description="Optional bound on the summed model file sizes in the session cache.",
    )
    reload_evicted: bool = Field(
        True,
        validation_alias=_env("reload_evicted"),
        description="Reload a model that was loaded before and evicted when a request names it.",
    )

    # Execution
    execution_provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        validation_alias=_env("execution_provider"),
        description="auto: CUDA when onnxruntime offers it, else CPU. cuda: ask for CUDA and "
        "fall back to CPU with a warning unless require_gpu is set.",
    )
    require_gpu: bool = Field(False, validation_alias=_env("require_gpu"))
    cuda_device_id: int = Field(0, ge=0, validation_alias=_env("cuda_device_id"))
    intra_op_threads: int = Field(
        1,
        ge=0,
        le=256,
        validation_alias=_env("intra_op_threads"),
        description="ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime decide "
        "(one per core). Default 1, with one concurrent run per core (docs/PERFORMANCE.md).",
    )
    inference_workers: int = Field(
        default_factory=lambda: min(os.cpu_count() or 1, 256),
        ge=1,
        le=256,
        validation_alias=_env("inference_workers"),
        description="Concurrent session.run calls (threads); default: one per core.",
    )
    optimized_model_cache: bool = Field(
        True,
        validation_alias=_env("optimized_model_cache"),
        description="Keep ONNX Runtime's optimized graph of each model in <model_dir>/optimized "
        "and start later CPU sessions of the model from it.",
    )
    intra_op_spinning: bool = Field(
        False,
        validation_alias=_env("intra_op_spinning"),
        description="ONNX Runtime's intra-op threads spin while waiting for work "
        "(session.intra_op.allow_spinning).",
    )
    batch_enabled: bool = Field(
        True,
        validation_alias=_env("batch_enabled"),
        description="Dynamic batching: concurrent requests for a model with a dynamic batch "
        "dimension share one session.run.",
    )
    batch_max_size: int = Field(
        8,
        ge=1,
        le=1024,
        validation_alias=_env("batch_max_size"),
        description="Most rows (requests of one row each) in one batched session.run.",
    )
    batch_max_delay_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        validation_alias=_env("batch_max_delay_ms"),
        description="How long a batch that is not full waits for more requests; 0: it runs "
        "as soon as an inference slot is free (an idle model adds no latency).",
    )
    preprocess_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        validation_alias=_env("preprocess_workers"),
    )
    inference_timeout_ms: int = Field(
        30_000,
        ge=1,
        le=3_600_000,
        validation_alias=_env(
            "inference_timeout_ms", "CIDSERVE_INFERENCE_TIMEOUT", "INFERENCE_TIMEOUT"
        ),
    )

    # Bounds on untrusted input
    max_body_bytes: int = Field(32 << 20, ge=1024, validation_alias=_env("max_body_bytes"))
    max_base64_chars: int = Field(28 << 20, ge=1024, validation_alias=_env("max_base64_chars"))
    max_image_pixels: int = Field(40_000_000, ge=1, validation_alias=_env("max_image_pixels"))
    max_tensor_elements: int = Field(50_000_000, ge=1, validation_alias=_env("max_tensor_elements"))
    max_model_bytes: int = Field(4 << 30, ge=1, validation_alias=_env("max_model_bytes"))
    max_metadata_bytes: int = Field(1 << 20, ge=256, validation_alias=_env("max_metadata_bytes"))
    max_labels_bytes: int = Field(8 << 20, ge=16, validation_alias=_env("max_labels_bytes"))
    max_top_k: int = Field(1000, ge=1, validation_alias=_env("max_top_k"))

    # Shared state (docs/REDIS.md): Redis when a URL is set, else in-process
    redis_url: str | None = Field(
        None,
        validation_alias=_env("redis_url"),
        description="redis://, rediss:// or unix:// URL; every replica on the same Redis "
        "shares the prediction cache, nonces, license checks and the model index.",
    )
    redis_timeout_ms: float = Field(
        5.0,
        ge=0.5,
        le=10_000,
        validation_alias=_env("redis_timeout_ms"),
        description="Bound on every Redis call (pool wait, connect, round trip).",
    )
    redis_prefix: str = Field(
        "cidserve:",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:{}\-]+$",
        validation_alias=_env("redis_prefix"),
        description="Prefix of every key cidserve writes (one per deployment sharing a Redis).",
    )
    redis_backoff_ms: float = Field(
        1000.0,
        ge=10,
        le=600_000,
        validation_alias=_env("redis_backoff_ms"),
        description="After Redis fails, how long to serve without it before trying again.",
    )
    redis_max_connections: int = Field(
        64, ge=1, le=10_000, validation_alias=_env("redis_max_connections")
    )
    prediction_cache: bool = Field(
        True,
        validation_alias=_env("prediction_cache"),
        description="Cache replies (per model opt-out: cache_predictions in metadata.json).",
    )
    prediction_cache_ttl_s: float = Field(
        3600.0, gt=0, le=30 * 86_400, validation_alias=_env("prediction_cache_ttl_s")
    )
    prediction_cache_max_entries: int = Field(
        10_000, ge=1, le=100_000_000, validation_alias=_env("prediction_cache_max_entries")
    )
    prediction_cache_max_bytes: int = Field(
        64 << 20, ge=1024, validation_alias=_env("prediction_cache_max_bytes")
    )
    index_history: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        validation_alias=_env("index_history"),
        description="Load events kept in the shared model index (Redis).",
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = urlsplit(v.strip())
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("needs a host, e.g. redis://127.0.0.1:6379/0")
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise ValueError("has an invalid port") from None
        return v.strip()

    # On-chain licensing (docs/LICENSING.md): enabled when the RPC URL and the contract are set
    chain_rpc_url: str | None = Field(
        None,
        validation_alias=_env("chain_rpc_url", "AVALANCHE_RPC_URL"),
        description="JSON-RPC endpoint (http/https) of the EVM chain holding the licenses.",
    )
    license_contract: str | None = Field(
        None,
        validation_alias=_env("license_contract"),
        description="Address of the ModelLicense contract (0x + 40 hex).",
    )
    chain_id: int | None = Field(
        None,
        ge=1,
        validation_alias=_env("chain_id"),
        description="Expected chain id; start-up refuses an RPC endpoint on another chain.",
    )
    chain_timeout_s: float = Field(
        2.0, gt=0, le=60, validation_alias=_env("chain_timeout_s"), description="Per RPC call."
    )
    signature_skew_s: int = Field(
        300,
        ge=1,
        le=3600,
        validation_alias=_env("signature_skew_s"),
        description="Largest difference between a signed request's timestamp and the clock.",
    )
    license_cache_ttl_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        validation_alias=_env("license_cache_ttl_s"),
        description="How long a valid license check is cached (never past the license's "
        "expiry); 0 disables the cache.",
    )
    license_negative_cache_ttl_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        validation_alias=_env("license_negative_cache_ttl_s"),
        description="How long a 'no license' answer is cached.",
    )
    license_fail_open: bool = Field(
        False,
        validation_alias=_env("license_fail_open"),
        description="Chain unreachable: serve licensed models anyway (logged) instead of 503.",
    )
    private_key: SecretStr | None = Field(
        None,
        validation_alias=_env("private_key"),
        description="Signing key of the CLI (0x + 64 hex). Never from argv, never logged.",
    )
    keystore: Path | None = Field(
        None,
        validation_alias=_env("keystore"),
        description="Encrypted JSON keystore of the CLI's key (CIDSERVE_KEYSTORE_PASSWORD).",
    )
    keystore_password: SecretStr | None = Field(None, validation_alias=_env("keystore_password"))

    @field_validator("chain_rpc_url")
    @classmethod
    def _check_rpc_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v.strip()

    @field_validator("license_contract")
    @classmethod
    def _check_contract(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not is_evm_address(v):
            raise ValueError("must be an address: 0x followed by 40 hex digits (EIP-55 case)")
        if info.data.get("chain_rpc_url") is None:
            raise ValueError("needs CIDSERVE_CHAIN_RPC_URL (or AVALANCHE_RPC_URL) as well")
        return v

    @field_validator("private_key")
    @classmethod
    def _check_private_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        raw = v.get_secret_value().strip()
        body = raw[2:] if raw[:2] in ("0x", "0X") else raw
        if len(body) != 64 or any(c not in "0123456789abcdefABCDEF" for c in body):
            raise ValueError("must be 32 bytes as hex (64 hex digits, optional 0x)")
        return SecretStr("0x" + body.lower())

    @field_validator("keystore")
    @classmethod
    def _check_keystore(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError("no such keystore file")
        return v

    @property
    def licensing_enabled(self) -> bool:
        """True when an RPC endpoint and a license contract are configured."""
        return self.chain_rpc_url is not None and self.license_contract is not None

    # Logging
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("log_level", "LOG_LEVEL")
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        validation_alias=_env("log_format"),
        description="json: one JSON object per line; text: for a terminal; auto: text when "
        "stderr is a terminal, json otherwise.",
    )

    # Processes
    workers: int = Field(
        1,
        ge=1,
        le=64,
        validation_alias=_env("workers"),
        description="Worker processes of `cidserve serve` (--workers); metrics are aggregated "
        "across them.",
    )

    @model_validator(mode="before")
    @classmethod
    def _lower_log_level(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in (
                "log_level",
                "CIDSERVE_LOG_LEVEL",
                "LOG_LEVEL",
                "log_format",
                "CIDSERVE_LOG_FORMAT",
            ):
                if isinstance(data.get(key), str):
                    data[key] = data[key].lower()
        return data

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


def _env_names(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return " / ".join(str(c) for c in alias.choices)
    return PREFIX + field.upper()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (and ``overrides``, by field name).

    Raises :class:`SettingsError` naming the bad variable(s).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"][0] if err["loc"] else ""
            field = str(loc)
            for name, info in Settings.model_fields.items():
                alias = info.validation_alias
                if field == name or (isinstance(alias, AliasChoices) and field in alias.choices):
                    field = name
                    break
            bad = "<redacted>" if field in SECRET_FIELDS else err.get("input")
            problems.append(f"{_env_names(field)}={bad!r}: {err['msg']}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None
