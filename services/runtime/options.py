"""How sessions are built: :class:`SessionConfig` (from settings) and the session options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How sessions are built; derived from settings by the app."""

    execution_provider: str = "auto"
    require_gpu: bool = False
    cuda_device_id: int = 0
    intra_op_threads: int = 1
    # Intra-op threads of a CPU model's alone session (services/runtime/occupancy.py): 0 one
    # per usable core; None: no alone session.
    intra_op_threads_alone: int | None = None
    # Where optimized graphs are kept (services/optimized_cache.py); None: not cached.
    optimized_cache_dir: Path | None = None
    # ONNX Runtime's intra-op threads spin while waiting for work (see docs/PERFORMANCE.md).
    intra_op_spinning: bool = False
    # Identical outputs for identical inputs (CIDSERVE_DETERMINISTIC): deterministic kernels,
    # sequential execution, a fixed intra-op thread count.
    deterministic: bool = False


def session_options(config: SessionConfig, *, optimize: bool = True) -> ort.SessionOptions:
    """The options every session gets; ``optimize=False`` for a graph optimized already."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if config.intra_op_threads:
        opts.intra_op_num_threads = config.intra_op_threads
    if config.deterministic:
        opts.use_deterministic_compute = True
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = config.intra_op_threads or 1
        opts.inter_op_num_threads = 1
    if not config.intra_op_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts
