"""Errors of the runtime layer (mapped to HTTP by the HTTP layer's error table)."""

from __future__ import annotations

import asyncio
from typing import Any


class ProviderUnavailable(RuntimeError):
    """The settings require an execution provider that this onnxruntime build lacks."""


class RunTimeout(TimeoutError):
    """A run did not finish within its deadline and was terminated."""


class WarmupTimeout(RunTimeout):
    """A model's warm-up run did not finish within the warm-up deadline and was terminated."""


class SessionTooLarge(MemoryError):
    """Building (and warming up) the model's session needs more memory than the budget."""


class ProbeFailed(RuntimeError):
    """The trial build of a model in a child process failed for another reason than memory
    (the model is invalid, or the build took too long)."""


def consume_outcome(fut: asyncio.Future[Any]) -> None:
    """Done-callback for a future nobody awaits any more: retrieve its exception, so asyncio
    does not log "exception was never retrieved"."""
    if not fut.cancelled():
        fut.exception()
