"""Errors of the runtime layer (mapped to HTTP by the HTTP layer's error table)."""

from __future__ import annotations

import asyncio
from typing import Any


class ProviderUnavailable(RuntimeError):
    """The settings require an execution provider that this onnxruntime build lacks."""


class RunTimeout(TimeoutError):
    """A run did not finish within its deadline and was terminated."""


def consume_outcome(fut: asyncio.Future[Any]) -> None:
    """Done-callback for a future nobody awaits any more: retrieve its exception, so asyncio
    does not log "exception was never retrieved"."""
    if not fut.cancelled():
        fut.exception()
