"""Session creation and the checks of a new session against the model's metadata.

Blocking: call from a worker thread. A CPU session starts from the optimized graph cached on
disk when there is one (:mod:`services.runtime.optimized_cache`). :func:`warm_up` (from
:mod:`services.runtime.warmup`) runs the first inference under a deadline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnxruntime as ort

from registry.metadata import ModelMetadata
from services.runtime.errors import ProviderUnavailable
from services.runtime.occupancy import alone_threads
from services.runtime.optimized_cache import OptimizedGraphCache
from services.runtime.options import SessionConfig, session_options
from services.runtime.providers import CPU, CUDA, select_providers
from services.runtime.warmup import warm_up, warmup_feeds

__all__ = [
    "check_signature",
    "create_alone_session",
    "create_session",
    "warm_up",
    "warmup_feeds",
]


def create_session(
    path: Path, config: SessionConfig, *, sha256: str | None = None
) -> tuple[ort.InferenceSession, str, str | None]:
    """Create a session from a model file (blocking: call from a worker thread).

    With ``config.optimized_cache_dir`` and the file's ``sha256``, a CPU session starts from
    the optimized graph cached on disk (and caches it on the first load).
    Returns the session, the provider that actually runs it, and the CPU-fallback reason if any.
    """
    choice = select_providers(
        config.execution_provider,
        ort.get_available_providers(),
        device_id=config.cuda_device_id,
        require_gpu=config.require_gpu,
    )
    if config.optimized_cache_dir is not None and sha256 and choice.providers == [CPU]:
        cache = OptimizedGraphCache(config.optimized_cache_dir)
        session = cache.session(path, sha256, config, choice.providers)
    else:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(config), providers=choice.providers
        )
    active = session.get_providers()[0]
    if config.require_gpu and active != CUDA:
        # onnxruntime-gpu offers CUDA even when it cannot load the CUDA libraries, and then
        # builds the session on CPU: what the session got is what counts.
        raise ProviderUnavailable(
            f"CIDSERVE_REQUIRE_GPU is set but ONNX Runtime built the session on {active} "
            "(the CUDA or cuDNN libraries did not load; see the server log)"
        )
    return session, active, choice.fallback_reason


def create_alone_session(
    path: Path, config: SessionConfig, provider: str, *, sha256: str | None = None
) -> ort.InferenceSession | None:
    """The model's alone session (:mod:`services.runtime.occupancy`): the same graph with an
    intra-op thread per core, spinning between parallel sections (it has the machine to
    itself); None for a session not on CPU, in deterministic mode (results must not depend on
    the load), or when it would not have more threads than the shared session."""
    if config.intra_op_threads_alone is None or config.deterministic or provider != CPU:
        return None
    threads = alone_threads(config.intra_op_threads_alone, config.intra_op_threads)
    if threads is None:
        return None
    wide = dataclasses.replace(config, intra_op_threads=threads, intra_op_spinning=True)
    return create_session(path, wide, sha256=sha256)[0]


def check_signature(session: ort.InferenceSession, metadata: ModelMetadata) -> None:
    """Raise ValueError when the metadata's inputs/outputs are not the session's."""
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    want_in = [t.name for t in metadata.inputs]
    want_out = [t.name for t in metadata.outputs]
    if sorted(got_in) != sorted(want_in):
        raise ValueError(f"metadata inputs {want_in} do not match the model's inputs {got_in}")
    if not set(want_out) <= set(got_out):
        raise ValueError(f"metadata outputs {want_out} are not among the model's {got_out}")
