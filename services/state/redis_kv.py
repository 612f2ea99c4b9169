"""The :class:`~services.kv.KeyValueStore` over Redis: state shared by every replica.

One pooled ``redis.asyncio`` client per process. Every call is bounded by one short timeout
(``CIDSERVE_REDIS_TIMEOUT_MS``, a few ms): pool wait, connect and round trip included, so no
request waits on Redis longer than that. When Redis fails to answer the call raises
:class:`~services.kv.KVUnavailable` and the store becomes *degraded*: a warning is logged once
per outage, calls fail at once without touching the network for a short back-off
(``CIDSERVE_REDIS_BACKOFF_MS``), then one call probes Redis again; the first call that
succeeds ends the outage (logged). A refused or broken connection trips the back-off at once;
timeouts trip it after a few in a row, so one slow answer under load does not switch the
cache off for everyone.

Callers decide what ``KVUnavailable`` means: the prediction cache bypasses, the model index
falls back to its local copy, the replay (nonce) store fails closed.

Buckets (:meth:`RedisKV.bucket`) are namespaces with their own bounds, kept by one Lua script
per write (an index sorted by expiry time, the entry sizes, the summed bytes): a full bucket
drops its entries that expire first, and only its own. This needs a standalone Redis (not
Redis Cluster: the script touches keys it computes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from services.state.kv import KVUnavailable

log = logging.getLogger("cidserve.redis")

T = TypeVar("T")

# Timeouts in a row that count as an outage (a refused connection counts at once).
TIMEOUTS_TO_TRIP = 3

_BUCKET_SET = """
local key, idx, sizes, total_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local value = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local max_n = tonumber(ARGV[3])
local max_b = tonumber(ARGV[4])
local nx = ARGV[5] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total = tonumber(redis.call('GET', total_key) or '0')
local function drop(k)
  local s = redis.call('HGET', sizes, k)
  if s then
    redis.call('HDEL', sizes, k)
    total = total - tonumber(s)
  end
  redis.call('ZREM', idx, k)
  redis.call('DEL', k)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', now, 'LIMIT', 0, 256)) do
  drop(k)
end
local result = 0
if not (nx and redis.call('EXISTS', key) == 1) then
  drop(key)
  local size = string.len(value)
  if size <= max_b and max_n > 0 then
    redis.call('SET', key, value, 'PX', ttl_ms)
    redis.call('ZADD', idx, now + ttl_ms, key)
    redis.call('HSET', sizes, key, size)
    total = total + size
    result = 1
    while redis.call('ZCARD', idx) > max_n or total > max_b do
      local oldest = redis.call('ZRANGE', idx, 0, 0)
      if #oldest == 0 then break end
      drop(oldest[1])
    end
  end
end
if total < 0 then total = 0 end
redis.call('SET', total_key, total)
return result
"""

_BUCKET_DELETE = """
local s = redis.call('HGET', KEYS[3], KEYS[1])
if s then
  redis.call('HDEL', KEYS[3], KEYS[1])
  local total = tonumber(redis.call('GET', KEYS[4]) or '0') - tonumber(s)
  if total < 0 then total = 0 end
  redis.call('SET', KEYS[4], total)
