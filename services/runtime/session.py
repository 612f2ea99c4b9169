"""Session creation and the checks of a new session against the model's metadata.

Blocking: call from a worker thread. A CPU session starts from the optimized graph cached on
disk when there is one (:mod:`services.runtime.optimized_cache`). :func:`warm_up` (from
:mod:`services.runtime.warmup`) runs the first inference under a deadline.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from registry.metadata import ModelMetadata
from services.runtime.optimized_cache import OptimizedGraphCache
from services.runtime.options import SessionConfig, session_options
from services.runtime.providers import CPU, select_providers
from services.runtime.warmup import warm_up, warmup_feeds

__all__ = ["check_signature", "create_session", "warm_up", "warmup_feeds"]


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
    return session, active, choice.fallback_reason


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
