"""The shared key-value store: the same behaviour on MemoryKV and RedisKV, and Redis outages.

Behavioural tests run against both implementations (parametrised ``make_kv``); the Redis one
uses the machine's Redis under a per-run prefix that is deleted at the end. Outage tests use a
private redis-server that is stopped, frozen and restarted under a running store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from services.state.kv import KeyValueStore, KVUnavailable, MemoryKV
from services.state.redis_kv import RedisKV
from tests.redis_support import REDIS_URL, RedisServer, delete_prefix, require_redis, unique_prefix

Factory = Callable[[], KeyValueStore]


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    require_redis()
    prefix = unique_prefix("kv")
    yield prefix
    delete_prefix(REDIS_URL, prefix)


@pytest.fixture(params=["memory", "redis"])
def make_kv(request: pytest.FixtureRequest) -> Factory:
    """A factory (called inside the test's event loop) for a fresh store of each kind."""
    if request.param == "memory":
        return MemoryKV
    prefix = request.getfixturevalue("redis_prefix") + f"{request.node.name}:"
    return lambda: RedisKV(REDIS_URL, prefix=prefix, timeout_ms=250)


def run(make_kv: Factory, scenario: Callable[[KeyValueStore], Awaitable[None]]) -> None:
    async def main() -> None:
        kv = make_kv()
        try:
            await scenario(kv)
        finally:
            await kv.aclose()

    asyncio.run(main())


def test_get_set_delete(make_kv: Factory) -> None:
    async def scenario(kv: KeyValueStore) -> None:
        assert await kv.get("absent") is None
        await kv.set("k", b"\x00value\xff", 60)
        assert await kv.get("k") == b"\x00value\xff"
        await kv.set("k", b"other", 60)
        assert await kv.get("k") == b"other"
        await kv.delete("k")
        assert await kv.get("k") is None
        await kv.delete("k")  # deleting an absent key is fine
        assert (await kv.health())["status"] == "ok"

    run(make_kv, scenario)


def test_ttl_expiry(make_kv: Factory) -> None:
    async def scenario(kv: KeyValueStore) -> None:
        await kv.set("short", b"1", 0.2)
        await kv.set("long", b"2", 60)
        assert await kv.get("short") == b"1"
        await asyncio.sleep(0.35)
        assert await kv.get("short") is None
        assert await kv.get("long") == b"2"

    run(make_kv, scenario)


def test_set_nx_claims_once_until_expiry(make_kv: Factory) -> None:
    async def scenario(kv: KeyValueStore) -> None:
        assert await kv.set_nx("nonce:abc", b"1", 0.3) is True
        assert await kv.set_nx("nonce:abc", b"1", 0.3) is False
        assert await kv.set_nx("nonce:other", b"1", 0.3) is True
        await asyncio.sleep(0.45)
        assert await kv.set_nx("nonce:abc", b"1", 0.3) is True

    run(make_kv, scenario)


def test_bucket_entry_bound_drops_oldest_only_its_own(make_kv: Factory) -> None:
    async def scenario(kv: KeyValueStore) -> None:
        await kv.set("nonce:keep", b"n", 60)
        bucket = kv.bucket("b-count", max_entries=3, max_bytes=1 << 20)
        assert kv.bucket("b-count", max_entries=3, max_bytes=1 << 20) is bucket
        for i in range(6):
            await bucket.set(f"k{i}", f"v{i}".encode(), 60)
        assert [await bucket.get(f"k{i}") for i in range(6)] == [
            None,
            None,
            None,
            b"v3",
            b"v4",
            b"v5",
        ]
        assert await kv.get("nonce:keep") == b"n"  # the bucket never evicts the parent's keys
        await bucket.delete("k4")
        await bucket.set("k6", b"v6", 60)  # room after the delete: nothing else goes
        assert [await bucket.get(f"k{i}") for i in (3, 4, 5, 6)] == [b"v3", None, b"v5", b"v6"]

    run(make_kv, scenario)


def test_bucket_byte_bound(make_kv: Factory) -> None:
    async def scenario(kv: KeyValueStore) -> None:
        bucket = kv.bucket("b-bytes", max_entries=100, max_bytes=100)
        for i in range(4):
            await bucket.set(f"k{i}", bytes([i]) * 30, 60)  # 120 bytes in all: k0 must go
        assert await bucket.get("k0") is None
        assert [await bucket.get(f"k{i}") for i in (1, 2, 3)] == [
            bytes([i]) * 30 for i in (1, 2, 3)
        ]
        await bucket.set("big", b"x" * 101, 60)  # larger than the whole bucket: not kept
        assert await bucket.get("big") is None
        assert await bucket.get("k3") == b"\x03" * 30

    run(make_kv, scenario)


def test_bucket_entries_expire(make_kv: Factory) -> None:
    async def scenario(kv: KeyValueStore) -> None:
        bucket = kv.bucket("b-ttl", max_entries=2, max_bytes=1 << 20)
        await bucket.set("old", b"1", 0.2)
        await asyncio.sleep(0.35)
        assert await bucket.get("old") is None
        # The expired entry no longer counts against the bound.
        await bucket.set("a", b"a", 60)
        await bucket.set("b", b"b", 60)
        assert (await bucket.get("a"), await bucket.get("b")) == (b"a", b"b")

    run(make_kv, scenario)


def test_two_redis_stores_share_state_and_nonces(redis_prefix: str) -> None:
    """Two replicas' stores on one Redis: a nonce claimed through A is refused through B."""
    prefix = redis_prefix + "shared:"

    async def main() -> None:
        a = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=250)
        b = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=250)
        try:
            assert await a.set_nx("cidserve:nonce:0xabc:n0001", b"1", 60) is True
            assert await b.set_nx("cidserve:nonce:0xabc:n0001", b"1", 60) is False
            assert await b.set_nx("cidserve:nonce:0xabc:n0002", b"1", 60) is True
            await a.set("license:1:0xabc", b"valid", 60)
            assert await b.get("license:1:0xabc") == b"valid"
            bucket_a = a.bucket("pred", max_entries=10, max_bytes=1 << 20)
            await bucket_a.set("answer", b"42", 60)
            assert await b.bucket("pred", max_entries=10, max_bytes=1 << 20).get("answer") == b"42"
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


