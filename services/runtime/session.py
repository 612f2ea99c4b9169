"""Session creation and the checks of a new session against the model's metadata.

Blocking: call from a worker thread. A CPU session starts from the optimized graph cached on
disk when there is one (:mod:`services.runtime.optimized_cache`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from registry.metadata import ModelMetadata
from services.runtime.optimized_cache import OptimizedGraphCache
from services.runtime.options import SessionConfig, session_options
from services.runtime.providers import CPU, select_providers


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


_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


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


def warmup_feeds(
    session: ort.InferenceSession, shapes: dict[str, list[int]] | None = None
) -> dict[str, np.ndarray]:
    """Zero inputs of the declared shapes for a warm-up run.

    ``shapes`` gives concrete shapes for some inputs (what the model's preprocessor will feed
    them, e.g. an image model's height and width); every other dynamic dimension is 1.
    """
    given = shapes or {}
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        dtype = _ORT_TO_NUMPY.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has unsupported type {inp.type}")
        shape = given.get(inp.name) or [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds
