"""Every class of bad input gets its status and a message naming the problem; the server
answers the next good request."""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from registry.unixfs import cid_of_bytes
from tests.conftest import Gateway, b64
from tests.models import slow_model


def _execute(gw: Gateway, model_id: str, fmt: str, content, **options):
    return gw.client.post(
        "/api/inference/execute",
        json={
            "model_id": model_id,
            "input_data": {"format": fmt, "content": content},
            "options": options,
        },
    )


def _assert_error(r, status: int, *needles: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False
    assert body["error"]
    for needle in needles:
        assert needle.lower() in body["message"].lower(), body
    return body


@pytest.fixture(autouse=True)
def _still_serving(gateway: Gateway, effnet_id: str, photos):
    """After each bad request, a good request still works."""
    yield
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict?top_k=1",
        content=photos["coffee"],
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["class"] == "espresso"


def test_unknown_model_is_404_with_suggestion(gateway: Gateway, photos):
    r = _execute(gateway, "no-such-model", "base64_jpeg", b64(photos["coffee"]))
    body = _assert_error(r, 404, "no-such-model")
    assert body["error"] == "Model not found"
    assert body["suggestion"] == "Use /api/models/load endpoint first"


def test_schema_errors_are_422_naming_the_field(gateway: Gateway, effnet_id: str):
    r = gateway.client.post("/api/inference/execute", json={"model_id": effnet_id})
    _assert_error(r, 422, "input_data")
    r = gateway.client.post(
        "/api/inference/execute",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    r = _execute(gateway, effnet_id, "base64_jpeg", "AAAA", top_k=-1)
    _assert_error(r, 422, "top_k")
    r = gateway.client.post("/api/models/load", json={"metadataCid": "x", "tokenId": "abc"})
    _assert_error(r, 422, "tokenId")


def test_bad_format_and_base64_are_400(gateway: Gateway, effnet_id: str):
    _assert_error(_execute(gateway, effnet_id, "base64_gif", "AAAA"), 400, "base64_gif")
    _assert_error(_execute(gateway, effnet_id, "base64_jpeg", "***not base64***"), 400, "base64")
    _assert_error(_execute(gateway, effnet_id, "base64_jpeg", 12), 400, "base64 string")
    _assert_error(_execute(gateway, effnet_id, "base64_jpeg", ""), 400, "empty")


def test_bytes_that_are_not_an_image_are_400(gateway: Gateway, effnet_id: str):
    r = _execute(gateway, effnet_id, "base64_jpeg", b64(b"GIF89a but not really" * 10))
    _assert_error(r, 400, "image")
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict",
        content=b"\xff\xd8\xff\xe0 truncated jpeg",
        headers={"Content-Type": "image/jpeg"},
    )
    _assert_error(r, 400, "image")


def test_decompression_bomb_is_413_before_decoding(gateway: Gateway, effnet_id: str):
    # A 10000 x 10000 PNG of one colour compresses to a few hundred KiB but would need 300 MB.
    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 1_000_000
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict",
        content=buf.getvalue(),
        headers={"Content-Type": "image/png"},
    )
    _assert_error(r, 413, "pixels")


def test_oversized_body_and_base64_are_413(workdir, store, efficientnet: PublishResult):
    import httpx

    from services.http.app import create_app
    from services.wiring import build_services
    from tests.conftest import make_settings
    from tests.harness import ServerThread

    settings = make_settings(workdir, max_body_bytes=64 * 1024, max_base64_chars=4096)
    with (
        ServerThread(create_app(settings, build_services(settings, store=store))) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        r = client.post(
            "/api/models/any/predict",
            content=b"x" * 200_000,
            headers={"Content-Type": "image/jpeg"},
        )
        _assert_error(r, 413, "CIDSERVE_MAX_BODY_BYTES")

        def chunks():
            for _ in range(40):
                yield b"y" * 4096

        r = client.post(
            "/api/models/any/predict", content=chunks(), headers={"Content-Type": "image/jpeg"}
        )
        _assert_error(r, 413)
        # The payload is decoded only for a model that exists (and after the license gate).
        r = client.post(
            "/api/models/load", json={"metadataCid": efficientnet.metadata_cid, "warmup": False}
        )
        assert r.status_code == 200, r.text
        r = client.post(
            "/api/inference/execute",
            json={
                "model_id": r.json()["model_id"],
                "input_data": {"format": "base64_jpeg", "content": "A" * 8000},
            },
        )
        _assert_error(r, 413, "CIDSERVE_MAX_BASE64_CHARS")
        assert client.get("/health").status_code == 200


def test_unsupported_upload_type_is_415(gateway: Gateway, effnet_id: str):
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict",
        content=b"{}",
        headers={"Content-Type": "application/json"},
    )
    _assert_error(r, 415, "content-type")
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict", files={"other": ("a.jpg", b"x", "image/jpeg")}
    )
    _assert_error(r, 400, "file")


