"""Two gateways on one Redis behave as one service; a Redis outage never fails a request.

Each gateway has its own Services (session cache, connection pool, event loop) and the
same content store, as two replicas behind a load balancer would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult
from services.chain.auth import SignatureAuthenticator
from services.chain.client import sign_url
from services.chain.signing import sign_request
from services.state.redis_kv import RedisKV
from tests.conftest import CAT_LABELS, make_settings
from tests.redis_support import (
    REDIS_URL,
    App,
    RedisServer,
    delete_prefix,
    require_redis,
    running_app,
    unique_prefix,
)

# A throwaway signing key (never funded, never used elsewhere).
TEST_KEY = "0x" + "4c" * 32


def _replica(settings: Any, store: LocalContentStore) -> Any:
    """A gateway with its own Redis connection pool, verifying signed requests through it."""
    assert settings.redis_url is not None
    kv = RedisKV(
        settings.redis_url,
        prefix=settings.redis_prefix,
        timeout_ms=settings.redis_timeout_ms,
        backoff_ms=settings.redis_backoff_ms,
    )
    return running_app(settings, store=store, kv=kv, authenticator=SignatureAuthenticator(kv))


@pytest.fixture(scope="module")
def fleet(workdir: Path, store: LocalContentStore) -> Iterator[tuple[App, App]]:
    require_redis()
    prefix = unique_prefix("fleet")
    settings = make_settings(
        workdir, redis_url=REDIS_URL, redis_prefix=prefix, redis_timeout_ms=250
    )
    try:
        with _replica(settings, store) as a, _replica(settings, store) as b:
            yield a, b
    finally:
        delete_prefix(REDIS_URL, prefix)


def predict(
    gw: App, model_id: str, image: bytes, headers: dict[str, str] | None = None, **params: Any
) -> httpx.Response:
    return gw.client.post(
        f"/api/models/{model_id}/predict",
        content=image,
        headers={"Content-Type": "image/jpeg", **(headers or {})},
        params=params,
    )


def test_replicas_share_the_index_and_predictions(
    fleet: tuple[App, App], efficientnet: PublishResult, photos: dict[str, bytes]
) -> None:
    a, b = fleet
    model_id = efficientnet.model_id
    r = a.client.post("/api/models/load", json={"metadataCid": efficientnet.metadata_cid})
    assert r.status_code == 200, r.text

    # B never loaded it, yet lists it (the fleet's index), not in its own memory.
    listing = b.client.get("/api/models").json()
    assert listing["models"] == []
    entry = next(e for e in listing["index"] if e["model_id"] == model_id)
    assert entry["metadata_cid"] == efficientnet.metadata_cid and entry["in_cache"] is False

    # A computes; B answers the same request from the shared cache without loading the model.
    first = predict(a, model_id, photos["chelsea"], top_k=3)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    shared = predict(b, model_id, photos["chelsea"], top_k=3)
    assert shared.status_code == 200 and shared.headers["X-Cache"] == "hit"
    assert shared.json()["predictions"] == first.json()["predictions"]
    assert b.client.get("/api/models").json()["models"] == []

    # Something A never computed: B resolves the id through the index, loads the model from
    # the content store and runs it; then A gets B's answer from the cache.
    own = predict(b, model_id, photos["coffee"], top_k=2)
    assert own.status_code == 200 and own.headers["X-Cache"] == "miss"
    assert own.json()["predictions"][0]["class"] not in CAT_LABELS
    assert [m["model_id"] for m in b.client.get("/api/models").json()["models"]] == [model_id]
    again = predict(a, model_id, photos["coffee"], top_k=2)
    assert again.headers["X-Cache"] == "hit"
    assert again.json()["predictions"] == own.json()["predictions"]
    index = {e["model_id"]: e for e in a.client.get("/api/models").json()["index"]}
    assert index[model_id]["loads"] == 2  # one load on each replica

    # A model id nobody loaded is unknown everywhere.
    missing = predict(b, "nothing-0000beef", photos["coffee"])
    assert missing.status_code == 404


def test_a_nonce_claimed_on_one_replica_is_refused_on_the_other(fleet: tuple[App, App]) -> None:
    a, b = fleet
    key = "cidserve:nonce:0x00000000000000000000000000000000000000aa:fleet-nonce-1"
    assert a.loop.run(a.services.kv.set_nx(key, b"1", 60)) is True
    assert b.loop.run(b.services.kv.set_nx(key, b"1", 60)) is False


def test_a_signed_request_replayed_on_another_replica_is_refused(
    fleet: tuple[App, App], efficientnet: PublishResult, photos: dict[str, bytes]
) -> None:
    a, b = fleet
    r = a.client.post("/api/models/load", json={"metadataCid": efficientnet.metadata_cid})
    assert r.status_code == 200
    path = f"/api/models/{efficientnet.model_id}/predict?top_k=1"
    body = photos["chelsea"]
    # Both replicas answer one host name (behind one balancer), as a deployment's replicas do.
    sent = {"Content-Type": "image/jpeg", "Host": "cidserve.example"}
    signed = sign_request(TEST_KEY, "POST", path, body, headers=sent)
    headers = {**sent, **signed}
    assert a.client.post(path, content=body, headers=headers).status_code == 200
    replay = b.client.post(path, content=body, headers=headers)
    assert replay.status_code == 401
    assert "nonce" in replay.json()["message"].lower()
    fresh = sign_request(TEST_KEY, "POST", path, body, headers=sent)
    ok = b.client.post(path, content=body, headers={**sent, **fresh})
    assert ok.status_code == 200


# -- Redis outage under a running gateway --------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def outage_gateway(
    tmp_path: Path, workdir: Path, store: LocalContentStore, efficientnet: PublishResult
) -> Iterator[tuple[App, RedisServer, _Records]]:
    records = _Records()
    logger = logging.getLogger("cidserve.redis")
    logger.addHandler(records)
    with RedisServer(tmp_path) as server:
        settings = make_settings(
            workdir,
            redis_url=server.url,
            redis_prefix="outage:",
            redis_timeout_ms=100,
            redis_backoff_ms=200,
        )
        try:
            with _replica(settings, store) as gw:
                r = gw.client.post(
                    "/api/models/load", json={"metadataCid": efficientnet.metadata_cid}
                )
                assert r.status_code == 200, r.text
                yield gw, server, records
        finally:
            logger.removeHandler(records)


def _until_cache(gw: App, model_id: str, image: bytes, want: str, timeout: float = 10) -> None:
    """Send the request until its X-Cache is ``want`` (each reply must be a good one)."""
    deadline = time.monotonic() + timeout
    while True:
        r = predict(gw, model_id, image, top_k=3)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["class"] in CAT_LABELS
        if r.headers["X-Cache"] == want:
            return
        assert time.monotonic() < deadline, f"X-Cache stayed {r.headers['X-Cache']}"
        time.sleep(0.1)


def test_redis_down_serves_uncached_then_resumes_without_restart(
    outage_gateway: tuple[App, RedisServer, _Records],
    efficientnet: PublishResult,
    photos: dict[str, bytes],
) -> None:
    gw, server, records = outage_gateway
    model_id = efficientnet.model_id
    image = photos["chelsea"]
    _until_cache(gw, model_id, image, "miss")
    _until_cache(gw, model_id, image, "hit")
    ready = gw.client.get("/health/ready").json()
    assert ready["status"] == "ready" and ready["dependencies"]["redis"]["status"] == "ok"

    server.stop()
    errors_before = gw.services.metrics.prediction_cache_errors._value.get()
    for _ in range(4):
        r = predict(gw, model_id, image, top_k=3)
        assert r.status_code == 200 and r.headers["X-Cache"] == "bypass"
        assert r.json()["predictions"][0]["class"] in CAT_LABELS
    assert gw.services.metrics.prediction_cache_errors._value.get() > errors_before
    ready = gw.client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded" and ready.json()["degraded"] == ["redis"]
    assert "redis" in ready.json()["message"]
    # The model index answers from the replica's own copy.
    listing = gw.client.get("/api/models").json()
    assert [e["model_id"] for e in listing["index"]] == [model_id]
    # Replay protection fails closed: a signed request cannot be checked, so it is refused.
    path = f"/api/models/{model_id}/predict?top_k=3"
    jpeg = {"Content-Type": "image/jpeg"}
    signed = sign_url(TEST_KEY, "POST", gw.url + path, jpeg, image)
    refused = gw.client.post(path, content=image, headers={**jpeg, **signed})
    assert refused.status_code == 503
    warnings = [m for m in records.messages if "unavailable" in m and "redis" in m]
    assert len(warnings) == 1, records.messages

    server.start()  # a fresh, empty Redis on the same port
    _until_cache(gw, model_id, image, "miss")
    _until_cache(gw, model_id, image, "hit", timeout=2)
    assert gw.client.get("/health/ready").json()["status"] == "ready"
    assert any("is back" in m for m in records.messages)


def test_frozen_redis_does_not_hold_requests(
    outage_gateway: tuple[App, RedisServer, _Records],
    efficientnet: PublishResult,
    photos: dict[str, bytes],
) -> None:
    gw, server, _ = outage_gateway
    model_id = efficientnet.model_id
    image = photos["chelsea"]
    _until_cache(gw, model_id, image, "miss")
    server.pause()  # accepts connections, answers nothing, for as long as it stays paused
    try:
        # A request that waited on Redis would wait forever; each one must come back on its
        # own (the client's 30 s limit is only the test's safety net).
        for _ in range(5):
            r = gw.client.post(
                f"/api/models/{model_id}/predict",
                content=image,
                headers={"Content-Type": "image/jpeg"},
                params={"top_k": 3},
                timeout=30,
            )
            assert r.status_code == 200 and r.headers["X-Cache"] == "bypass"
        assert gw.client.get("/health/ready", timeout=30).json()["status"] == "degraded"
    finally:
        server.resume()
    _until_cache(gw, model_id, image, "hit")
