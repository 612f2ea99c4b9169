"""End to end over HTTP: a real ImageNet model classifies real photos."""

from __future__ import annotations

import concurrent.futures

from registry.publish import PublishResult
from tests.conftest import CAT_LABELS, Gateway, b64


def _classes(body: dict) -> list[str]:
    return [p["class"] for p in body["predictions"]]


def test_load_reply_follows_the_api_contract(gateway: Gateway, efficientnet: PublishResult):
    r = gateway.client.post("/api/models/load", json={"metadataCid": efficientnet.metadata_cid})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert body["model_id"] == efficientnet.model_id
    assert isinstance(body["load_time_ms"], int | float)
    assert body["execution_provider"] == "CPUExecutionProvider"
    status = body["cacheStatus"]
    assert status["max_size"] == 3
    assert efficientnet.model_id in status["models_in_cache"]
    assert status["current_size"] == len(status["models_in_cache"])


def test_chelsea_is_a_cat_and_coffee_is_espresso_base64(
    gateway: Gateway, effnet_id: str, photos: dict[str, bytes]
):
    r = gateway.client.post(
        "/api/inference/execute",
        json={
            "model_id": effnet_id,
            "execution_mode": "sync",
            "input_data": {"format": "base64_jpeg", "content": b64(photos["chelsea"])},
            "options": {"top_k": 3},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["model_id"] == effnet_id
    assert len(body["predictions"]) == 3
    assert CAT_LABELS & set(_classes(body))
    top = body["predictions"][0]
    assert set(top) >= {"class", "confidence", "class_id"}
    assert 0 < top["confidence"] <= 1
    confidences = [p["confidence"] for p in body["predictions"]]
    assert confidences == sorted(confidences, reverse=True)
    metrics = body["metrics"]
    for key in ("preprocessing_time_ms", "inference_time_ms", "postprocessing_time_ms"):
        assert 0 <= metrics[key] <= metrics["total_time_ms"]
    assert body["details"]["entropy"] > 0
    assert body["details"]["num_classes"] == 1000

    r = gateway.client.post(
        "/api/inference/execute",
        json={
            "model_id": effnet_id,
            "input_data": {"format": "base64_png", "content": b64(photos["chelsea_png"])},
        },
    )
    assert r.status_code == 200
    assert CAT_LABELS & set(_classes(r.json())[:3])

    r = gateway.client.post(
        "/api/inference/execute",
        json={
            "model_id": effnet_id,
            "input_data": {"format": "base64_jpeg", "content": b64(photos["coffee"])},
            "options": {"top_k": 1},
        },
    )
    assert r.status_code == 200
    assert _classes(r.json()) == ["espresso"]
    assert r.json()["predictions"][0]["confidence"] > 0.8


def test_raw_body_and_multipart_uploads(gateway: Gateway, effnet_id: str, photos: dict[str, bytes]):
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict?top_k=1",
        content=photos["coffee"],
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    assert _classes(r.json()) == ["espresso"]

    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict",
        params={"top_k": 3},
        files={"file": ("chelsea.jpg", photos["chelsea"], "image/jpeg")},
    )
    assert r.status_code == 200, r.text
    assert CAT_LABELS & set(_classes(r.json()))


def test_threshold_filters_predictions(gateway: Gateway, effnet_id: str, photos):
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict?top_k=10&threshold=0.5",
        content=photos["coffee"],
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["class"] for p in preds] == ["espresso"]


def test_twenty_concurrent_requests_are_all_correct(
    gateway: Gateway, effnet_id: str, photos: dict[str, bytes]
):
    def one(i: int) -> tuple[str, list[str]]:
        name = "chelsea" if i % 2 else "coffee"
        r = gateway.client.post(
            f"/api/models/{effnet_id}/predict?top_k=3",
            content=photos[name],
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code == 200, r.text
        return name, _classes(r.json())

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    for name, classes in results:
        if name == "coffee":
            assert classes[0] == "espresso"
        else:
            assert CAT_LABELS & set(classes)


def test_tensor_input_goes_straight_to_the_model(gateway: Gateway, effnet_id: str):
    import numpy as np

    zeros = np.zeros((1, 3, 224, 224), dtype=np.float32)
    r = gateway.client.post(
        "/api/inference/execute",
        json={
            "model_id": effnet_id,
            "input_data": {
                "format": "tensor",
                "content": {
                    "data": b64(zeros.tobytes()),
                    "dtype": "float32",
                    "shape": [1, 3, 224, 224],
                },
            },
            "options": {"top_k": 2},
        },
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


def test_models_listing_counts_requests(gateway: Gateway, effnet_id: str, photos):
    before = gateway.client.get(f"/api/models/{effnet_id}").json()["requests"]
    gateway.client.post(
        f"/api/models/{effnet_id}/predict",
        content=photos["coffee"],
        headers={"Content-Type": "image/jpeg"},
    )
    listing = gateway.client.get("/api/models").json()
    entry = next(m for m in listing["models"] if m["model_id"] == effnet_id)
    assert entry["requests"] == before + 1
    assert entry["size_bytes"] > 10_000_000
    assert entry["name"] == "efficientnet-lite0"
    assert any(e["model_id"] == effnet_id for e in listing["index"])


def test_formats_and_health(gateway: Gateway):
    formats = gateway.client.get("/api/inference/formats").json()
    names = {f["format"] for f in formats["formats"]}
    assert {"base64_jpeg", "base64_png", "tensor", "features"} <= names
    assert {"image", "tensor", "tabular"} <= set(formats["preprocessing_kinds"])
    assert {"classification", "detection", "score"} <= set(formats["postprocessing_kinds"])

    health = gateway.client.get("/health").json()
    assert health["status"] == "ok"
    assert health["licensing"]["status"] == "disabled"
    ready = gateway.client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["dependencies"]["content_store"]["status"] == "ok"
