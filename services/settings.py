"""Service configuration: environment variables, validated once at start-up.

Every setting is ``CIDSERVE_<NAME>`` (pydantic-settings' ``env_prefix``; any case). A few also
accept a name of the original design (``PORT``, ``DATA_DIR``, ``MODEL_DIR``,
``MAX_MODELS_IN_MEMORY``, ``INFERENCE_TIMEOUT``, ``LOG_LEVEL``, ``AVALANCHE_RPC_URL``,
``CONTRACT_ADDRESS``): those
fields, and only those, carry an explicit alias (:func:`_or_legacy`); the ``CIDSERVE_`` name wins
when both are set. ``Settings(field=value)`` takes python field names and wins over the
environment. A bad value stops start-up with :class:`SettingsError`, whose message names the
variable. The checks of single values live in :mod:`services.settings_validation`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from registry.redact import redact_tree
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
SECRET_FIELDS = frozenset({"private_key", "keystore_password", "redis_url", "admin_token"})


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

    # Control plane (docs/OPERATIONS.md, "Control plane")
    admin_token: Annotated[SecretStr | None, AfterValidator(check.admin_token)] = Field(
        None,
        description="Bearer token of the control plane (load, unload, /v2/repository): "
        "requests send 'Authorization: Bearer <token>'. Never logged.",
    )
    admin_token_file: Annotated[Path | None, AfterValidator(check.admin_token_file)] = Field(
        None,
        description="A file holding the admin token (a mounted secret; surrounding whitespace "
        "is stripped); instead of CIDSERVE_ADMIN_TOKEN, not with it.",
    )
    allow_open_control_plane: bool = Field(
        False,
        description="Start without an admin token on a non-loopback address: anyone who "
        "reaches the port may load and unload models (logged as a warning).",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode, BeforeValidator(check.origin_list)] = Field(
        (),
        description="Comma-separated origins (scheme://host[:port], or *) allowed to call the "
        "API from a browser (CORS); empty: no CORS headers at all.",
    )

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
    max_concurrent_fetches: int = Field(
        4,
        ge=1,
        le=256,
        description="Files fetched from IPFS at once; one more is refused with 503 + "
        "Retry-After (concurrent requests for one CID share one fetch).",
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
        description="Optional bound on the summed measured memory of the models in the "
        "session cache (what each session took to build and warm up, not its file size).",
    )
    max_concurrent_loads: int = Field(
        2,
        ge=1,
        le=64,
        description="Model loads under way at once (threads of the load executor); one more "
        "is refused with 503 + Retry-After (requests joining a load under way do not count).",
    )
    warmup_timeout_ms: int = Field(
        5_000,
        ge=1,
        le=600_000,
        description="Deadline of a model's warm-up run; past it the run is terminated and the "
        "load fails with 422.",
    )
    session_probe: bool = Field(
        True,
        description="Build and warm up every new model first in a child process capped at "
        "CIDSERVE_MAX_SESSION_BYTES (docs/OPERATIONS.md); false: no trial, no memory budget.",
    )
    max_session_bytes: int | None = Field(
        None,
        gt=0,
        description="Memory one model's session may take to build and warm up; more is "
        "refused with 422. Default: half the container's memory limit (cgroup), else half "
        "the machine's RAM.",
    )
    session_build_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Longest the trial build of a model may take (on top of the warm-up "
        "deadline); longer is refused with 422.",
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
    intra_op_threads_alone: int = Field(
        0,
        ge=0,
        le=256,
        description="Intra-op threads of a run that is alone (nothing else in flight or queued "
        "for inference): a CPU model keeps a second session with this many threads for such "
        "runs; 0: one per usable core. Not above intra_op_threads: no second session "
        "(docs/PERFORMANCE.md).",
    )
    deterministic: bool = Field(
        False,
        description="Identical outputs for identical inputs: ONNX Runtime's deterministic "
        "compute, sequential execution, a fixed intra-op thread count (1 when "
        "intra_op_threads is 0) and no batching across requests (docs/PERFORMANCE.md).",
    )
    inference_workers: int = Field(
        default_factory=lambda: min(2 * (os.cpu_count() or 1), 256),
        ge=1,
        le=256,
        description="Requests run at the same time (threads that each decode, preprocess, "
        "run and postprocess one request); default: two per core (a worker waiting for the "
        "GIL leaves its core to another's run; docs/PERFORMANCE.md).",
    )
    optimized_model_cache: bool = Field(
        True,
        description="Keep ONNX Runtime's optimized graph of each model in <model_dir>/optimized "
        "and start later CPU sessions of the model from it.",
    )
    intra_op_spinning: bool = Field(
        False,
        description="The shared sessions' intra-op threads spin while waiting for work "
        "(session.intra_op.allow_spinning); a model's alone session always spins.",
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
    batch_trusted_cids: Annotated[frozenset[str], NoDecode, BeforeValidator(check.cid_list)] = (
        Field(
            frozenset(),
            description="Comma-separated metadata CIDs of the models trusted to batch rows of "
            "different requests into one run (a model sees every row of its run and could "
            "hand one caller's result to another); other models run each request alone.",
        )
    )
    preprocess_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="Threads for work before a request reaches an inference worker: bodies "
        "over 64 KiB, payloads decoded for a prediction-cache lookup, feeds of a model that "
        "batches across requests.",
    )
    inference_timeout_ms: int = Field(
        30_000,
        ge=1,
        le=3_600_000,
        validation_alias=_or_legacy(
            "inference_timeout_ms", "CIDSERVE_INFERENCE_TIMEOUT", "INFERENCE_TIMEOUT"
        ),
    )

    # Overload (docs/OPERATIONS.md, "Overload and shutdown")
    max_queue_per_model: int = Field(
        128,
        ge=0,
        le=1_000_000,
        description="Requests of one model waiting or running at once; past it 503 with "
        "Retry-After. 0: no bound.",
    )
    max_queue_delay_ms: float = Field(
        10_000.0,
        ge=0,
        le=3_600_000,
        description="Largest estimated wait (the model's queue times its recent time between "
        "completions) a new request may join; past it 503 with Retry-After. 0: no bound.",
    )
    max_jobs: int = Field(
        64,
        ge=1,
        le=1_000_000,
        description="Async jobs one replica holds queued or running at once; past it 503 with "
        "Retry-After.",
    )
    job_ttl_s: float = Field(
        3600.0,
        gt=0,
        le=30 * 86_400,
        description="How long an async job's record (and its result) is kept.",
    )
    rate_limit_rps: float = Field(
        0.0,
        ge=0,
        le=1_000_000,
        description="Inference requests per second per caller (signer address, else operator "
        "token, else client address), shared by the replicas on one Redis; past it 429 with "
        "Retry-After. 0: no limit.",
    )
    rate_limit_burst: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Requests a caller may send at once above the rate; 0: one second's worth.",
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long requests already received may take to finish before "
        "they are cancelled and the process exits.",
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description="On SIGTERM, how long the server keeps accepting connections with readiness "
        "off (503 draining) before it closes its socket; 0 under Kubernetes, whose preStop "
        "hook waits instead.",
    )

    # Bounds on untrusted input
    max_body_bytes: int = Field(32 << 20, ge=1024)
    max_base64_chars: int = Field(28 << 20, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_image_bytes: int = Field(
        160 << 20,
        ge=1 << 20,
        description="Memory one image may take decoded and converted, checked from its header "
        "before any pixel is decoded: 8-bit RGB takes 4 bytes a pixel, 8-bit grey 1, 16-bit "
        "grey 3 (2 decoded + 1 converted), RGBA and palette images 8 and 5. The default fits "
        "a 40 MP RGB image.",
    )
    max_tensor_elements: int = Field(50_000_000, ge=1)
    max_model_bytes: int = Field(4 << 30, ge=1)
    max_metadata_bytes: int = Field(1 << 20, ge=256)
    max_labels_bytes: int = Field(8 << 20, ge=16)
    max_top_k: int = Field(1000, ge=1)
    url_max_bytes: int = Field(
        20 << 20,
        ge=1024,
        le=1 << 30,
        description="Most bytes a 'url' input may fetch (streamed and cut; 413 past it).",
    )
    url_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Bound on the whole fetch of a 'url' input, redirects included (504 past it).",
    )
    url_allow: Annotated[tuple[str, ...], NoDecode, BeforeValidator(check.url_allow_list)] = Field(
        (),
        description="Comma-separated host[:port] entries a 'url' input may reach even when they "
        "resolve to a loopback, private, link-local or otherwise non-public address.",
    )

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
    redis_replay_timeout_ms: float = Field(
        250.0,
        ge=0.5,
        le=10_000,
        description="Bound on recording a signed request's nonce. The replay store fails "
        "closed (503), so it waits longer than the cache calls, which bypass Redis instead.",
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
        None,
        validation_alias=_or_legacy("license_contract", "CONTRACT_ADDRESS"),
        description="Address of the ModelLicense contract (0x + 40 hex).",
    )
    trusted_minters: Annotated[
        frozenset[str],
        NoDecode,
        BeforeValidator(check.address_list),
        AfterValidator(check.trusted_minters),
    ] = Field(
        frozenset(),
        description="Comma-separated addresses whose tokens are trusted: content whose token "
        "was minted by any other address is refused at load (403). Empty: any minter.",
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
    tracing: Annotated[Literal["auto", "on", "off"], _Lower] = Field(
        "auto",
        description="OpenTelemetry tracing (the otel extra): auto: on when "
        "OTEL_EXPORTER_OTLP_ENDPOINT is set; on: export over OTLP/HTTP to the OTEL_EXPORTER_OTLP_* "
        "endpoint (default http://localhost:4318); off: no spans.",
    )

    # Processes
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes of `cidserve serve` (--workers); metrics are aggregated "
        "across them.",
    )

    _admin_secret: SecretStr | None = PrivateAttr(None)

    def model_post_init(self, context: Any, /) -> None:
        """Read the admin token file once (validated already: readable, not empty)."""
        secret = self.admin_token
        if self.admin_token_file is not None:
            secret = SecretStr(check.read_token_file(self.admin_token_file))
        self._admin_secret = secret

    @property
    def admin_secret(self) -> SecretStr | None:
        """The control plane's token (CIDSERVE_ADMIN_TOKEN or the file's); None: open."""
        return self._admin_secret

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
            bad = "<redacted>" if field in SECRET_FIELDS else redact_tree(err.get("input"))
            problems.append(f"{names}={bad!r}: {err['msg']}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None
