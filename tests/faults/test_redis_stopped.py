"""Redis is stopped under load, then started again.

A gateway keeps its prediction cache, its nonce (replay) store and its model index in a
private ``redis-server`` (``tests/redis_support.py``). Four clients run: two send unsigned
requests to an open model (a few fixed inputs, so the cache hits), one sends signed requests,
one lists the models. With Redis stopped, unsigned requests are served without the cache
(``X-Cache: bypass``), the index answers from the replica's own copy, and signed requests are
refused with 503 + ``Retry-After``: replay protection fails closed (docs/REDIS.md). No reply
is ever wrong. Once Redis is back (empty, same port), signed requests and cache hits return
within 5 s, without a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

from registry.local_store import LocalContentStore
from registry.publish import publish_model
from services.chain.auth import SignatureAuthenticator
from services.chain.client import sign_url
from services.state.redis_kv import RedisKV
from tests.conftest import make_settings
from tests.faults.linear import Linear
from tests.faults.load import Call, Load, Outcome, assert_nothing_lies, summary
from tests.models import linear_model
from tests.redis_support import RedisServer, running_app

# A throwaway signing key (never funded, never used elsewhere).
KEY = "0x" + "5d" * 32
INFERENCE_TIMEOUT_MS = 2000
JSON = {"Content-Type": "application/json"}


def first(outcomes: list[Outcome], kind: str, after: float, **want: object) -> Outcome | None:
    for o in outcomes:
        if (
            o.kind == kind
            and o.sent_at >= after
            and all(getattr(o, k) == v for k, v in want.items())
        ):
            return o
    return None


def test_redis_stopped_under_load(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path / "store")
    pub = asyncio.run(publish_model(store, linear_model(tmp_path / "m.onnx", seed=3), name="m"))
    lin = Linear(3)
    with RedisServer(tmp_path) as server:
        settings = make_settings(
            tmp_path,
            redis_url=server.url,
            redis_prefix="faults:",
            # Generous for a 2-core machine under load; an outage is seen at once anyway
            # (a refused connection marks the store down without waiting).
            redis_timeout_ms=1000,
            redis_backoff_ms=200,
            inference_timeout_ms=INFERENCE_TIMEOUT_MS,
        )
        kv = RedisKV(
            server.url,
            prefix=settings.redis_prefix,
            timeout_ms=settings.redis_timeout_ms,
            backoff_ms=settings.redis_backoff_ms,
        )
        with running_app(
            settings, store=store, kv=kv, authenticator=SignatureAuthenticator(kv)
        ) as app:
            r = app.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
            assert r.status_code == 200, r.text
            counter = itertools.count()

            def make_call(client: int) -> Call:
                k = next(counter)
                if client == 3:
                    return Call(
                        "index",
                        "GET",
                        "/api/models",
                        check=lambda r: (
                            [e["model_id"] for e in r.json()["index"]] == [pub.model_id]
                        ),
                        retry=True,
                    )
                body, x = lin.execute_body(pub.model_id, k)
                headers = dict(JSON)
                kind = "open"
                if client == 2:
                    kind = "signed"
                    url = app.url + "/api/inference/execute"
                    headers |= sign_url(KEY, "POST", url, headers, body)
                return Call(
                    kind,
                    "POST",
                    "/api/inference/execute",
                    check=lambda r: lin.execute_is_right(r, x),
                    headers=headers,
                    content=body,
                )

            with Load(app.url, make_call, clients=4) as load:
                time.sleep(1.5)
                stopping_at = time.monotonic()
                server.stop()
                stopped_at = time.monotonic()
                time.sleep(2.5)
                ready = app.client.get("/health/ready")
                assert ready.status_code == 200 and ready.json()["degraded"] == ["redis"]
                # Redis may answer from any moment after start() is called: a request that
                # ends after that is not counted as made during the outage.
                restarting_at = time.monotonic()
                server.start()  # a fresh, empty Redis on the same port
                restarted_at = time.monotonic()
                deadline = restarted_at + 5
                while time.monotonic() < deadline:
                    seen = load.since(restarted_at)
                    signed_back = first(seen, "signed", restarted_at, status=200)
                    hit_back = first(seen, "open", restarted_at, cache="hit")
                    if signed_back and hit_back:
                        break
                    time.sleep(0.05)
                time.sleep(0.5)
            outcomes = load.stop()
            deadline = time.monotonic() + 5
            while app.client.get("/health/ready").json()["status"] != "ready":
                assert time.monotonic() < deadline, "readiness did not come back within 5 s"
                time.sleep(0.1)

    counts = summary(outcomes)
    assert_nothing_lies(outcomes, max_latency_s=INFERENCE_TIMEOUT_MS / 1000)
    assert all(o.status is not None for o in outcomes), counts
    before = [o for o in outcomes if o.ended_at < stopping_at]
    down = [o for o in outcomes if stopped_at <= o.sent_at and o.ended_at < restarting_at]
    # Unsigned requests and the index never fail; signed ones fail closed, only while down.
    assert all(o.status == 200 for o in outcomes if o.kind != "signed"), counts
    assert all(o.status == 200 for o in before), counts
    assert any(o.kind == "open" and o.cache == "hit" for o in before), counts
    down_signed = [o for o in down if o.kind == "signed"]
    down_open = [o for o in down if o.kind == "open"]
    assert down_signed and all(o.status == 503 for o in down_signed), counts
    assert all("replay" in o.body.lower() or "nonce" in o.body.lower() for o in down_signed)
    assert down_open and all(o.cache == "bypass" for o in down_open), counts
    # Back within 5 s of the restart: signed requests accepted, the cache hitting again.
    signed_back = first(outcomes, "signed", restarted_at, status=200)
    hit_back = first(outcomes, "open", restarted_at, cache="hit")
    assert signed_back is not None and hit_back is not None, counts
    assert signed_back.ended_at - restarted_at < 5
    assert hit_back.ended_at - restarted_at < 5
    late = [o for o in outcomes if o.kind == "signed" and o.sent_at > signed_back.ended_at]
    # Back for good: no second outage from connections opened before the restart.
    assert late and all(o.status == 200 for o in late), counts
    print(
        f"\nredis stopped: {counts}; signed back {signed_back.ended_at - restarted_at:.2f} s and "
        f"cache hits back {hit_back.ended_at - restarted_at:.2f} s after the restart; "
        f"max latency {max(o.latency_s for o in outcomes) * 1000:.0f} ms"
    )
