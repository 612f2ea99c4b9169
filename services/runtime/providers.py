"""Execution providers: which ONNX Runtime providers a session asks for (CUDA, else CPU)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.runtime.errors import ProviderUnavailable

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

ProviderSpec = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    providers: list[ProviderSpec]
    fallback_reason: str | None = None


def select_providers(
    preference: str,
    available: list[str],
    *,
    device_id: int = 0,
    require_gpu: bool = False,
) -> ProviderChoice:
    """Which execution providers to ask ONNX Runtime for, in priority order.

    ``auto`` takes CUDA when this onnxruntime build offers it (the ``onnxruntime-gpu``
    package), CPU otherwise; ``cuda`` asks for CUDA and falls back to CPU with a reason
    (or raises :class:`ProviderUnavailable` when ``require_gpu``); ``cpu`` is CPU only.
    """
    cuda = (CUDA, {"device_id": device_id})
    has_cuda = CUDA in available
    if preference == "cpu":
        return ProviderChoice([CPU])
    if has_cuda:
        return ProviderChoice([cuda, CPU])
    if preference == "cuda" or require_gpu:
        reason = (
            f"{CUDA} is not available in this onnxruntime build "
            f"(available: {', '.join(available)}); install the gpu extra on a CUDA host"
        )
        if require_gpu:
            raise ProviderUnavailable(reason)
        return ProviderChoice([CPU], fallback_reason=reason)
    return ProviderChoice([CPU])
