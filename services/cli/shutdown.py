"""Graceful shutdown of ``cidserve serve``: SIGTERM drains the server, then it exits 0.

On the first SIGTERM (or SIGINT) :class:`DrainingServer`

1. calls ``on_drain`` (the readiness route answers 503 ``draining`` from then on);
2. keeps accepting connections for ``CIDSERVE_DRAIN_DELAY_S`` (0 by default: under
   Kubernetes the pod's ``preStop`` hook has already waited for the endpoints to update);
3. closes its listening socket (new connections are refused), lets the requests already
   received finish within ``CIDSERVE_DRAIN_TIMEOUT_S`` (uvicorn's
   ``timeout_graceful_shutdown``; past it they are cancelled), runs the app's shutdown and
   returns.

A SIGTERM is how a process is asked to stop, so a drained stop exits 0 (uvicorn alone would
re-raise the signal and die by it). A second signal during the delay stops at once (step 3);
a second SIGINT during step 3 forces the exit, as uvicorn does.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

# uvicorn's exit status when the app does not start.
STARTUP_FAILURE = 3


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain of the module docstring."""

    def __init__(
        self, config: uvicorn.Config, *, on_drain: Callable[[], None], delay_s: float
    ) -> None:
        super().__init__(config)
        self.on_drain = on_drain
        self.delay_s = delay_s
        self._close_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._close_at is None and sig in (signal.SIGTERM, signal.SIGINT):
            self.on_drain()
            self._close_at = time.monotonic() + self.delay_s
            if self.delay_s <= 0:
                self.should_exit = True
            return
        if sig == signal.SIGTERM:  # a second SIGTERM: close now, still gracefully
            self.should_exit = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._close_at is not None and time.monotonic() >= self._close_at:
            self.should_exit = True
        return await super().on_tick(counter)


def serve(app: Any, *, on_drain: Callable[[], None], drain_delay_s: float, **config: Any) -> int:
    """Serve ``app`` until SIGTERM has drained it; the exit status (``uvicorn.Config``
    options in ``config``, with ``timeout_graceful_shutdown`` the drain timeout)."""
    server = DrainingServer(uvicorn.Config(app, **config), on_drain=on_drain, delay_s=drain_delay_s)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
