"""Dynamic batching: concurrent requests for one model share one ``session.run``.

Like Triton's dynamic batcher. A request's feeds wait in the model's queue; when an inference
slot of the model is free (at most ``max_inflight`` runs of one model at a time), the waiting
requests whose feeds have the same dtypes and non-batch dimensions as the oldest one are
concatenated along axis 0 (up to ``max_size`` rows), run once, and the outputs are split back
by row. With ``max_delay_ms`` > 0 a batch that is not full waits up to that long after its
oldest request arrived for more requests; with 0 it leaves as soon as a slot is free, so an
idle model adds no latency and a busy one batches whatever queued while it ran.

Only models whose batch dimension is dynamic take part (:func:`batchable`: the first
dimension of every input and output is not a fixed number), and only those the operator trusts
(:meth:`BatchPolicy.trusts`, ``CIDSERVE_BATCH_TRUSTED_CIDS``). Models come from anyone, and a
model sees every row of a run: one that moves rows (a ``Slice`` with step -1 on axis 0 is
enough) would hand one caller's input-derived output to another, and the split by position
cannot tell. Shapes say nothing about that, so for a model the operator has not marked as
trusted the runner builds no batcher at all: each request is one ``session.run`` of its own
rows, and no request ever receives rows computed from another request's input.

Each request keeps its own deadline: a request whose deadline passed while it waited is
dropped before the run, one whose deadline passes during the run gets
:class:`~services.runtime.errors.RunTimeout` while the others still get their results, and the
run itself is terminated (``RunOptions.terminate``) once every request in it is past its
deadline. A run that fails fails only the requests of its own
batch. A model that turns out not to keep rows apart (an output whose first dimension is not
the batch's row count) is run one request at a time from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from registry.unixfs import canonical_cid
from services.runtime.errors import RunTimeout, consume_outcome

if TYPE_CHECKING:
    from services.observability.metrics import Metrics

log = logging.getLogger("cidserve.batching")

Outputs = dict[str, np.ndarray]
RunFn = Callable[[dict[str, np.ndarray], ort.RunOptions], list[np.ndarray]]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How a model's requests are batched; built from settings by the app."""

    enabled: bool = True
    max_size: int = 8
    max_delay_ms: float = 0.0
    # Concurrent runs of one model (the inference pool's size).
    max_inflight: int = 1
    # Metadata CIDs of the models whose runs may hold rows of different requests
    # (canonical CIDv1 base32; any spelling of a CID is accepted and canonicalised here).
    trusted_cids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        canonical = frozenset(canonical_cid(c) for c in self.trusted_cids)
        object.__setattr__(self, "trusted_cids", canonical)

    def trusts(self, metadata_cid: str) -> bool:
        """Whether the operator lets requests of different callers share a run of the model
        published under ``metadata_cid`` (in any CID spelling; a non-CID is never trusted)."""
        try:
            return canonical_cid(metadata_cid) in self.trusted_cids
        except ValueError:
            return False


def batchable(session: ort.InferenceSession) -> bool:
    """True when every input and output has a dynamic first (batch) dimension."""
    tensors = [*session.get_inputs(), *session.get_outputs()]
    return bool(tensors) and all(
        len(t.shape) >= 1 and not (isinstance(t.shape[0], int) and t.shape[0] > 0) for t in tensors
    )


@dataclass(slots=True)
class _Pending:
    feeds: dict[str, np.ndarray]
    key: tuple[Any, ...]
    rows: int
    deadline: float
    future: asyncio.Future[tuple[Outputs, float]]
    enqueued: float = field(default_factory=time.monotonic)


def _key(feeds: dict[str, np.ndarray]) -> tuple[Any, ...] | None:
    """What must match for two requests to share a run; None when a feed has no batch axis."""
    parts: list[Any] = []
    for name in sorted(feeds):
        arr = feeds[name]
        if arr.ndim == 0:
            return None
        parts.append((name, arr.dtype.str, arr.shape[1:]))
    return tuple(parts)


def _rows(feeds: dict[str, np.ndarray]) -> int | None:
    """Rows of the request (the same first dimension in every feed), else None."""
    sizes = {arr.shape[0] for arr in feeds.values()}
    return sizes.pop() if len(sizes) == 1 else None


