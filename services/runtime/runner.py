"""Running a session off the event loop, with a deadline.

``session.run`` never runs on the event loop: :class:`ModelRunner` submits it to a bounded
thread pool (ONNX Runtime releases the GIL while it computes) and enforces the request's
timeout by asking the run to terminate (``RunOptions.terminate``) when the deadline passes.

Rows of different requests share a run only when ``cross_request_batching`` is set: a model
sees every row of its run and may move them, so that is the operator's call for each model
(see :mod:`services.runtime.batching`). Without it, each call is one run of its own rows.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from services.runtime.batching import BatchPolicy, DynamicBatcher, batchable
from services.runtime.errors import RunTimeout, consume_outcome

if TYPE_CHECKING:
    from services.observability.metrics import Metrics


class ModelRunner:
    """Runs one session in a shared, bounded thread pool with a per-call deadline.

    With a :class:`~services.runtime.batching.BatchPolicy`, a dynamic batch dimension
    (:func:`~services.runtime.batching.batchable`) and ``cross_request_batching``, concurrent
    calls are batched into one run.

    ``cross_request_batching`` says that this model may see, and so may mix up, the rows of
    different requests in one run. Only a model the operator trusts may get it: the loader
    passes :meth:`BatchPolicy.trusts` of the model's metadata CID, and an operator-only
    choice made when a model is loaded can be passed here the same way. Off (the default),
    every call runs alone: a request's own rows still run together, nobody else's do."""

    def __init__(
        self,
        session: ort.InferenceSession,
        executor: Executor,
        *,
        batching: BatchPolicy | None = None,
        cross_request_batching: bool = False,
        model_id: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.session = session
        self._executor = executor
        self.output_names = [o.name for o in session.get_outputs()]
        self.batcher: DynamicBatcher | None = None
        if (
            cross_request_batching
            and batching is not None
            and batching.enabled
            and batchable(session)
        ):
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

    @property
    def cross_request_batching(self) -> bool:
        """Whether concurrent requests of this model are batched into one run now (trusted,
        batching on, a dynamic batch dimension, and outputs that kept rows apart so far)."""
        return self.batcher is not None and self.batcher.split_ok

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
            fut.add_done_callback(consume_outcome)
            raise RunTimeout(f"inference did not finish within {timeout_s * 1000:.0f} ms") from None
        except asyncio.CancelledError:
            run_options.terminate = True
            fut.add_done_callback(consume_outcome)
            raise
