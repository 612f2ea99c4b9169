"""Service configuration: environment variables, validated once at start-up.

Every setting is ``CIDSERVE_<NAME>``; the original design's names (``PORT``, ``MODEL_DIR``,
``DATA_DIR``, ``MAX_MODELS_IN_MEMORY``, ``INFERENCE_TIMEOUT``, ``LOG_LEVEL``) are accepted too.
A bad value stops start-up with :class:`SettingsError`, whose message names the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "CIDSERVE_"


def _env(name: str, *legacy: str) -> AliasChoices:
    return AliasChoices(PREFIX + name.upper(), *legacy)


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
        0,
        ge=0,
        le=256,
        validation_alias=_env("intra_op_threads"),
        description="ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime decide.",
    )
    inference_workers: int = Field(
        1,
        ge=1,
        le=256,
        validation_alias=_env("inference_workers"),
        description="Concurrent session.run calls (threads).",
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

    # Logging
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("log_level", "LOG_LEVEL")
    )

    @model_validator(mode="before")
    @classmethod
    def _lower_log_level(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in ("log_level", "CIDSERVE_LOG_LEVEL", "LOG_LEVEL"):
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
            bad = err.get("input")
            problems.append(f"{_env_names(field)}={bad!r}: {err['msg']}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None
