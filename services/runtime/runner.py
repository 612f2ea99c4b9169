"""Running a session off the event loop, with a deadline.

``session.run`` never runs on the event loop: :class:`ModelRunner` submits it to a bounded
thread pool (ONNX Runtime releases the GIL while it computes) and enforces the request's
timeout by asking the run to terminate (``RunOptions.terminate``) when the deadline passes.
:meth:`ModelRunner.call` hands a whole request to one worker (decode, preprocess, run,
postprocess: one hand-off from the event loop); :meth:`ModelRunner.run` hands it feeds.

A CPU model may have a second session with more intra-op threads, taken by a run that is alone
in the inference pool (:mod:`services.runtime.occupancy`).

Rows of different requests share a run only when ``cross_request_batching`` is set: a model
sees every row of its run and may move them, so that is the operator's call for each model
(see :mod:`services.runtime.batching`). Without it, each call is one run of its own rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import onnxruntime as ort

from services.runtime.batching import BatchPolicy, DynamicBatcher, batchable
from services.runtime.errors import RunTimeout
from services.runtime.occupancy import Occupancy

if TYPE_CHECKING:
    from services.observability.metrics import Metrics

T = TypeVar("T")
Outputs = dict[str, np.ndarray]


class Run:
    """``run(feeds)``: one ``session.run`` of a call, in the worker thread that runs the call.

    Takes the model's alone session when the call is the only one in the inference pool;
    refuses to start once the call's deadline has passed; adds up the seconds spent in
    ``session.run`` (``seconds``)."""

    __slots__ = ("_runner", "deadline", "options", "seconds")

    def __init__(self, runner: ModelRunner, deadline: float) -> None:
        self._runner = runner
        self.deadline = deadline
        self.options = ort.RunOptions()
        self.seconds = 0.0

    def __call__(self, feeds: dict[str, np.ndarray]) -> Outputs:
        if time.monotonic() >= self.deadline:
            raise RunTimeout("deadline passed while queued")
        runner = self._runner
        session = runner.session_now()
        t0 = time.perf_counter()
        values = session.run(runner.output_names, feeds, self.options)
        self.seconds += time.perf_counter() - t0
        return dict(zip(runner.output_names, values, strict=True))


def _back_to_loop(
    loop: asyncio.AbstractEventLoop,
    occupancy: Occupancy,
    waiter: asyncio.Future[T],
    job: Future[T],
) -> None:
    """A job's done-callback (in the worker, or on the loop for a job cancelled before it
    started): :func:`_settle` on the loop; nothing once the loop is closed (shutdown)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, occupancy, job, waiter)


def _settle(occupancy: Occupancy, job: Future[T], waiter: asyncio.Future[T]) -> None:
    """On the loop, when a job of :meth:`ModelRunner.call` has ended (or was cancelled before
    it started): its place in the pool is free; its outcome goes to the waiter, or nowhere when
    the waiter was answered already (deadline, cancellation)."""
    occupancy.leave()
    if waiter.done():
        if not job.cancelled():
            job.exception()  # retrieved: nothing is logged for an outcome nobody awaits
        return
    if job.cancelled():
        waiter.cancel()
    elif (exc := job.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(job.result())


def _expire(waiter: asyncio.Future[T], run: Run, job: Future[T], timeout_s: float) -> None:
    """On the loop, at a call's deadline: the run is told to terminate (a running
    ``session.run`` stops within milliseconds and frees its worker; a queued job is dropped)
    and the caller gets :class:`RunTimeout`."""
    if waiter.done():
        return
    run.options.terminate = True
    job.cancel()
    waiter.set_exception(RunTimeout(f"inference did not finish within {timeout_s * 1000:.0f} ms"))


class ModelRunner:
    """Runs one model's sessions in a shared, bounded thread pool with a per-call deadline.

    ``alone_session`` (optional, same graph, more intra-op threads) is used by a run that
    ``occupancy`` says is alone in the pool; ``session`` by every other run.

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
        alone_session: ort.InferenceSession | None = None,
        occupancy: Occupancy | None = None,
        batching: BatchPolicy | None = None,
        cross_request_batching: bool = False,
        model_id: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.session = session
        self.alone_session = alone_session if occupancy is not None else None
        self._occupancy = occupancy or Occupancy()
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
    def sessions(self) -> int:
        """How many sessions of the model are held (1, or 2 with an alone session)."""
        return 1 if self.alone_session is None else 2

    @property
    def cross_request_batching(self) -> bool:
        """Whether concurrent requests of this model are batched into one run now (trusted,
        batching on, a dynamic batch dimension, and outputs that kept rows apart so far)."""
        return self.batcher is not None and self.batcher.split_ok

    def batches(self, feeds: dict[str, np.ndarray]) -> bool:
        """Whether these feeds would go through the batcher (queued with other requests')."""
        return self.batcher is not None and self.batcher.accepts(feeds)

    def session_now(self) -> ort.InferenceSession:
        """The session a run starting now takes (from a worker thread)."""
        alone = self.alone_session
        if alone is not None and self._occupancy.alone():
            return alone
        return self.session

    async def call(self, work: Callable[[Run], T], timeout_s: float) -> tuple[T, float]:
        """``work(run)`` in the inference pool, under a deadline of ``timeout_s``; returns what
        it returned and the seconds its runs took. ``work`` calls ``run(feeds)`` for each
        ``session.run`` it needs; everything else it does (decoding, preprocessing,
        postprocessing) happens in the same worker, with no further hand-off.

        Raises :class:`RunTimeout` when the deadline passes (queued or running: a running
        ``session.run`` is told to terminate, which frees its worker within milliseconds)."""
        if self._batch_hist is not None:
            self._batch_hist.observe(1)
        loop = asyncio.get_running_loop()
        run = Run(self, time.monotonic() + timeout_s)
        occupancy = self._occupancy
        waiter: asyncio.Future[T] = loop.create_future()
        occupancy.enter()
        try:
            job = self._executor.submit(work, run)
        except BaseException:
            occupancy.leave()
            raise
        # One hop back to the loop when the job ends: the worker's done-callback schedules
        # _settle, which frees the job's place in the pool and hands its outcome to the waiter
        # (unless the deadline or a cancellation answered first).
        job.add_done_callback(functools.partial(_back_to_loop, loop, occupancy, waiter))
        timer = loop.call_later(timeout_s, _expire, waiter, run, job, timeout_s)
        try:
            result = await waiter
        except asyncio.CancelledError:
            run.options.terminate = True
            job.cancel()
            raise
        finally:
            timer.cancel()
        return result, run.seconds

    async def run(
        self, feeds: dict[str, np.ndarray], timeout_s: float
    ) -> tuple[dict[str, np.ndarray], float]:
        """Run off the event loop; return outputs by name and the seconds ``session.run`` took.

        Raises :class:`RunTimeout` when the deadline passes (queued or running: a running
        call is told to terminate, which frees its worker within milliseconds).
        """
        if self.batches(feeds):
            assert self.batcher is not None
            return await self.batcher.submit(feeds, timeout_s)
        return await self.call(lambda run: run(feeds), timeout_s)
