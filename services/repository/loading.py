"""Loads under way, as ``GET /api/models`` shows them under ``loading``.

The :class:`~services.repository.loader.ModelLoader` enters each load here when it starts and
moves it through its stages: ``fetching metadata`` (metadata.json and the labels), ``fetching
model`` (the model file, at most its declared size), ``building`` (trial build, ONNX Runtime
session, plug-ins) and ``warming up``. A load is keyed by its single-flight key (canonical
metadata CID, token), so concurrent requests for one model show one entry.

Bytes fetched come from the content store's fetch listener (a remote store: IPFS): bytes
received while a load fetches its model are credited to it, never more than its declared
size. Two loads fetching at the same time each see the bytes of both (the store does not say
which fetch a byte belongs to). A model the store already holds counts as fetched whole once
its file is there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

Stage = Literal["fetching metadata", "fetching model", "building", "warming up"]
LoadKey = tuple[str, int | None]
"""(canonical metadata CID, token id): one load."""


@dataclass(slots=True)
class LoadProgress:
    """Where one load stands."""

    metadata_cid: str
    token_id: int | None
    stage: Stage = "fetching metadata"
    name: str | None = None
    size_bytes: int | None = None
    bytes_fetched: int = 0
    started: float = field(default_factory=time.monotonic)

    def describe(self) -> dict[str, Any]:
        return {
            "metadataCid": self.metadata_cid,
            "tokenId": self.token_id,
            "name": self.name,
            "stage": self.stage,
            "bytes_fetched": self.bytes_fetched,
            "size_bytes": self.size_bytes,
            "elapsed_ms": round((time.monotonic() - self.started) * 1000, 1),
        }


class LoadBoard:
    """The loads under way of one loader (see the module docstring). Stages move from the
    event loop and from the load pool's threads, hence the lock."""

    def __init__(self) -> None:
        self._loads: dict[LoadKey, LoadProgress] = {}
        self._lock = threading.Lock()

    @contextmanager
    def track(self, metadata_cid: str, token_id: int | None) -> Iterator[LoadProgress]:
        """Show the load while the ``with`` block runs."""
        key = (metadata_cid, token_id)
        progress = LoadProgress(metadata_cid, token_id)
        with self._lock:
            self._loads[key] = progress
        try:
            yield progress
        finally:
            with self._lock:
                if self._loads.get(key) is progress:
                    del self._loads[key]

    def fetching_model(self, key: LoadKey, name: str, size_bytes: int) -> None:
        """The metadata is read: the model file (``size_bytes`` declared) is being fetched."""
        with self._lock:
            progress = self._loads.get(key)
            if progress is not None:
                progress.name = name
                progress.size_bytes = size_bytes
                progress.stage = "fetching model"

    def advance(self, key: LoadKey, stage: Stage) -> None:
        """Move the load to ``stage``; past the fetch the whole file is there."""
        with self._lock:
            progress = self._loads.get(key)
            if progress is None:
                return
            if progress.size_bytes is not None and stage in ("building", "warming up"):
                progress.bytes_fetched = progress.size_bytes
            progress.stage = stage

    def received(self, n: int) -> None:
        """The content store received ``n`` bytes (its fetch listener)."""
        with self._lock:
            for progress in self._loads.values():
                if progress.stage == "fetching model" and progress.size_bytes is not None:
                    progress.bytes_fetched = min(progress.size_bytes, progress.bytes_fetched + n)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every load under way, oldest first."""
        with self._lock:
            loads = sorted(self._loads.values(), key=lambda p: p.started)
            return [p.describe() for p in loads]
