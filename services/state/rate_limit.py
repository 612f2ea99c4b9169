"""Per-caller rate limits: one token bucket per caller, in the shared state.

A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; each request takes one.
An empty bucket refuses with :class:`~services.errors.RateLimited` (429 + ``Retry-After``,
the time until the next token, at least 1 s).

* :class:`MemoryTokenBuckets`: one process (the embedded default); at most ``max_keys``
  buckets, the least recently used forgotten first (a forgotten bucket starts full again).
* :class:`RedisTokenBuckets`: every replica on one Redis shares each caller's bucket. One Lua
  script reads, refills, takes and writes the bucket atomically, on Redis' own clock (replica
  clocks may differ); an idle bucket expires once it would be full again.

When Redis does not answer, :class:`CallerLimiter` lets the request through (fail open) and
counts ``cidserve_rate_limit_errors_total``: the limit protects the fleet's capacity, not a
secret, and each instance's own queue bounds (services/dataplane/admission.py) still shed
what it cannot run, so an outage of the shared store does not become an outage of the service.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.errors import RateLimited
from services.observability.metrics import Metrics
from services.state.kv import KeyValueStore, KVUnavailable
from services.state.redis_kv import RedisKV

log = logging.getLogger("cidserve.ratelimit")

BUCKET_PREFIX = "rl:"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate_per_s`` tokens a second, at most ``burst`` at once."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs rate_per_s > 0 and burst >= 1")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a token was taken; if not, how long until one is there."""

    allowed: bool
    retry_after_s: float = 0.0


class TokenBuckets(Protocol):
    async def take(self, key: str, limit: RateLimit) -> Verdict:
        """Take one token from ``key``'s bucket; raises KVUnavailable when it cannot tell."""
        ...


class MemoryTokenBuckets:
    """Buckets of one process; see the module docstring."""

    def __init__(
        self, max_keys: int = 100_000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str, limit: RateLimit) -> Verdict:
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - at) * limit.rate_per_s)
        if tokens >= 1.0:
            verdict = Verdict(True)
            tokens -= 1.0
        else:
            verdict = Verdict(False, (1.0 - tokens) / limit.rate_per_s)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return verdict


# KEYS[1]: the bucket; ARGV: rate per second, burst. Returns {allowed (0/1), wait in ms}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, wait_ms}
"""


class RedisTokenBuckets:
    """Buckets shared by every replica on one Redis; see the module docstring."""

    def __init__(self, kv: RedisKV) -> None:
        self.kv = kv
        self._take = kv.client.register_script(_TAKE)

    async def take(self, key: str, limit: RateLimit) -> Verdict:
        keys = [self.kv.key(BUCKET_PREFIX + key)]
        args = [repr(float(limit.rate_per_s)), str(limit.burst)]
        allowed, wait_ms = await self.kv.run(lambda _r: self._take(keys=keys, args=args))
        return Verdict(bool(int(allowed)), int(wait_ms) / 1000)


def token_buckets_for(kv: KeyValueStore) -> TokenBuckets:
    """Buckets on Redis when the shared state is Redis, else in this process."""
    if isinstance(kv, RedisKV):
        return RedisTokenBuckets(kv)
    return MemoryTokenBuckets()


class CallerLimiter:
    """Applies one :class:`RateLimit` to every caller key; fails open (module docstring)."""

    def __init__(
        self, buckets: TokenBuckets, limit: RateLimit, *, metrics: Metrics | None = None
    ) -> None:
        self.buckets = buckets
        self.limit = limit
        self.metrics = metrics
        self._store_down = False

    async def check(self, key: str) -> None:
        """Take a token for ``key``, or raise :class:`RateLimited`."""
        try:
            verdict = await self.buckets.take(key, self.limit)
        except KVUnavailable as exc:
            if self.metrics is not None:
                self.metrics.rate_limit_errors.inc()
            if not self._store_down:
                log.warning("rate limits not enforced while the shared store is down: %s", exc)
                self._store_down = True
            return
        if self._store_down:
            log.warning("rate limits enforced again")
            self._store_down = False
        if verdict.allowed:
            return
        if self.metrics is not None:
            self.metrics.requests_shed.labels("rate_limited").inc()
        retry_after = max(1, math.ceil(verdict.retry_after_s))
        raise RateLimited(
            f"rate limit of {self.limit.rate_per_s:g} requests/s (burst {self.limit.burst}) "
            f"reached; retry in {retry_after} s",
            retry_after_s=retry_after,
            reason="rate_limited",
        )
