"""A small key-value interface for state that may be shared between replicas.

Used for the prediction cache, the license-check cache, the replay (nonce) store and the
model index. :class:`MemoryKV` serves one process (embedded defaults);
:class:`services.redis_kv.RedisKV` gives every replica the same state through the same
interface (docs/REDIS.md).

Implementations raise :class:`KVUnavailable` when the backend cannot answer (in time); the
callers decide what that means (a cache bypasses, a nonce store fails closed).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class KVUnavailable(Exception):
    """The key-value backend did not answer (down, slow, or reconnecting)."""


class KeyValueStore(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def set_nx(
        self, key: str, value: bytes, ttl_s: float, *, timeout_s: float | None = None
    ) -> bool:
        """Set only if absent; True when this call set it (``SET NX EX``).

        ``timeout_s`` overrides the store's own bound on the call (a caller that fails closed
        on :class:`KVUnavailable` waits longer than one that can bypass the store).
        """
        ...

    async def delete(self, key: str) -> None: ...

    def bucket(self, name: str, *, max_entries: int, max_bytes: int) -> KeyValueStore:
        """A namespace of this store with its own bounds (entry count, summed value bytes).

        When a bucket is full its oldest entries go first, and only its own: a cache kept in
        a bucket can never push out another user's keys (nonces, license checks).
        Asking twice for the same name gives the same bucket.
        """
        ...

    async def health(self) -> dict[str, object]: ...

    async def aclose(self) -> None: ...


class MemoryKV:
    """In-process store: TTL per entry, bounded by entry count and total value bytes.

    When full, the least recently used entry goes first; with ``lru=False`` (buckets) the
    oldest written goes first and reads do not reorder, as in the Redis implementation.
    """

    name = "memory"

    def __init__(
        self, max_entries: int = 10_000, max_bytes: int = 256 << 20, *, lru: bool = True
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.lru = lru
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._buckets: dict[str, MemoryKV] = {}

    def __len__(self) -> int:
        return len(self._data)

    def _expired(self, key: str, now: float) -> bool:
        entry = self._data.get(key)
        if entry is None:
            return True
        if entry[0] <= now:
            self._drop(key)
            return True
        return False

    def _drop(self, key: str) -> None:
        _, value = self._data.pop(key)
        self._bytes -= len(value)

    async def get(self, key: str) -> bytes | None:
        if self._expired(key, time.monotonic()):
            return None
        if self.lru:
            self._data.move_to_end(key)
        return self._data[key][1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if key in self._data:
            self._drop(key)
        if len(value) > self.max_bytes:
            return
        self._data[key] = (time.monotonic() + ttl_s, value)
        self._bytes += len(value)
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._data)))

    async def set_nx(
        self, key: str, value: bytes, ttl_s: float, *, timeout_s: float | None = None
    ) -> bool:
        if not self._expired(key, time.monotonic()):
            return False
        await self.set(key, value, ttl_s)
        return True

    async def delete(self, key: str) -> None:
        if key in self._data:
            self._drop(key)

    def bucket(self, name: str, *, max_entries: int, max_bytes: int) -> MemoryKV:
        """A separate in-process store with its own bounds (the oldest written goes first)."""
        found = self._buckets.get(name)
        if found is None:
            found = self._buckets[name] = MemoryKV(max_entries, max_bytes, lru=False)
        return found

    async def health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "kind": "memory",
            "entries": len(self._data),
            "buckets": {name: len(b) for name, b in self._buckets.items()},
        }

    async def aclose(self) -> None:
        self._data.clear()
        self._bytes = 0
        for b in self._buckets.values():
            await b.aclose()
