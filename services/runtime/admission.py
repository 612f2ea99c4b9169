"""A cap on concurrent work that refuses at once instead of queueing.

:class:`Slots` admits up to ``limit`` holders; one more raises ``Overloaded`` (503 +
``Retry-After``) without waiting, so a burst of hostile or slow loads cannot pile up threads,
child processes or memory behind the cap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from services.errors import Overloaded


class Slots:
    """Up to ``limit`` concurrent holders of :meth:`take`; ``setting`` names the knob."""

    def __init__(self, limit: int, *, what: str, setting: str, retry_after_s: int = 1) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.what = what
        self.setting = setting
        self.retry_after_s = retry_after_s
        self.busy = 0
        self.refused = 0
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[None]:
        """Hold one slot for the ``with`` block; raise ``Overloaded`` when none is free."""
        with self._lock:
            if self.busy >= self.limit:
                self.refused += 1
                raise Overloaded(
                    f"{self.limit} {self.what} are already under way ({self.setting}); "
                    "try again shortly",
                    retry_after_s=self.retry_after_s,
                )
            self.busy += 1
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1
