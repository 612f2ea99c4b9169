"""The model index in Redis: every replica knows every model the fleet has loaded.

Implements :class:`registry.index.ModelIndex` over a :class:`~services.redis_kv.RedisKV`, so
``GET /api/models`` on any replica lists the fleet's models, and a replica asked for a model
id it never loaded finds the metadata CID (and tokenId) here and loads it from the content
store. Keys (under the store's prefix):

* ``index:models``: the set of known model ids;
* ``index:model:<model_id>``: a hash with the :class:`~registry.index.IndexEntry` fields
  (``loads`` counts the fleet's loads);
* ``index:by_cid`` and ``index:by_token``: metadata CID -> model id, tokenId -> model id;
* ``index:history``: the latest load events (JSON, newest first), trimmed to a bound.

Each write is one MULTI/EXEC round trip. Every load is also kept in a local
:class:`~registry.index.InMemoryModelIndex`: when Redis does not answer, reads fall back to
it and writes are queued (bounded) and sent once Redis answers again, so loading and serving
models this replica knows never fail because the index is unreachable. A model this replica
does not know, asked for while Redis does not answer, is a retryable 503 (``KVUnavailable``),
never a "not loaded" 404 that may be false.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from services.state.index import IndexEntry, InMemoryModelIndex
from services.state.kv import KVUnavailable
from services.state.redis_kv import RedisKV

log = logging.getLogger("cidserve.index")

# Writes queued while Redis is unreachable (the oldest are dropped past this).
MAX_PENDING = 1000
# Listing the whole index may take a few round trips' worth of data: a looser bound.
LIST_TIMEOUT_S = 0.25


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _entry(raw: dict[bytes, bytes]) -> IndexEntry | None:
    """An :class:`IndexEntry` from a Redis hash (None when empty or malformed)."""
    if not raw:
        return None
    f = {_text(k): _text(v) for k, v in raw.items()}
    try:
        token = f.get("token_id") or ""
        last_ms = f.get("last_load_ms") or ""
        return IndexEntry(
            model_id=str(f["model_id"]),
            metadata_cid=str(f["metadata_cid"]),
            name=str(f["name"]),
            version=str(f.get("version") or ""),
            token_id=int(token) if token else None,
            loads=int(f.get("loads") or 0),
            last_loaded_at=float(f.get("last_loaded_at") or 0.0),
            last_load_ms=float(last_ms) if last_ms else None,
            last_source=f.get("last_source") or None,
            bound_at=float(f["bound_at"]) if f.get("bound_at") else None,
            warmup=f.get("warmup") != "0",
        )
    except (KeyError, ValueError) as exc:
        log.warning("skipping malformed index entry %s: %s", f.get("model_id"), exc)
        return None


class RedisModelIndex:
    """The fleet's model index; see the module docstring."""

    def __init__(self, kv: RedisKV, *, history: int = 1000, replica: str | None = None) -> None:
        self.kv = kv
        self.history_len = history
        self.replica = replica or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self.local = InMemoryModelIndex()
        self._pending: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(
            maxlen=MAX_PENDING
        )
        self._models = kv.key("index:models")
        self._by_cid = kv.key("index:by_cid")
        self._by_token = kv.key("index:by_token")
        self._history = kv.key("index:history")
        self._outages_seen = kv.outages

    def _model_key(self, model_id: str) -> str:
        return self.kv.key(f"index:model:{model_id}")

    # -- writes ----------------------------------------------------------------------------

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
        event = {
            "model_id": model_id,
            "metadata_cid": metadata_cid,
            "name": name,
            "version": version,
            "token_id": token_id,
            "load_ms": load_ms,
            "source": source,
            "warmup": warmup,
            "at": time.time(),
            "replica": self.replica,
        }
        local = await self.local.record_load(
            model_id=model_id,
            metadata_cid=metadata_cid,
            name=name,
            version=version,
            token_id=token_id,
            load_ms=load_ms,
            source=source,
            warmup=warmup,
        )
        try:
            await self._flush()
            entry = await self.kv.run(lambda r: self._write_load(r, event))
        except KVUnavailable:
            self._pending.append(("load", event))
            return local
        return entry or local

    async def _write_load(self, r: Redis, e: dict[str, Any]) -> IndexEntry | None:
        key = self._model_key(e["model_id"])
        fields = {
            "model_id": e["model_id"],
            "metadata_cid": e["metadata_cid"],
            "name": e["name"],
            "version": e["version"],
            "token_id": "" if e["token_id"] is None else str(e["token_id"]),
            "last_loaded_at": repr(e["at"]),
            "last_load_ms": repr(float(e["load_ms"])),
            "last_source": e["source"],
            "last_replica": e["replica"],
            "warmup": "1" if e.get("warmup", True) else "0",
        }
        async with r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.hincrby(key, "loads", 1)
            pipe.sadd(self._models, e["model_id"])
            pipe.hset(self._by_cid, e["metadata_cid"], e["model_id"])
            if e["token_id"] is not None:
                pipe.hset(self._by_token, str(e["token_id"]), e["model_id"])
            pipe.lpush(self._history, orjson.dumps(e))
            pipe.ltrim(self._history, 0, self.history_len - 1)
            pipe.hgetall(key)
            results = await pipe.execute()
        return _entry(results[-1])

    async def forget(self, model_id: str) -> None:
        """Drop the model from the fleet's index: no replica will reload it by id."""
        await self.local.forget(model_id)
        try:
            await self._flush()
            await self.kv.run(lambda r: self._write_forget(r, model_id))
        except KVUnavailable:
            self._pending.append(("forget", {"model_id": model_id}))

    async def bind_name(self, model_id: str) -> None:
        """Mark the model as the operator's choice for its name (``bound_at``)."""
        await self.local.bind_name(model_id)
        at = time.time()
        try:
            await self._flush()
            await self.kv.run(lambda r: self._write_bind(r, {"model_id": model_id, "at": at}))
        except KVUnavailable:
            self._pending.append(("bind", {"model_id": model_id, "at": at}))

    async def _write_bind(self, r: Redis, args: dict[str, Any]) -> None:
        key = self._model_key(args["model_id"])
        # Only an entry that exists (a load was recorded) is bound.
        if await r.exists(key):
            await r.hset(key, "bound_at", repr(float(args["at"])))

    async def _write_forget(self, r: Redis, model_id: str) -> None:
        key = self._model_key(model_id)
        cid, token = await r.hmget(key, ["metadata_cid", "token_id"])
        async with r.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.srem(self._models, model_id)
            if cid:
                pipe.hdel(self._by_cid, _text(cid))
            if token:
                pipe.hdel(self._by_token, _text(token))
            await pipe.execute()

    async def _flush(self) -> None:
        """Send the writes queued during an outage (oldest first). After an outage in which
        Redis lost the index (restarted empty: no load history left), put back this replica's
        own entries that are missing, so the fleet finds the models it still serves."""
        if self._outages_seen == self.kv.outages:
            await self._send_pending()
            return
        lost = not await self.kv.run(lambda r: r.exists(self._history))
        await self._send_pending()
        if lost:
            await self.kv.run(self._restore, timeout_s=LIST_TIMEOUT_S)
        self._outages_seen = self.kv.outages

    async def _restore(self, r: Redis) -> None:
        entries = await self.local.entries()
        async with r.pipeline(transaction=False) as pipe:
            for e in entries:
                pipe.exists(self._model_key(e.model_id))
            present = await pipe.execute()
        missing = [e for e, there in zip(entries, present, strict=True) if not there]
        if not missing:
            return
        async with r.pipeline(transaction=True) as pipe:
            for e in missing:
                fields = {
                    "model_id": e.model_id,
                    "metadata_cid": e.metadata_cid,
                    "name": e.name,
                    "version": e.version,
                    "token_id": "" if e.token_id is None else str(e.token_id),
                    "loads": str(e.loads),
                    "last_loaded_at": repr(e.last_loaded_at),
                    "last_load_ms": "" if e.last_load_ms is None else repr(e.last_load_ms),
                    "last_source": e.last_source or "",
                    "last_replica": self.replica,
                }
                if e.bound_at is not None:
                    fields["bound_at"] = repr(e.bound_at)
                pipe.hset(self._model_key(e.model_id), mapping=fields)
                pipe.sadd(self._models, e.model_id)
                pipe.hsetnx(self._by_cid, e.metadata_cid, e.model_id)
                if e.token_id is not None:
                    pipe.hsetnx(self._by_token, str(e.token_id), e.model_id)
            await pipe.execute()
        log.warning("redis lost the model index; restored this replica's %d entries", len(missing))

    async def _send_pending(self) -> None:
        while self._pending:
            kind, args = self._pending[0]
            if kind == "load":
                await self.kv.run(lambda r, a=args: self._write_load(r, a))  # type: ignore[misc]
            elif kind == "bind":
                await self.kv.run(lambda r, a=args: self._write_bind(r, a))  # type: ignore[misc]
            else:
                await self.kv.run(lambda r, a=args: self._write_forget(r, a["model_id"]))  # type: ignore[misc]
            self._pending.popleft()

    # -- reads -----------------------------------------------------------------------------

    async def get(self, model_id: str) -> IndexEntry | None:
        key = self._model_key(model_id)
        try:
            await self._flush()
            raw = await self.kv.run(lambda r: r.hgetall(key))
        except KVUnavailable:
            local = await self.local.get(model_id)
            if local is None:
                # Not known here and the fleet's index did not answer: "not loaded" (404)
                # could be a wrong answer; the caller gets a retryable 503 instead.
                raise
            return local
        return _entry(raw)

    async def entries(self) -> list[IndexEntry]:
        """Every model the fleet knows, least recently loaded first."""
        try:
            await self._flush()
            found = await self.kv.run(self._read_all, timeout_s=LIST_TIMEOUT_S)
        except KVUnavailable:
            return await self.local.entries()
        return sorted(found, key=lambda e: e.last_loaded_at)

    async def _read_all(self, r: Redis) -> list[IndexEntry]:
        ids = sorted(await r.smembers(self._models))
        if not ids:
            return []
        async with r.pipeline(transaction=False) as pipe:
            for model_id in ids:
                pipe.hgetall(self._model_key(_text(model_id) or ""))
            rows = await pipe.execute()
        return [e for e in map(_entry, rows) if e is not None]

    async def find_by_cid(self, metadata_cid: str) -> IndexEntry | None:
        """The entry of the model that ``metadata_cid`` describes, if any replica loaded it."""
        return await self._find(self._by_cid, metadata_cid)

    async def find_by_token(self, token_id: int) -> IndexEntry | None:
        """The entry of the model last loaded under ``token_id``, if any."""
        return await self._find(self._by_token, str(token_id))

    async def _find(self, table: str, field: str) -> IndexEntry | None:
        try:
            model_id = _text(await self.kv.run(lambda r: r.hget(table, field)))
        except KVUnavailable:
            match = "metadata_cid" if table == self._by_cid else "token_id"
            for entry in await self.local.entries():
                if str(getattr(entry, match)) == field:
                    return entry
            return None
        return await self.get(model_id) if model_id else None

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest load events, newest first (model, CID, tokenId, replica, time, ms)."""
        stop = max(0, min(limit, self.history_len) - 1)
        try:
            raw = await self.kv.run(lambda r: r.lrange(self._history, 0, stop))
        except KVUnavailable:
            return []
        return [orjson.loads(item) for item in raw]