# -- outages ------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_outage_warns_once_backs_off_and_reconnects(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cidserve.redis")

    async def main() -> None:
        kv = RedisKV(private_redis.url, prefix="t:", timeout_ms=100, backoff_ms=300)
        try:
            await kv.set("k", b"v", 60)
            assert await kv.get("k") == b"v"
            private_redis.stop()
            for _ in range(20):
                with pytest.raises(KVUnavailable):
                    await kv.get("k")
            health = await kv.health()
            assert health["status"] == "degraded"
            assert "redis" in str(health["kind"])
            warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
            # Inside the back-off nothing touches the network: the failures are counted once
            # per probe, not once per call.
            assert kv.failures < 20

            private_redis.start()  # same port, empty data

            async def back() -> bool:
                try:
                    await kv.set("k2", b"again", 60)
                except KVUnavailable:
                    return False
                return True

            await _until(back)
            assert await kv.get("k2") == b"again"
            assert (await kv.health())["status"] == "ok"
            assert any("is back" in r.getMessage() for r in caplog.records)
        finally:
            await kv.aclose()

    asyncio.run(main())


def test_frozen_redis_never_holds_a_call_past_the_timeout(private_redis: RedisServer) -> None:
    """A Redis that accepts connections but never answers: every call gives up on its own."""

    async def main() -> None:
        kv = RedisKV(private_redis.url, prefix="t:", timeout_ms=100, backoff_ms=200)
        try:
            await kv.set("k", b"v", 60)
            private_redis.pause()
            for _ in range(5):
                # wait_for is only the test's safety net: the store must raise KVUnavailable
                # itself, long before it.
                with pytest.raises(KVUnavailable):
                    await asyncio.wait_for(kv.get("k"), timeout=5)
                with pytest.raises(KVUnavailable):
                    await asyncio.wait_for(kv.set_nx("n", b"1", 60), timeout=5)
            assert (await asyncio.wait_for(kv.health(), 5))["status"] == "degraded"
            private_redis.resume()

            async def back() -> bool:
                try:
                    return await kv.get("k") == b"v"
                except KVUnavailable:
                    return False

            await _until(back)
        finally:
            await kv.aclose()

    asyncio.run(main())


def test_store_started_while_redis_is_down_connects_when_it_comes_up(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # not started yet

    async def main() -> None:
        kv = RedisKV(server.url, prefix="t:", timeout_ms=100, backoff_ms=100)
        try:
            assert await kv.connect(timeout_s=0.5) is False
            with pytest.raises(KVUnavailable):
                await kv.set_nx("n", b"1", 60)
            server.start()

            async def up() -> bool:
                try:
                    return await kv.set_nx("n", b"1", 60)
                except KVUnavailable:
                    return False

            await _until(up)
            assert await kv.set_nx("n", b"1", 60) is False
        finally:
            await kv.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()