def test_tensor_mismatches_name_the_input(gateway: Gateway, effnet_id: str):
    wrong = np.zeros((1, 3, 100, 100), dtype=np.float32)
    r = _execute(
        gateway,
        effnet_id,
        "tensor",
        {"data": b64(wrong.tobytes()), "dtype": "float32", "shape": [1, 3, 100, 100]},
    )
    _assert_error(r, 400, "input")
    r = _execute(
        gateway,
        effnet_id,
        "tensor",
        {"data": b64(b"\x00" * 10), "dtype": "float32", "shape": [1, 3, 224, 224]},
    )
    _assert_error(r, 400, "bytes")
    _assert_error(_execute(gateway, effnet_id, "tensor", [[1, 2], [3]]), 400, "tensor")
    r = _execute(gateway, effnet_id, "tensor", {"data": "AAAA", "dtype": "complex64", "shape": [1]})
    _assert_error(r, 400, "dtype")
    r = _execute(gateway, effnet_id, "features", {"a": 1.0})
    _assert_error(r, 400, "expects")


def test_top_k_bound_is_400(gateway: Gateway, effnet_id: str, photos):
    r = _execute(gateway, effnet_id, "base64_jpeg", b64(photos["coffee"]), top_k=100_000)
    _assert_error(r, 400, "top_k")


def test_timeout_is_504_and_the_run_is_stopped(
    gateway: Gateway, effnet_id: str, workdir, store, photos
):
    path = slow_model(workdir / "slow.onnx")
    pub = asyncio.run(publish_model(store, path, name="slow"))
    r = gateway.client.post(
        "/api/models/load", json={"metadataCid": pub.metadata_cid, "warmup": False}
    )
    assert r.status_code == 200, r.text
    x = np.ones((1, 1024), dtype=np.float32)
    content = {"data": b64(x.tobytes()), "dtype": "float32", "shape": [1, 1024]}
    r = _execute(gateway, pub.model_id, "tensor", content, timeout=60_000, top_k=1)
    assert r.status_code == 200, r.text
    full_run_ms = r.json()["metrics"]["inference_time_ms"]
    assert full_run_ms > 300  # slow enough for the deadline below to be hit every time

    t0 = time.monotonic()
    r = _execute(gateway, pub.model_id, "tensor", content, timeout=50)
    _assert_error(r, 504, "50 ms")
    # The run was told to terminate: the next request (same single inference worker) does
    # not wait for the rest of the slow run.
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict?top_k=1",
        content=photos["coffee"],
        headers={"Content-Type": "image/jpeg"},
    )
    elapsed_ms = (time.monotonic() - t0) * 1000
    assert r.status_code == 200
    assert elapsed_ms < full_run_ms * 0.8, (elapsed_ms, full_run_ms)
    gateway.client.delete(f"/api/models/{pub.model_id}")


def test_load_errors(gateway: Gateway, store: LocalContentStore, efficientnet: PublishResult):
    r = gateway.client.post("/api/models/load", json={"metadataCid": "../../etc/passwd"})
    _assert_error(r, 400, "CID")
    # A CID that is well formed but absent from the store.
    missing = cid_of_bytes(b"content nobody stored")
    r = gateway.client.post("/api/models/load", json={"metadataCid": missing})
    body = _assert_error(r, 404, missing)
    assert body["cid"] == missing

    # Content that is not metadata at all.
    junk_cid = asyncio.run(store.put_bytes(b"\x00\x01 not json"))
    _assert_error(
        gateway.client.post("/api/models/load", json={"metadataCid": junk_cid}), 422, "JSON"
    )

    # Metadata with one bad field: the message names it.
    doc = efficientnet.metadata.model_dump(mode="json")
    doc["preprocessing"]["crop_ratio"] = 3.5
    bad_cid = asyncio.run(store.put_bytes(json.dumps(doc).encode()))
    body = _assert_error(
        gateway.client.post("/api/models/load", json={"metadataCid": bad_cid}),
        422,
        "preprocessing.crop_ratio",
    )
    assert body["field"] == "preprocessing.crop_ratio"

    # Metadata whose model sha256 does not match the bytes: refused.
    doc = efficientnet.metadata.model_dump(mode="json")
    doc["model"]["sha256"] = "0" * 64
    forged = asyncio.run(store.put_bytes(json.dumps(doc).encode()))
    r = gateway.client.post("/api/models/load", json={"metadataCid": forged})
    _assert_error(r, 502, "sha256")

    # Metadata that names inputs the model does not have.
    doc = efficientnet.metadata.model_dump(mode="json")
    doc["inputs"][0]["name"] = "pixels"
    doc["preprocessing"]["input"] = "pixels"
    wrong_io = asyncio.run(store.put_bytes(json.dumps(doc).encode()))
    r = gateway.client.post("/api/models/load", json={"metadataCid": wrong_io})
    _assert_error(r, 422, "inputs")


def test_unknown_routes_and_methods_are_json(gateway: Gateway):
    r = gateway.client.get("/api/nothing-here")
    _assert_error(r, 404)
    r = gateway.client.get("/api/inference/execute")
    _assert_error(r, 405)
