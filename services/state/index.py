"""The model index: metadata CID <-> model_id <-> tokenId, and the load history.

The index outlives the session cache: a model evicted from memory is still known, so a
request naming it can reload it, and ``GET /api/models`` can list what was ever loaded.
:class:`InMemoryModelIndex` serves one process; a shared implementation (e.g. Redis) gives
every replica of a fleet the same view through the same :class:`ModelIndex` interface.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class IndexEntry:
    model_id: str
    metadata_cid: str
    name: str
    version: str
    token_id: int | None = None
    loads: int = 0
    last_loaded_at: float = field(default_factory=time.time)
    last_load_ms: float | None = None
    last_source: str | None = None
    # When the operator bound the model's published name to it (None: never; the name of an
    # unbound model does not resolve to it).
    bound_at: float | None = None
    # Whether the model's last load made a warm-up run; a reload after eviction does the same.
    warmup: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelIndex(Protocol):
    """What the loader and the routes need from the index (async: it may be remote)."""

    async def record_load(
        self,
        *,
        model_id: str,
        metadata_cid: str,
        name: str,
        version: str,
        token_id: int | None,
        load_ms: float,
        source: str,
        warmup: bool = True,
    ) -> IndexEntry: ...

    async def bind_name(self, model_id: str) -> None:
        """The operator chose this model for its published name (and version)."""
        ...

    async def get(self, model_id: str) -> IndexEntry | None: ...

    async def entries(self) -> list[IndexEntry]: ...

    async def forget(self, model_id: str) -> None: ...


class InMemoryModelIndex:
    """The index of one process (embedded defaults)."""

    def __init__(self) -> None:
        self._entries: dict[str, IndexEntry] = {}

    async def record_load(
        self,
        *,
        model_id: str,
        metadata_cid: str,
        name: str,
        version: str,
        token_id: int | None,
        load_ms: float,
        source: str,
        warmup: bool = True,
    ) -> IndexEntry:
        entry = self._entries.get(model_id)
        if entry is None:
            entry = IndexEntry(model_id, metadata_cid, name, version, token_id)
            self._entries[model_id] = entry
        entry.token_id = token_id
        entry.loads += 1
        entry.last_loaded_at = time.time()
        entry.last_load_ms = load_ms
        entry.last_source = source
        entry.warmup = warmup
        return entry

    async def bind_name(self, model_id: str) -> None:
        entry = self._entries.get(model_id)
        if entry is not None:
            entry.bound_at = time.time()

    async def get(self, model_id: str) -> IndexEntry | None:
        return self._entries.get(model_id)

    async def entries(self) -> list[IndexEntry]:
        return list(self._entries.values())

    async def forget(self, model_id: str) -> None:
        self._entries.pop(model_id, None)
