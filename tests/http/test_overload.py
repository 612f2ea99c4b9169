"""Overload as a client sees it: 503 + Retry-After from a model's full queue, 429 +
Retry-After past a caller's rate limit (shared by replicas on one Redis; a Redis outage lets
requests through), the shed counters and queue depth in /metrics, and a bounded load run of
many concurrent connections that gets only 200/429/503 and no socket error."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.chain.auth import SignatureAuthenticator
from services.chain.signing import sign_request
from services.state.kv import MemoryKV
from services.state.redis_kv import RedisKV
from tests.conftest import make_settings
from tests.harness import free_port
from tests.models import linear_model, slow_model
from tests.observability.test_metrics import parse
from tests.redis_support import (
    REDIS_URL,
    App,
    delete_prefix,
    require_redis,
    running_app,
    unique_prefix,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_overload

# Throwaway signing keys (never funded, never used elsewhere).
KEY_A = "0x" + "5a" * 32
KEY_B = "0x" + "5b" * 32
ROW = {"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.1] * 8}
SLOW_ROW = {"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": [1.0] * 1024}


@pytest.fixture(scope="module")
def models(workdir: Path, store: LocalContentStore) -> dict[str, PublishResult]:
    d = workdir / "overload-models"
    d.mkdir(exist_ok=True)
    return {
        "linear": asyncio.run(
            publish_model(store, linear_model(d / "lin.onnx", seed=7), name="ov-lin")
        ),
        "slow": asyncio.run(
            publish_model(store, slow_model(d / "slow.onnx", depth=200), name="ov-slow")
        ),
        "medium": asyncio.run(
            publish_model(store, slow_model(d / "medium.onnx", depth=40), name="ov-medium")
        ),
    }


def _load(app: App, pub: PublishResult) -> str:
    r = app.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


def _infer(app: App, model_id: str, row: dict[str, Any] = ROW, **headers: str) -> httpx.Response:
    return app.client.post(f"/v2/models/{model_id}/infer", json={"inputs": [row]}, headers=headers)


def _metrics(app: App) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = app.client.get("/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = frozenset(
            tuple(p.split("=", 1)) for p in labels.rstrip("}").replace('"', "").split(",") if p
        )
        out[(name, pairs)] = float(value)
    return out


# -- the bounded queue ------------------------------------------------------------------------


@pytest.fixture
def small_queue(workdir: Path, store: LocalContentStore) -> Iterator[App]:
    settings = make_settings(
        workdir, prediction_cache=False, max_queue_per_model=1, inference_workers=1
    )
    with running_app(settings, store=store) as app:
        yield app


def test_a_full_queue_answers_503_with_retry_after(
    small_queue: App, models: dict[str, PublishResult]
) -> None:
    app = small_queue
    model_id = _load(app, models["slow"])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(_infer, app, model_id, SLOW_ROW)
        deadline = time.monotonic() + 10
        while app.services.dataplane.admission.depth(model_id) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        refused = _infer(app, model_id, SLOW_ROW)
        refused_after = time.monotonic() - t0
        assert first.result().status_code == 200
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert "CIDSERVE_MAX_QUEUE_PER_MODEL" in refused.json()["error"]
    assert refused_after < 0.5  # refused at once, not after the queue
    # The /api route sheds the same way, with the API's error shape.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(_infer, app, model_id, SLOW_ROW)
        while app.services.dataplane.admission.depth(model_id) == 0:
            time.sleep(0.01)
        x = np.ones((1, 1024), dtype=np.float32).tobytes()
        api = app.client.post(
            f"/api/models/{model_id}/predict",
            content=x,
            headers={
                "Content-Type": "application/x-cidserve-tensor",
                "X-Tensor-Dtype": "float32",
                "X-Tensor-Shape": "1,1024",
            },
        )
        assert first.result().status_code == 200
    assert api.status_code == 503, api.text
    body = api.json()
    assert body["reason"] == "queue_full" and body["model_id"] == model_id
    assert "Retry-After" in api.headers
    samples = _metrics(app)
    assert samples[("cidserve_requests_shed_total", frozenset({("reason", "queue_full")}))] == 2
    assert samples[("cidserve_queue_depth", frozenset({("model", model_id)}))] == 0
    assert ("cidserve_requests_shed_total", frozenset({("reason", "rate_limited")})) in samples
    # Every metric parses as the exposition format.
    assert parse(app.client.get("/metrics").text)


# -- per-caller rate limits -------------------------------------------------------------------


def test_past_the_rate_limit_a_caller_gets_429_with_retry_after(
    workdir: Path, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    settings = make_settings(workdir, rate_limit_rps=0.5, rate_limit_burst=2)
    with running_app(settings, store=store) as app:
        model_id = _load(app, models["linear"])
        assert _infer(app, model_id).status_code == 200
        # The /api and /v2 inference routes share the caller's bucket.
        x = np.ones((1, 8), dtype=np.float32).tobytes()
        api = app.client.post(
            f"/api/models/{model_id}/predict",
            content=x,
            headers={
                "Content-Type": "application/x-cidserve-tensor",
                "X-Tensor-Dtype": "float32",
                "X-Tensor-Shape": "1,8",
            },
        )
        assert api.status_code == 200, api.text
        limited = _infer(app, model_id)
        assert limited.status_code == 429, limited.text
        assert 1 <= int(limited.headers["Retry-After"]) <= 2
        assert "rate limit" in limited.json()["error"]
        api = app.client.post(
            f"/api/models/{model_id}/predict",
            content=b"not even decoded",
            headers={"Content-Type": "application/x-cidserve-tensor"},
        )
        assert api.status_code == 429  # refused before the body is looked at
        assert api.json()["error"] == "Too many requests"
        # Without signature checks an address header is not an identity: no fresh bucket.
        spoofed = _infer(app, model_id, **{"X-Cidserve-Address": "0x" + "ab" * 20})
        assert spoofed.status_code == 429
        # Other routes are not limited.
        assert app.client.get("/health/ready").status_code == 200
        assert app.client.get(f"/v2/models/{model_id}").status_code == 200
        samples = _metrics(app)
        shed = samples[("cidserve_requests_shed_total", frozenset({("reason", "rate_limited")}))]
        assert shed == 3
        time.sleep(2.1)  # one token back
        assert _infer(app, model_id).status_code == 200


def _signed_infer(app: App, key: str, model_id: str) -> httpx.Response:
    path = f"/v2/models/{model_id}/infer"
    body = json.dumps({"inputs": [ROW]}).encode()
    sent = {"Content-Type": "application/json", "Host": "cidserve.example"}
    headers = {**sent, **sign_request(key, "POST", path, body, headers=sent)}
    return app.client.post(path, content=body, headers=headers)


def test_a_fresh_signing_key_per_request_gets_no_fresh_allowance(
    workdir: Path, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    settings = make_settings(workdir, rate_limit_rps=0.2, rate_limit_burst=2)
    kv = MemoryKV()
    with running_app(settings, store=store, kv=kv, authenticator=SignatureAuthenticator(kv)) as app:
        model_id = _load(app, models["linear"])
        assert _signed_infer(app, KEY_A, model_id).status_code == 200
        assert _signed_infer(app, KEY_B, model_id).status_code == 200
        # Keys cost nothing to make: a new signer from the same address is still charged to
        # the address's bucket, and so is an unsigned request or a made-up address header.
        assert _signed_infer(app, "0x" + "5e" * 32, model_id).status_code == 429
        assert _infer(app, model_id).status_code == 429
        assert _infer(app, model_id, **{"X-Cidserve-Address": "0x" + "cd" * 20}).status_code == 429


def _forget_client_bucket(app: App) -> None:
    """Forget the loopback client's bucket (a forgotten bucket starts full): the next request
    is as if it came from another address."""
    app.services.limiter.buckets._buckets.pop("client:127.0.0.1", None)


def test_a_signers_allowance_is_its_own_whatever_its_address(
    workdir: Path, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    settings = make_settings(workdir, rate_limit_rps=0.2, rate_limit_burst=1)
    kv = MemoryKV()
    with running_app(settings, store=store, kv=kv, authenticator=SignatureAuthenticator(kv)) as app:
        model_id = _load(app, models["linear"])
        # The signer's bucket is spent by a first request; the address's bucket is refilled
        # by hand (as if the next request came from elsewhere): still 429, for the signer.
        assert _signed_infer(app, KEY_A, model_id).status_code == 200
        _forget_client_bucket(app)
        again = _signed_infer(app, KEY_A, model_id)
        assert again.status_code == 429, again.text
        _forget_client_bucket(app)
        assert _signed_infer(app, KEY_B, model_id).status_code == 200  # another signer


def test_replicas_on_one_redis_share_each_callers_bucket(
    workdir: Path, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    require_redis()
    prefix = unique_prefix("ratelimit")
    settings = make_settings(
        workdir, redis_url=REDIS_URL, redis_prefix=prefix, rate_limit_rps=0.2, rate_limit_burst=2
    )
    try:
        with (
            running_app(settings, store=store, kv=RedisKV(REDIS_URL, prefix=prefix)) as a,
            running_app(settings, store=store, kv=RedisKV(REDIS_URL, prefix=prefix)) as b,
        ):
            model_id = _load(a, models["linear"])
            _load(b, models["linear"])
            assert _infer(a, model_id).status_code == 200
            assert _infer(b, model_id).status_code == 200
            limited = _infer(a, model_id)
            assert limited.status_code == 429
            assert int(limited.headers["Retry-After"]) in range(1, 6)
            assert _infer(b, model_id).status_code == 429
    finally:
        delete_prefix(REDIS_URL, prefix)


def test_with_redis_down_rate_limits_fail_open(
    workdir: Path, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(
        workdir, redis_url=down, rate_limit_rps=0.1, rate_limit_burst=1, prediction_cache=False
    )
    with running_app(settings, store=store) as app:
        model_id = _load(app, models["linear"])
        statuses = [_infer(app, model_id).status_code for _ in range(4)]
        assert statuses == [200] * 4
        samples = _metrics(app)
        assert samples[("cidserve_rate_limit_errors_total", frozenset())] >= 1
        rate_limited = frozenset({("reason", "rate_limited")})
        assert samples[("cidserve_requests_shed_total", rate_limited)] == 0


# -- many connections at once -----------------------------------------------------------------


def test_many_concurrent_connections_get_only_200_429_503(
    workdir: Path, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    """A bounded version of benchmarks/bench_overload.py: 64 connections, 384 requests, a
    queue of 8 on a ~0.1 s model: the overflow is shed, nothing breaks, p99 stays bounded."""
    timeout_ms = 10_000
    settings = make_settings(
        workdir,
        prediction_cache=False,
        max_queue_per_model=8,
        inference_timeout_ms=timeout_ms,
    )
    with running_app(settings, store=store) as app:
        model_id = _load(app, models["medium"])
        url = f"{app.url}/v2/models/{model_id}/infer"
        body = json.dumps({"inputs": [SLOW_ROW]}).encode()
        t0 = time.monotonic()
        point = asyncio.run(
            bench_overload.python_load(url, body, concurrency=64, total=384, timeout_s=20)
        )
        elapsed = time.monotonic() - t0
        samples = _metrics(app)
    assert point.socket_errors == 0, point
    assert set(point.statuses) <= {"200", "429", "503"}, point
    assert point.statuses.get("200", 0) > 0 and point.statuses.get("503", 0) > 0, point
    assert point.replies == 384
    assert point.p99_ms < timeout_ms, point
    assert point.problems(timeout_ms) == []
    shed = samples[("cidserve_requests_shed_total", frozenset({("reason", "queue_full")}))]
    delayed = samples[("cidserve_requests_shed_total", frozenset({("reason", "queue_delay")}))]
    assert shed + delayed == point.statuses["503"]
    assert elapsed < 120
