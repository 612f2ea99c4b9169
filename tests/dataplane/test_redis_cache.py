"""The prediction cache over HTTP, on the in-process store and on Redis (same tests for both).

Real EfficientNet-Lite0, real photos, a real gateway per backend. Each test starts from an
empty prediction cache.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from postprocessing import Options
from preprocessing import FeaturesPayload, ImagePayload, TensorPayload
from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.dataplane.prediction_cache import BUCKET, PredictionCache
from services.licensing import Caller, RequestView
from services.state.kv import KeyValueStore, MemoryKV
from services.state.redis_kv import RedisKV
from tests.conftest import CAT_LABELS, b64, make_settings
from tests.redis_support import (
    REDIS_URL,
    App,
    delete_prefix,
    keys_under,
    require_redis,
    running_app,
    unique_prefix,
)


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    require_redis()
    prefix = unique_prefix("cache")
    yield prefix
    delete_prefix(REDIS_URL, prefix)


@pytest.fixture(scope="module")
def effnet_nocache(store: LocalContentStore, efficientnet_onnx: Path) -> PublishResult:
    """The same network, published with ``cache_predictions: false``."""
    from registry import export

    return asyncio.run(
        publish_model(
            store,
            efficientnet_onnx,
            name="efficientnet-lite0-nocache",
            labels=export.imagenet_labels(),
            preset="efficientnet-lite",
            cache_predictions=False,
        )
    )


@pytest.fixture(scope="module", params=["memory", "redis"])
def app(
    request: pytest.FixtureRequest,
    workdir: Path,
    store: LocalContentStore,
    efficientnet: PublishResult,
    effnet_nocache: PublishResult,
) -> Iterator[App]:
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        settings = make_settings(
            workdir, redis_url=REDIS_URL, redis_prefix=prefix, redis_timeout_ms=250
        )
    else:
        settings = make_settings(workdir)
    with running_app(settings, store=store) as gw:
        for pub in (efficientnet, effnet_nocache):
            r = gw.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
            assert r.status_code == 200, r.text
        assert gw.services.kv.name == request.param
        yield gw


@pytest.fixture
def gw(app: App) -> App:
    """The backend's gateway with an empty prediction cache."""
    kv = app.services.kv
    if isinstance(kv, RedisKV):
        delete_prefix(REDIS_URL, kv.key(BUCKET))
    else:
        assert isinstance(kv, MemoryKV)
        app.loop.run(kv.bucket(BUCKET, max_entries=1, max_bytes=1).aclose())
    return app


