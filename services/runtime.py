"""ONNX Runtime: execution-provider choice, session creation, and running off the event loop.

``session.run`` never runs on the event loop: :class:`ModelRunner` submits it to a bounded
thread pool (ONNX Runtime releases the GIL while it computes) and enforces the request's
timeout by asking the run to terminate (``RunOptions.terminate``) when the deadline passes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from registry.metadata import ModelMetadata
from services.batching import BatchPolicy, DynamicBatcher, batchable

if TYPE_CHECKING:
    from services.metrics import Metrics

log = logging.getLogger("cidserve.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

ProviderSpec = str | tuple[str, dict[str, Any]]


class ProviderUnavailable(RuntimeError):
    """The settings require an execution provider that this onnxruntime build lacks."""


class RunTimeout(TimeoutError):
    """A run did not finish within its deadline and was terminated."""


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


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How sessions are built; derived from settings by the app."""

    execution_provider: str = "auto"
    require_gpu: bool = False
    cuda_device_id: int = 0
    intra_op_threads: int = 1
    # Where optimized graphs are kept (services/optimized_cache.py); None: not cached.
    optimized_cache_dir: Path | None = None
    # ONNX Runtime's intra-op threads spin while waiting for work (see docs/PERFORMANCE.md).
    intra_op_spinning: bool = False


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
    if not config.intra_op_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


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
        from services.optimized_cache import OptimizedGraphCache

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


def warmup_feeds(session: ort.InferenceSession, metadata: ModelMetadata) -> dict[str, np.ndarray]:
    """Zero inputs of the declared shapes (dynamic dims: the image size where known, else 1)."""
    pre = metadata.preprocessing
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        dtype = _ORT_TO_NUMPY.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has unsupported type {inp.type}")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        is_image_input = pre.kind == "image" and (pre.input in (None, inp.name)) and len(shape) == 4
        if is_image_input:
            h, w = pre.size  # type: ignore[union-attr]
            if pre.layout == "NCHW":  # type: ignore[union-attr]
                shape[2], shape[3] = h, w
            else:
                shape[1], shape[2] = h, w
        feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


class ModelRunner:
    """Runs one session in a shared, bounded thread pool with a per-call deadline.

    With a :class:`~services.batching.BatchPolicy` and a dynamic batch dimension
    (:func:`~services.batching.batchable`), concurrent calls are batched into one run."""

    def __init__(
        self,
        session: ort.InferenceSession,
        executor: Executor,
        *,
        batching: BatchPolicy | None = None,
        model_id: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.session = session
        self._executor = executor
        self.output_names = [o.name for o in session.get_outputs()]
        self.batcher: DynamicBatcher | None = None
        if batching is not None and batching.enabled and batchable(session):
            # session.run itself, not a method of this runner: no reference cycle, so an
            # evicted model's session is freed as soon as its last request is done.
            self.batcher = DynamicBatcher(
                functools.partial(session.run, self.output_names),
                self.output_names,
                executor,
                batching,
                model_id=model_id,
                metrics=metrics,
            )
        self._batch_hist = (
            metrics.batch_size.labels(model_id) if metrics is not None and model_id else None
        )

    def _run(
        self, feeds: dict[str, np.ndarray], run_options: ort.RunOptions, deadline: float
    ) -> tuple[dict[str, np.ndarray], float]:
        if time.monotonic() >= deadline:
            raise RunTimeout("deadline passed while queued")
        t0 = time.perf_counter()
        values = self.session.run(self.output_names, feeds, run_options)
        return dict(zip(self.output_names, values, strict=True)), time.perf_counter() - t0

    def run_blocking(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run in the calling thread (for warm-up from a worker thread)."""
        return self._run(feeds, ort.RunOptions(), float("inf"))[0]

    async def run(
        self, feeds: dict[str, np.ndarray], timeout_s: float
    ) -> tuple[dict[str, np.ndarray], float]:
        """Run off the event loop; return outputs by name and the seconds ``session.run`` took.

        Raises :class:`RunTimeout` when the deadline passes (queued or running: a running
        call is told to terminate, which frees its worker within milliseconds).
        """
        if self.batcher is not None and self.batcher.accepts(feeds):
            return await self.batcher.submit(feeds, timeout_s)
        if self._batch_hist is not None:
            self._batch_hist.observe(1)
        loop = asyncio.get_running_loop()
        run_options = ort.RunOptions()
        deadline = time.monotonic() + timeout_s
        fut = loop.run_in_executor(self._executor, self._run, feeds, run_options, deadline)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            run_options.terminate = True
            fut.cancel()
            fut.add_done_callback(_swallow)
            raise RunTimeout(f"inference did not finish within {timeout_s * 1000:.0f} ms") from None
        except asyncio.CancelledError:
            run_options.terminate = True
            fut.add_done_callback(_swallow)
            raise


def _swallow(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