class DynamicBatcher:
    """The queue and batch formation of one model; everything runs on the event loop."""

    def __init__(
        self,
        run: RunFn,
        output_names: list[str],
        executor: Executor,
        policy: BatchPolicy,
        *,
        model_id: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self._run = run
        self._output_names = output_names
        self._executor = executor
        self.policy = policy
        self.model_id = model_id
        self._metrics = metrics
        self._hist = metrics.batch_size.labels(model_id) if metrics is not None else None
        self._queue: list[_Pending] = []
        self._inflight = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.split_ok = True
        # Statistics (tests, debugging): runs made and requests they served.
        self.runs = 0
        self.requests = 0
        self.max_batch = 0

    def accepts(self, feeds: dict[str, np.ndarray]) -> bool:
        """Whether ``feeds`` can go through the queue (else the caller runs them alone)."""
        if not (self.policy.enabled and self.split_ok and feeds):
            return False
        rows = _rows(feeds)
        return rows is not None and 0 < rows <= self.policy.max_size and _key(feeds) is not None

    async def submit(self, feeds: dict[str, np.ndarray], timeout_s: float) -> tuple[Outputs, float]:
        """Queue ``feeds`` and return this request's outputs and the seconds its run took.

        Raises :class:`~services.runtime.errors.RunTimeout` when ``timeout_s`` passes first."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (tests)
            self._loop, self._queue, self._inflight = loop, [], 0
            self._wake, self._task = asyncio.Event(), None
        deadline = time.monotonic() + timeout_s
        item = _Pending(feeds, _key(feeds), _rows(feeds) or 0, deadline, loop.create_future())
        self._queue.append(item)
        assert self._wake is not None
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._collect())
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except TimeoutError:
            if item in self._queue:
                self._queue.remove(item)
            item.future.cancel()
            raise RunTimeout(f"inference did not finish within {timeout_s * 1000:.0f} ms") from None
        except asyncio.CancelledError:
            if item in self._queue:
                self._queue.remove(item)
            item.future.cancel()
            raise

    async def _collect(self) -> None:
        """Form batches while requests wait: one per free slot, oldest request first."""
        assert self._wake is not None
        while self._queue:
            if self._inflight >= self.policy.max_inflight:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._queue[0]
            delay = self.policy.max_delay_ms / 1000
            if delay > 0:
                while (
                    self._queue
                    and self._queue[0] is first
                    and self._rows_like(first) < self.policy.max_size
                    and (left := first.enqueued + delay - time.monotonic()) > 0
                ):
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except TimeoutError:
                        break
                if not self._queue or self._queue[0] is not first:
                    continue
            batch = self._take(first)
            if batch:
                self._inflight += 1
                asyncio.get_running_loop().create_task(self._dispatch(batch))

    def _rows_like(self, first: _Pending) -> int:
        return sum(p.rows for p in self._queue if p.key == first.key)

    def _take(self, first: _Pending) -> list[_Pending]:
        """Remove and return the batch led by ``first``; expired or abandoned requests are
        dropped (and told so) on the way."""
        now = time.monotonic()
        batch: list[_Pending] = []
        rows = 0
        rest: list[_Pending] = []
        for p in self._queue:
            if p.future.done():
                continue
            if now >= p.deadline:
                p.future.set_exception(RunTimeout("deadline passed while queued"))
                continue
            if p.key == first.key and rows + p.rows <= self.policy.max_size:
                batch.append(p)
                rows += p.rows
            else:
                rest.append(p)
        self._queue[:] = rest
        return batch

    async def _dispatch(self, batch: list[_Pending]) -> None:
        """One run for ``batch``; results (or the error) go to each request's future."""
        loop = asyncio.get_running_loop()
        options = ort.RunOptions()
        run_deadline = max(p.deadline for p in batch)
        fut = loop.run_in_executor(self._executor, self._work, batch, options)
        try:
            try:
                results, run_s = await asyncio.wait_for(
                    asyncio.shield(fut), max(run_deadline - time.monotonic(), 0.0)
                )
            except TimeoutError:
                options.terminate = True
                fut.add_done_callback(consume_outcome)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(
                            RunTimeout("inference did not finish before the deadline")
                        )
                return
            except RunTimeout as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(RunTimeout(str(exc)))
                return
            except Exception as exc:  # every request of the batch gets the run's error
                # The run's own error (its type decides the reply), for this batch only.
                log.warning(
                    "model %s: a run of %d batched request(s) failed: %s",
                    self.model_id,
                    len(batch),
                    exc,
                )
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            self.runs += 1
            self.requests += len(batch)
            self.max_batch = max(self.max_batch, len(batch))
            if self._hist is not None:
                self._hist.observe(len(batch))
            for p, out in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result((out, run_s))
        finally:
            self._inflight -= 1
            if self._wake is not None:
                self._wake.set()

    def _work(self, batch: list[_Pending], options: ort.RunOptions) -> tuple[list[Outputs], float]:
        """Worker thread: concatenate, run, split (or run one by one when rows cannot be
        told apart)."""
        if all(time.monotonic() >= p.deadline for p in batch):
            raise RunTimeout("deadline passed while queued")
        t0 = time.perf_counter()
        if len(batch) == 1:
            values = self._run(batch[0].feeds, options)
            return [dict(zip(self._output_names, values, strict=True))], time.perf_counter() - t0
        names = list(batch[0].feeds)
        feeds = {n: np.concatenate([p.feeds[n] for p in batch], axis=0) for n in names}
        values = self._run(feeds, options)
        total = sum(p.rows for p in batch)
        if any(v.ndim == 0 or v.shape[0] != total for v in values):
            self.split_ok = False
            log.warning(
                "model %s: outputs do not keep the batch's rows apart; batching is off for it",
                self.model_id,
            )
            outs = [
                dict(zip(self._output_names, self._run(p.feeds, options), strict=True))
                for p in batch
            ]
            return outs, time.perf_counter() - t0
        run_s = time.perf_counter() - t0
        outs = []
        start = 0
        for p in batch:
            end = start + p.rows
            outs.append({n: v[start:end] for n, v in zip(self._output_names, values, strict=True)})
            start = end
        return outs, run_s