def predict(gw: App, model_id: str, image: bytes, **params: Any) -> tuple[str, dict[str, Any]]:
    r = gw.client.post(
        f"/api/models/{model_id}/predict",
        content=image,
        headers={"Content-Type": "image/jpeg"},
        params=params,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Cache"] == body["cache"]
    return body["cache"], body


def execute(gw: App, model_id: str, input_data: dict[str, Any], **options: Any) -> tuple[str, Any]:
    r = gw.client.post(
        "/api/inference/execute",
        json={"model_id": model_id, "input_data": input_data, "options": options},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Cache"] == body["cache"]
    return body["cache"], body


def counter(gw: App, what: str) -> float:
    metric = getattr(gw.services.metrics, f"prediction_cache_{what}")
    return float(metric._value.get())


def test_second_identical_request_is_a_hit_with_the_same_answer(
    gw: App, efficientnet: PublishResult, photos: dict[str, bytes]
) -> None:
    model_id = efficientnet.model_id
    hits, misses = counter(gw, "hits"), counter(gw, "misses")
    status, first = predict(gw, model_id, photos["chelsea"], top_k=3)
    assert status == "miss"
    assert first["predictions"][0]["class"] in CAT_LABELS
    assert first["metrics"]["inference_time_ms"] > 0
    status, second = predict(gw, model_id, photos["chelsea"], top_k=3)
    assert status == "hit"
    assert second["predictions"] == first["predictions"]
    assert second["details"] == first["details"]
    assert second["model_id"] == model_id
    # Served from the cache: nothing was decoded or run.
    assert second["metrics"]["preprocessing_time_ms"] == 0
    assert second["metrics"]["inference_time_ms"] == 0
    assert counter(gw, "hits") == hits + 1 and counter(gw, "misses") == misses + 1
    # The hit counts as a request of the model.
    model = gw.client.get(f"/api/models/{model_id}").json()
    assert model["requests"] >= 2


def test_other_options_or_other_bytes_never_get_a_cached_answer(
    gw: App, efficientnet: PublishResult, photos: dict[str, bytes]
) -> None:
    model_id = efficientnet.model_id
    assert predict(gw, model_id, photos["chelsea"], top_k=3)[0] == "miss"
    status, top1 = predict(gw, model_id, photos["chelsea"], top_k=1)
    assert status == "miss" and len(top1["predictions"]) == 1
    status, thresholded = predict(gw, model_id, photos["chelsea"], top_k=3, threshold=0.99)
    assert status == "miss" and thresholded["predictions"] == []
    # The same picture as PNG: other bytes, so computed again (same answer, not a cached one).
    status, png = predict(gw, model_id, photos["chelsea_png"], top_k=3)
    assert status == "miss" and png["predictions"][0]["class"] in CAT_LABELS
    status, coffee = predict(gw, model_id, photos["coffee"], top_k=3)
    assert status == "miss"
    assert coffee["predictions"][0]["class"] not in CAT_LABELS
    # The timeout does not change the answer: same entry.
    assert predict(gw, model_id, photos["chelsea"], top_k=3, timeout=60_000)[0] == "hit"
    assert predict(gw, model_id, photos["coffee"], top_k=3)[0] == "hit"


def test_json_and_raw_uploads_share_entries(
    gw: App, efficientnet: PublishResult, photos: dict[str, bytes]
) -> None:
    model_id = efficientnet.model_id
    assert predict(gw, model_id, photos["astronaut"], top_k=2)[0] == "miss"
    image = {"format": "base64_jpeg", "content": b64(photos["astronaut"])}
    status, body = execute(gw, model_id, image, top_k=2)
    assert status == "hit"
    data_url = {
        "format": "base64_image",
        "content": "data:image/jpeg;base64," + b64(photos["astronaut"]),
    }
    assert execute(gw, model_id, data_url, top_k=2)[1]["predictions"] == body["predictions"]


def test_tensor_inputs_are_keyed_by_dtype_shape_and_bytes(
    gw: App, efficientnet: PublishResult
) -> None:
    model_id = efficientnet.model_id
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)

    def tensor(a: np.ndarray) -> dict[str, Any]:
        raw = base64.b64encode(a.astype("<f4").tobytes()).decode()
        return {
            "format": "tensor",
            "content": {"data": raw, "dtype": "float32", "shape": [1, 3, 224, 224]},
        }

    assert execute(gw, model_id, tensor(x), top_k=3)[0] == "miss"
    assert execute(gw, model_id, tensor(x), top_k=3)[0] == "hit"
    y = x.copy()
    y[0, 0, 0, 0] += 1.0  # one value differs
    assert execute(gw, model_id, tensor(y), top_k=3)[0] == "miss"


def test_model_that_opts_out_is_never_cached(
    gw: App, effnet_nocache: PublishResult, photos: dict[str, bytes]
) -> None:
    hits = counter(gw, "hits")
    for _ in range(2):
        status, body = predict(gw, effnet_nocache.model_id, photos["chelsea"], top_k=3)
        assert status == "bypass"
        assert body["predictions"][0]["class"] in CAT_LABELS
    assert counter(gw, "hits") == hits
    kv = gw.services.kv
    if isinstance(kv, RedisKV):
        assert keys_under(REDIS_URL, kv.key(BUCKET) + ":") == []


def test_cache_stores_json_not_timings(
    gw: App, efficientnet: PublishResult, photos: dict[str, bytes]
) -> None:
    predict(gw, efficientnet.model_id, photos["coffee"], top_k=2)
    kv = gw.services.kv
    bucket = kv.bucket(BUCKET, max_entries=1, max_bytes=1)
    if isinstance(kv, RedisKV):
        keys = keys_under(REDIS_URL, kv.key(BUCKET) + ":")
        assert len(keys) == 1
        key = keys[0].removeprefix(kv.key(BUCKET) + ":")
    else:
        assert isinstance(bucket, MemoryKV) and len(bucket) == 1
        key = next(iter(bucket._data))
    raw = gw.loop.run(bucket.get(key))
    assert raw is not None and raw.startswith(b"{")
    assert b"metrics" not in raw and b"time_ms" not in raw
    assert b'"predictions"' in raw


# -- the cache on its own: TTL and size bound, on both backends ----------------------------


@pytest.fixture(params=["memory", "redis"])
def pred_kv(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryKV
    prefix = request.getfixturevalue("redis_prefix") + f"unit-{request.node.name}:"
    return lambda: RedisKV(REDIS_URL, prefix=prefix, timeout_ms=250)


def test_prediction_cache_ttl_and_size_bound(pred_kv: Any) -> None:
    async def main() -> None:
        kv: KeyValueStore = pred_kv()
        try:
            cache = PredictionCache(kv.bucket(BUCKET, max_entries=2, max_bytes=1 << 20), ttl_s=0.3)
            opts = Options(top_k=3)
            a, b, c = (ImagePayload(bytes([i]) * 64) for i in range(3))
            for p in (a, b):
                look = await cache.lookup("bafy-cid", p, opts)
                assert look.status == "miss" and look.key
                await cache.store_reply(look.key, [{"class": "x", "confidence": 0.5}], {"e": 1})
            hit = await cache.lookup("bafy-cid", a, opts)
            assert hit.status == "hit" and hit.predictions == [{"class": "x", "confidence": 0.5}]
            assert hit.details == {"e": 1}
            # Another model (CID) with the same bytes: not this entry.
            assert (await cache.lookup("bafy-other", a, opts)).status == "miss"
            # A third entry pushes the oldest out (the bound is 2).
            look = await cache.lookup("bafy-cid", c, opts)
            await cache.store_reply(look.key or "", [], {})
            assert (await cache.lookup("bafy-cid", a, opts)).status == "miss"
            assert (await cache.lookup("bafy-cid", c, opts)).status == "hit"
            # TTL: gone after it.
            await asyncio.sleep(0.45)
            assert (await cache.lookup("bafy-cid", c, opts)).status == "miss"
        finally:
            await kv.aclose()

    asyncio.run(main())


def test_prediction_cache_key_covers_every_input_kind() -> None:
    async def main() -> None:
        cache = PredictionCache(MemoryKV(), ttl_s=60)
        k = cache.key_for
        arr = np.arange(6, dtype=np.float32).reshape(2, 3)
        keys = {
            await k("cid", ImagePayload(b"abc"), Options()),
            await k("cid", ImagePayload(b"abd"), Options()),
            await k("cid", ImagePayload(b"abc"), Options(top_k=4)),
            await k("cid", ImagePayload(b"abc"), Options(threshold=0.5)),
            await k("cid2", ImagePayload(b"abc"), Options()),
            await k("cid", TensorPayload(arr), Options()),
            await k("cid", TensorPayload(arr.reshape(3, 2)), Options()),
            await k("cid", TensorPayload(arr.astype(np.float64)), Options()),
            await k("cid", TensorPayload(arr, "other_input"), Options()),
            await k("cid", FeaturesPayload({"a": 1.0, "b": 2.0}), Options()),
            await k("cid", FeaturesPayload({"a": 1.0, "b": 2.5}), Options()),
        }
        assert len(keys) == 11
        same = {
            await k("cid", FeaturesPayload({"a": 1.0, "b": 2.0}), Options()),
            await k("cid", FeaturesPayload({"b": 2.0, "a": 1.0}), Options()),
        }
        assert len(same) == 1
        # A transposed (non-contiguous) view keys like its contiguous copy.
        t = arr.T
        assert await k("cid", TensorPayload(t), Options()) == await k(
            "cid", TensorPayload(np.ascontiguousarray(t)), Options()
        )

    asyncio.run(main())


# -- the license gate comes before the cache ---------------------------------------------

ALLOWED = "0x00000000000000000000000000000000000000aa"


class HeaderCaller:
    """Identifies the caller by a plain header (a test deployment's authenticator)."""

    async def authenticate(self, request: RequestView) -> Caller | None:
        address = request.headers.get("x-test-caller")
        return Caller(address) if address else None


class OneLicensee:
    """A license backend where only ALLOWED holds licenses."""

    name = "test"
    enabled = True

    async def has_valid_license(self, caller: Caller, token_id: int) -> bool:
        return caller.address == ALLOWED

    async def check_token_metadata(self, token_id: int, metadata_cid: str) -> None:
        return None

    async def token_of_content(self, metadata_cid: str) -> int | None:
        return None  # no chain: the token a load names is the model's

    async def health(self) -> dict[str, object]:
        return {"status": "ok"}


def test_cached_answer_never_reaches_an_unlicensed_caller(
    workdir: Path, store: LocalContentStore, efficientnet: PublishResult, photos: dict[str, bytes]
) -> None:
    settings = make_settings(workdir)
    with running_app(
        settings, store=store, licensing=OneLicensee(), authenticator=HeaderCaller()
    ) as g:
        r = g.client.post(
            "/api/models/load", json={"metadataCid": efficientnet.metadata_cid, "tokenId": 7}
        )
        assert r.status_code == 200, r.text
        url = f"/api/models/{efficientnet.model_id}/predict"
        jpeg = {"Content-Type": "image/jpeg"}
        for expected in ("miss", "hit"):
            r = g.client.post(
                url, content=photos["chelsea"], headers={**jpeg, "X-Test-Caller": ALLOWED}
            )
            assert r.status_code == 200 and r.headers["X-Cache"] == expected
        hits = counter(g, "hits")
        other = "0x00000000000000000000000000000000000000bb"
        r = g.client.post(url, content=photos["chelsea"], headers={**jpeg, "X-Test-Caller": other})
        assert r.status_code == 403 and "predictions" not in r.json()
        r = g.client.post(url, content=photos["chelsea"], headers=jpeg)
        assert r.status_code == 401 and "predictions" not in r.json()
        assert counter(g, "hits") == hits
