"""How many cores one run gets: all of them when it is alone, one when others wait.

ONNX Runtime fixes a session's intra-op thread count when the session is built, and no one
count is best for both ends of the load: a lone request finishes soonest spread over every
core, while many concurrent requests get the most work done at one thread per run (no
synchronisation between threads, every core busy with a run of its own). So a CPU model may
hold two sessions of the same graph (:class:`~services.runtime.runner.ModelRunner`): the
*shared* one (``CIDSERVE_INTRA_OP_THREADS``, default 1) that concurrent runs use side by
side, and an *alone* one (``CIDSERVE_INTRA_OP_THREADS_ALONE``, default one per core) that a
run takes when :class:`Occupancy` says nothing else is in flight or queued in this process's
inference pool, for any model.

A run that starts alone keeps its threads until it ends; a request that arrives meanwhile
runs on the shared session next to it, so the machine is oversubscribed by a few threads for
the rest of that one run, never more.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def alone_threads(setting: int, shared_threads: int) -> int | None:
    """Intra-op threads of a model's alone session, or None when it would not differ from
    the shared one (``setting`` 0: one per usable core; a shared count of 0 already lets
    ONNX Runtime use every core)."""
    if shared_threads == 0:
        return None
    threads = setting or usable_cores()
    return threads if threads > shared_threads else None


class Occupancy:
    """The runs submitted to one inference pool and not finished yet, across models.

    :meth:`enter` and :meth:`leave` are called on the event loop (a run's submission and its
    future's completion), so the count needs no lock; a worker thread only reads it."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = 0

    def enter(self) -> None:
        self._pending += 1

    def leave(self, *_: object) -> None:
        """Also usable as a future's done-callback."""
        self._pending -= 1

    @property
    def pending(self) -> int:
        return self._pending

    def alone(self) -> bool:
        """True when the caller's own run is the only one in flight or queued."""
        return self._pending <= 1
