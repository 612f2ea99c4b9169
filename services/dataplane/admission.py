"""Admission control: a bounded queue per model, and the instance's draining state.

Every request that is going to run a model takes a slot of that model first
(:meth:`Admission.slot`, around the preprocessing and the run) and gives it back in a
``finally``, whatever happens to the request (an error, a timeout, a client that goes away).
A slot is refused with :class:`~services.errors.Overloaded` (503 + ``Retry-After``) when

* ``queue_full``: the model already has ``max_queue_per_model`` requests waiting or running;
* ``queue_delay``: the work ahead of the request would take longer than
  ``max_queue_delay_ms`` to clear, or longer than the request's own timeout (it would end
  in a 504 after using a slot; better a 503 now).

The work ahead is estimated from what the model really did lately: the mean time between two
completions while the model was busy (an exponentially weighted mean). Under load that is the
inverse of the model's throughput, whatever the run time, the batch sizes or the number of
inference workers; ``depth x interval`` is then how long the backlog takes to drain, and the
``Retry-After`` of a refusal (at least 1 s). A model that has not completed a request yet has
no estimate: only the count bound applies to it.

Refusing early is cheaper than queueing: a refused request costs no decode and no run, and
its client learns at once when to come back, instead of waiting for a 504.

``draining`` is set when the process has been told to stop (SIGTERM): the readiness route
answers 503 so load balancers take the instance out of rotation while it finishes the
requests it already accepted.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from services.errors import Overloaded
from services.observability.metrics import Metrics

# Weight of the newest completion interval in the running mean (about the last 20 count).
_ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """The bounds of one model's queue; 0 turns a bound off."""

    max_queue_per_model: int = 0
    max_queue_delay_ms: float = 0.0


@dataclass(slots=True)
class _Queue:
    """One model's requests holding a slot, and how fast it has been clearing them."""

    depth: int = 0
    # Busy time (depth > 0) since the last completion, and when depth last changed.
    busy_s: float = 0.0
    changed_at: float = 0.0
    interval_s: float | None = None

    def advance(self, now: float) -> None:
        if self.depth > 0:
            self.busy_s += now - self.changed_at
        self.changed_at = now

    def completed(self) -> None:
        sample = self.busy_s
        self.busy_s = 0.0
        if self.interval_s is None:
            self.interval_s = sample
        else:
            self.interval_s += _ALPHA * (sample - self.interval_s)

    def backlog_s(self) -> float | None:
        """How long the requests holding a slot take to clear (None: no estimate yet)."""
        if self.interval_s is None:
            return None
        return self.depth * self.interval_s


class Admission:
    """The per-model slots of one service instance; see the module docstring."""

    def __init__(
        self,
        policy: AdmissionPolicy,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.metrics = metrics
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        self._draining = False

    # -- draining ----------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """True once the process has been told to stop (readiness answers 503)."""
        return self._draining

    def drain(self) -> None:
        """Take the instance out of rotation: requests already accepted still run."""
        self._draining = True
        if self.metrics is not None:
            self.metrics.draining.set(1)

    # -- the queue ---------------------------------------------------------------------------

    def depth(self, model_id: str) -> int:
        """Requests of ``model_id`` waiting or running now."""
        queue = self._queues.get(model_id)
        return 0 if queue is None else queue.depth

    def backlog_s(self, model_id: str) -> float | None:
        """The estimated time to clear ``model_id``'s queue (None: no estimate yet)."""
        queue = self._queues.get(model_id)
        return None if queue is None else queue.backlog_s()

    def check(self, model_id: str, deadline_s: float | None = None) -> None:
        """Refuse now (:class:`Overloaded`) what :meth:`slot` would refuse now, without taking
        a slot: the data plane asks before decoding a request's body, so a request shed under
        load costs no decode. The slot itself decides again when the work starts."""
        queue = self._queues.get(model_id)
        if queue is not None:
            self._admit(model_id, queue, deadline_s)

    @contextlib.asynccontextmanager
    async def slot(self, model_id: str, deadline_s: float | None = None) -> AsyncIterator[None]:
        """Hold one of ``model_id``'s slots for the body; :class:`Overloaded` when full, or
        when the work ahead would outlast ``deadline_s`` (the request's own timeout)."""
        queue = self._queues.get(model_id)
        if queue is None:
            queue = self._queues[model_id] = _Queue(changed_at=self._clock())
        self._admit(model_id, queue, deadline_s)
        queue.advance(self._clock())
        queue.depth += 1
        self._publish(model_id, queue)
        try:
            yield
        finally:
            queue.advance(self._clock())
            queue.depth -= 1
            queue.completed()
            self._publish(model_id, queue)

    def _admit(self, model_id: str, queue: _Queue, deadline_s: float | None) -> None:
        policy = self.policy
        backlog = queue.backlog_s()
        retry_after = max(1, math.ceil(backlog)) if backlog is not None else 1
        if policy.max_queue_per_model and queue.depth >= policy.max_queue_per_model:
            self._shed("queue_full")
            raise Overloaded(
                f"model {model_id} has {queue.depth} requests waiting or running, its limit "
                f"(CIDSERVE_MAX_QUEUE_PER_MODEL); retry in {retry_after} s",
                retry_after_s=retry_after,
                model_id=model_id,
                reason="queue_full",
            )
        bounds = [(policy.max_queue_delay_ms, "CIDSERVE_MAX_QUEUE_DELAY_MS")]
        if deadline_s is not None:
            bounds.append((deadline_s * 1000, "the request's timeout"))
        over = [
            (ms, name) for ms, name in bounds if ms and backlog is not None and backlog * 1000 > ms
        ]
        if over:
            bound_ms, name = min(over)
            self._shed("queue_delay")
            raise Overloaded(
                f"model {model_id} has about {(backlog or 0) * 1000:.0f} ms of work queued, over "
                f"{bound_ms:g} ms ({name}); retry in {retry_after} s",
                retry_after_s=retry_after,
                model_id=model_id,
                reason="queue_delay",
            )

    def _shed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.requests_shed.labels(reason).inc()

    def _publish(self, model_id: str, queue: _Queue) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(model_id).set(queue.depth)
