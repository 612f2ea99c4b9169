"""The model index in Redis: what one replica loads, every replica knows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.state.kv import KVUnavailable
from services.state.redis_index import RedisModelIndex
from services.state.redis_kv import RedisKV
from tests.redis_support import REDIS_URL, RedisServer, delete_prefix, require_redis, unique_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    p = unique_prefix("index")
    yield p
    delete_prefix(REDIS_URL, p)


async def _load(index: RedisModelIndex, n: int, token: int | None = None) -> None:
    await index.record_load(
        model_id=f"m-{n}",
        metadata_cid=f"bafy-meta-{n}",
        name=f"m{n}",
        version="1",
        token_id=token,
        load_ms=12.5,
        source="local",
    )


def test_replicas_share_ids_cids_tokens_and_history(prefix: str) -> None:
    async def main() -> None:
        kv_a = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=250)
        kv_b = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=250)
        a = RedisModelIndex(kv_a, history=3, replica="replica-a")
        b = RedisModelIndex(kv_b, history=3, replica="replica-b")
        try:
            await _load(a, 1, token=7)
            await _load(a, 2)
            entry = await b.get("m-1")
            assert entry is not None
            assert (entry.metadata_cid, entry.token_id, entry.loads) == ("bafy-meta-1", 7, 1)
            assert entry.last_load_ms == 12.5 and entry.last_source == "local"
            assert [e.model_id for e in await b.entries()] == ["m-1", "m-2"]
            assert (await b.find_by_cid("bafy-meta-2")).model_id == "m-2"  # type: ignore[union-attr]
            assert (await b.find_by_token(7)).model_id == "m-1"  # type: ignore[union-attr]
            assert await b.get("m-unknown") is None

            # B loads m-1 too: one fleet-wide entry, two loads, newest load last in the list.
            await _load(b, 1, token=7)
            assert (await a.get("m-1")).loads == 2  # type: ignore[union-attr]
            assert [e.model_id for e in await a.entries()] == ["m-2", "m-1"]

            # History: newest first, bounded.
            await _load(a, 3)
            history = await a.history()
            assert [h["model_id"] for h in history] == ["m-3", "m-1", "m-2"]
            assert history[1]["replica"] == "replica-b"

            # Forget on B: gone for A too (no replica reloads it by id).
            await b.forget("m-1")
            assert await a.get("m-1") is None
            assert await a.find_by_token(7) is None
            assert [e.model_id for e in await a.entries()] == ["m-2", "m-3"]
        finally:
            await kv_a.aclose()
            await kv_b.aclose()

    asyncio.run(main())


def test_index_falls_back_to_local_and_catches_up(tmp_path: Path) -> None:
    async def main(server: RedisServer) -> None:
        kv = RedisKV(server.url, prefix="i:", timeout_ms=100, backoff_ms=100)
        other_kv = RedisKV(server.url, prefix="i:", timeout_ms=100, backoff_ms=100)
        index = RedisModelIndex(kv, replica="a")
        other = RedisModelIndex(other_kv, replica="b")
        try:
            await _load(index, 1)
            server.stop()
            # Loading and resolving go on without Redis: the local copy answers.
            entry = await asyncio.wait_for(
                index.record_load(
                    model_id="m-2",
                    metadata_cid="bafy-meta-2",
                    name="m2",
                    version="1",
                    token_id=None,
                    load_ms=1.0,
                    source="local",
                ),
                timeout=5,
            )
            assert entry.model_id == "m-2"
            assert (await index.get("m-2")).metadata_cid == "bafy-meta-2"  # type: ignore[union-attr]
            assert {e.model_id for e in await index.entries()} == {"m-1", "m-2"}
            # A model only the fleet might know: "unknown" could be false, so it is a
            # retryable failure (503 over HTTP), not None (404).
            with pytest.raises(KVUnavailable):
                await other.get("m-1")

            server.start()  # an empty Redis: the queued writes are sent once it answers
            deadline = asyncio.get_running_loop().time() + 5
            while True:
                await asyncio.sleep(0.15)
                ids = {e.model_id for e in await index.entries()}
                if ids == {"m-2"} or asyncio.get_running_loop().time() > deadline:
                    break
            assert (await other.get("m-2")).metadata_cid == "bafy-meta-2"  # type: ignore[union-attr]
        finally:
            await kv.aclose()
            await other_kv.aclose()

    with RedisServer(tmp_path) as server:
        asyncio.run(main(server))