end
redis.call('ZREM', KEYS[2], KEYS[1])
return redis.call('DEL', KEYS[1])
"""


def redact_url(url: str) -> str:
    """The URL without its password (for logs and ``/health``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisKV:
    """Redis-backed key-value store; see the module docstring."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout_ms: float = 5.0,
        prefix: str = "cidserve:",
        backoff_ms: float = 1000.0,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_ms / 1000
        self.backoff_s = backoff_ms / 1000
        # Each call is bounded by run()'s own timeout (this store's, or a longer one a caller
        # asks for); the pool's and the socket's are only a safety net behind it. They must be
        # longer than any call's bound: a socket read cut at 50 ms would fail a call allowed
        # 250 ms, and a pool wait cut early would read as a refused connection (which trips
        # the back-off at once) rather than as a timeout.
        net_s = max(10.0, 2 * self.timeout_s)
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=net_s,
            socket_timeout=net_s,
            socket_connect_timeout=net_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.client = Redis(connection_pool=self._pool)
        self._bucket_set = self.client.register_script(_BUCKET_SET)
        self._bucket_delete = self.client.register_script(_BUCKET_DELETE)
        self._buckets: dict[str, RedisBucket] = {}
        # Outage state: degraded since when, next probe not before, what went wrong.
        self._degraded_since: float | None = None
        self._retry_at = 0.0
        self._timeouts_in_row = 0
        self._last_error = ""
        self.failures = 0
        self.outages = 0

    # -- the bounded call ------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._degraded_since is not None

    @property
    def display_url(self) -> str:
        """The URL without its password."""
        return redact_url(self.url)

    def key(self, key: str) -> str:
        """``key`` under this store's prefix (what Redis sees)."""
        return self.prefix + key

    async def run(
        self, op: Callable[[Redis], Awaitable[T]], *, timeout_s: float | None = None
    ) -> T:
        """Run ``op(client)`` within the timeout, or raise :class:`KVUnavailable`.

        While degraded it raises at once until the back-off has passed; then one call probes.
        """
        if self._degraded_since is not None:
            now = time.monotonic()
            if now < self._retry_at:
                raise KVUnavailable(f"redis unavailable: {self._last_error}")
            self._retry_at = now + self.backoff_s  # one probe per back-off
        bound = timeout_s or self.timeout_s
        try:
            async with asyncio.timeout(bound):
                result = await op(self.client)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc, bound)
            if not _is_timeout(exc):
                # The server closed or reset a connection (a restart): the other idle
                # connections of the pool are just as dead. Drop them now, or each would fail
                # once after the server is back and start another outage.
                await self._drop_idle_connections()
            raise KVUnavailable(f"redis unavailable: {self._last_error}") from None
        self._timeouts_in_row = 0
        if self._degraded_since is not None:
            await self._drop_idle_connections()  # opened before the outage: maybe stale
            log.warning(
                "redis at %s is back after %.1f s; shared cache and state resume",
                self.display_url,
                time.monotonic() - self._degraded_since,
            )
            self._degraded_since = None
        return result

    async def _drop_idle_connections(self) -> None:
        with contextlib.suppress(Exception):
            await self._pool.disconnect(inuse_connections=False)

    def _failed(self, exc: BaseException, bound_s: float) -> None:
        self.failures += 1
        timeout = _is_timeout(exc)
        self._last_error = (
            f"no answer within {bound_s * 1000:g} ms"
            if isinstance(exc, TimeoutError)
            else f"{type(exc).__name__}: {exc}"
        )
        if timeout:
            self._timeouts_in_row += 1
            if self._timeouts_in_row < TIMEOUTS_TO_TRIP and self._degraded_since is None:
                return
        self._retry_at = time.monotonic() + self.backoff_s
        if self._degraded_since is None:
            self._degraded_since = time.monotonic()
            self.outages += 1
            log.warning(
                "redis at %s unavailable (%s): serving without the shared cache, "
                "retrying every %.1f s",
                self.display_url,
                self._last_error,
                self.backoff_s,
            )

    # -- KeyValueStore ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        k = self.key(key)
        return await self.run(lambda r: r.get(k))  # type: ignore[no-any-return]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        k = self.key(key)
        await self.run(lambda r: r.set(k, value, px=_ms(ttl_s)))

    async def set_nx(
        self, key: str, value: bytes, ttl_s: float, *, timeout_s: float | None = None
    ) -> bool:
        k = self.key(key)
        return bool(
            await self.run(lambda r: r.set(k, value, px=_ms(ttl_s), nx=True), timeout_s=timeout_s)
        )

    async def delete(self, key: str) -> None:
        k = self.key(key)
        await self.run(lambda r: r.delete(k))

    def bucket(self, name: str, *, max_entries: int, max_bytes: int) -> RedisBucket:
        found = self._buckets.get(name)
        if found is None:
            found = self._buckets[name] = RedisBucket(self, name, max_entries, max_bytes)
        return found

    async def connect(self, timeout_s: float = 2.0) -> bool:
        """Open the first connection with a generous timeout (start-up); False if down."""
        try:
            await self.run(lambda r: r.ping(), timeout_s=timeout_s)
        except KVUnavailable:
            return False
        return True

    async def health(self) -> dict[str, object]:
        base: dict[str, object] = {
            "kind": "redis",
            "url": self.display_url,
            "timeout_ms": self.timeout_s * 1000,
            "outages": self.outages,
        }
        try:
            t0 = time.perf_counter()
            await self.run(lambda r: r.ping())
            base["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        except KVUnavailable:
            pass
        if self._degraded_since is not None:
            return {
                "status": "degraded",
                **base,
                "message": f"{self._last_error}; serving without the shared cache, "
                "retrying automatically",
                "degraded_for_s": round(time.monotonic() - self._degraded_since, 1),
            }
        return {"status": "ok", **base}

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()


class RedisBucket:
    """A namespace of a :class:`RedisKV` with its own bounds; see the module docstring."""

    name = "redis"

    def __init__(self, kv: RedisKV, name: str, max_entries: int, max_bytes: int) -> None:
        self.kv = kv
        self.bucket_name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        base = kv.key(name)
        self._entry_prefix = base + ":"
        self._meta = [base + "!idx", base + "!sizes", base + "!bytes"]

    def _k(self, key: str) -> str:
        return self._entry_prefix + key

    async def get(self, key: str) -> bytes | None:
        k = self._k(key)
        return await self.kv.run(lambda r: r.get(k))  # type: ignore[no-any-return]

    async def _put(
        self, key: str, value: bytes, ttl_s: float, nx: bool, timeout_s: float | None = None
    ) -> bool:
        keys = [self._k(key), *self._meta]
        args: list[Any] = [value, _ms(ttl_s), self.max_entries, self.max_bytes, int(nx)]
        return bool(
            await self.kv.run(
                lambda _r: self.kv._bucket_set(keys=keys, args=args), timeout_s=timeout_s
            )
        )

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._put(key, value, ttl_s, nx=False)

    async def set_nx(
        self, key: str, value: bytes, ttl_s: float, *, timeout_s: float | None = None
    ) -> bool:
        return await self._put(key, value, ttl_s, nx=True, timeout_s=timeout_s)

    async def delete(self, key: str) -> None:
        keys = [self._k(key), *self._meta]
        await self.kv.run(lambda _r: self.kv._bucket_delete(keys=keys, args=[]))

    def bucket(self, name: str, *, max_entries: int, max_bytes: int) -> RedisBucket:
        return self.kv.bucket(
            f"{self.bucket_name}:{name}", max_entries=max_entries, max_bytes=max_bytes
        )

    async def entries(self) -> int:
        """Entries the bucket counts now (expired ones are dropped on the next write)."""
        idx = self._meta[0]
        return int(await self.kv.run(lambda r: r.zcard(idx)))

    async def health(self) -> dict[str, object]:
        return await self.kv.health()

    async def aclose(self) -> None:
        """The bucket shares its parent's pool: closing the parent closes it."""
