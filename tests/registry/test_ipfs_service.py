"""The service over a real IPFS node: publish, load and classify; tampering; outages; caches.

EfficientNet-Lite0 (the real ImageNet model) is published to the node with
``cidserve publish --ipfs-api`` and loaded by its metadata CID through
``CIDSERVE_IPFS_API_URL``. A :class:`~tests.ipfs_node.TamperingProxy` between the service and
the node plays a hostile or slow node; a second node is stopped and started again for the
outage test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry import export
from registry.blob_cache import BlobCache
from registry.ipfs_store import IpfsConfig, IpfsContentStore
from registry.publish import PublishResult, publish_model
from registry.unixfs import CHUNK_SIZE, cid_of_bytes, cid_of_file
from services.http.app import create_app
from services.wiring import build_services
from tests.conftest import CAT_LABELS, Gateway, make_settings
from tests.harness import ServerThread
from tests.ipfs_node import IpfsNode, TamperingProxy
from tests.models import linear_model

CIDSERVE = [sys.executable, "-m", "services.cli"]


@contextlib.contextmanager
def ipfs_gateway(data_dir: Path, **overrides: object) -> Iterator[Gateway]:
    """A gateway whose content store is the IPFS store built from settings."""
    defaults: dict[str, object] = {
        "prediction_cache": False,
        "ipfs_find_timeout_s": 2.0,
        "ipfs_timeout_s": 10.0,
        "ipfs_retries": 1,
        "ipfs_retry_backoff_s": 0.05,
    }
    settings = make_settings(data_dir, **{**defaults, **overrides})
    services = build_services(settings)
    assert isinstance(services.store, IpfsContentStore)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield Gateway(srv.url, services, client)


def bytes_fetched(gw: Gateway) -> float:
    value = gw.services.metrics.registry.get_sample_value("cidserve_ipfs_bytes_fetched_total")
    return value or 0.0


def classes(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [p["class"] for p in r.json()["predictions"]]


def predict(gw: Gateway, model_id: str, image: bytes, top_k: int = 3) -> httpx.Response:
    return gw.client.post(
        f"/api/models/{model_id}/predict?top_k={top_k}",
        content=image,
        headers={"Content-Type": "image/jpeg"},
    )


def blob_files(data_dir: Path) -> list[str]:
    return [p.name for p in (data_dir / "data" / "blob-cache").rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def published(ipfs_node: IpfsNode, efficientnet_onnx: Path, tmp_path_factory) -> dict:
    """EfficientNet-Lite0 + ImageNet labels published with ``cidserve publish --ipfs-api``."""
    work = tmp_path_factory.mktemp("publish")
    labels = work / "labels.json"
    labels.write_text(json.dumps(export.imagenet_labels()))
    proc = subprocess.run(
        [
            *CIDSERVE,
            "publish",
            str(efficientnet_onnx),
            "--labels",
            str(labels),
            "--preset",
            "efficientnet-lite",
            "--name",
            "efficientnet-lite0",
            "--ipfs-api",
            ipfs_node.api_url,
            "--json",
        ],
        env={**os.environ, "CIDSERVE_DATA_DIR": str(work / "data")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return {"doc": json.loads(proc.stdout), "stderr": proc.stderr}


def test_publish_adds_and_pins_with_the_embedded_stores_cids(
    published: dict, ipfs_node: IpfsNode, efficientnet: PublishResult, efficientnet_onnx: Path
):
    doc = published["doc"]
    # The same model and labels CIDs as the session's embedded-store publish of the same files.
    assert doc["modelCid"] == efficientnet.model_cid == cid_of_file(efficientnet_onnx)
    assert doc["labelsCid"] == efficientnet.labels_cid
    assert doc["modelCid"].startswith("bafy")  # 18 MB: a dag-pb tree of raw leaves
    # The metadata the node holds is the document its CID names.
    metadata = ipfs_node.cat(doc["metadataCid"])
    assert cid_of_bytes(metadata) == doc["metadataCid"]
    assert json.loads(metadata)["model"]["cid"] == doc["modelCid"]
    for cid in (doc["metadataCid"], doc["modelCid"], doc["labelsCid"]):
        assert ipfs_node.pinned(cid), cid
    # stderr is not a terminal: no progress bar (tests/cli/test_progress.py draws it on one).
    assert "adding " not in published["stderr"] and "MB/s" not in published["stderr"]


def test_load_from_the_node_and_classify(
    published: dict, ipfs_node: IpfsNode, tmp_path: Path, photos: dict[str, bytes]
):
    doc = published["doc"]
    with ipfs_gateway(tmp_path, ipfs_api_url=ipfs_node.api_url) as gw:
        r = gw.client.post("/api/models/load", json={"metadataCid": doc["metadataCid"]})
        assert r.status_code == 200, r.text
        model_id = r.json()["model_id"]
        assert model_id == doc["model_id"]
        assert CAT_LABELS & set(classes(predict(gw, model_id, photos["chelsea"])))
        assert classes(predict(gw, model_id, photos["coffee"], top_k=1)) == ["espresso"]

        size = json.loads(ipfs_node.cat(doc["metadataCid"]))["model"]["size"]
        assert bytes_fetched(gw) > size
        assert doc["modelCid"] in blob_files(tmp_path)
        index = gw.client.get("/api/models").json()["index"]
        assert [e["last_source"] for e in index] == ["ipfs"]
        ready = gw.client.get("/health/ready")
        assert ready.status_code == 200
        content_store = ready.json()["dependencies"]["content_store"]
        assert content_store["status"] == "ok" and content_store["kind"] == "ipfs"


class FileTamper:
    """Alters one 256 KiB leaf in the node's ``cat`` stream of the model: flips a byte, or puts
    the bytes of the next leaf in its place."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.victim: str | None = None

    def __call__(self, path: str, query: dict[str, str], body: bytes) -> bytes:
        if not path.endswith("/cat") or len(body) < 4 * CHUNK_SIZE:
            return body
        k = len(body) // CHUNK_SIZE // 2
        start, end = k * CHUNK_SIZE, (k + 1) * CHUNK_SIZE
        self.victim = cid_of_bytes(body[start:end])  # the raw leaf's CID
        if self.mode == "flip":
            middle = start + CHUNK_SIZE // 2
            return body[:middle] + bytes([body[middle] ^ 0x04]) + body[middle + 1 :]
        return body[:start] + body[end : end + CHUNK_SIZE] + body[end:]


def flip_block(target: str):
    def tamper(path: str, query: dict[str, str], body: bytes) -> bytes:
        if path.endswith("/block/get") and query.get("arg") == target:
            return body[:-1] + bytes([body[-1] ^ 0x01])
        return body

    return tamper


@pytest.mark.parametrize("mode", ["flip", "swap", "metadata"])
def test_a_tampered_block_rejects_the_load_and_nothing_is_kept(
    published: dict, ipfs_node: IpfsNode, tmp_path: Path, photos: dict[str, bytes], mode: str
):
    doc = published["doc"]
    with TamperingProxy(ipfs_node.api_url) as proxy:
        tamper = FileTamper(mode) if mode != "metadata" else flip_block(doc["metadataCid"])
        proxy.tamper = tamper
        with ipfs_gateway(tmp_path, ipfs_api_url=proxy.url) as gw:
            r = gw.client.post("/api/models/load", json={"metadataCid": doc["metadataCid"]})
            assert r.status_code == 502, r.text
            body = r.json()
            assert body["success"] is False
            assert body["error"] == "Content verification failed"
            if mode == "metadata":
                assert body["cid"] == doc["metadataCid"]
                assert doc["metadataCid"] in body["message"]
            else:
                assert body["cid"] == doc["modelCid"]
                assert isinstance(tamper, FileTamper) and tamper.victim
                assert tamper.victim in body["message"]  # the very block is named
            # Nothing unverified kept: no model file, no partial file, no session.
            files = blob_files(tmp_path)
            assert doc["modelCid"] not in files
            assert not any(name.startswith(".incoming") for name in files)
            listing = gw.client.get("/api/models").json()
            assert listing["models"] == [] and listing["cacheStatus"]["current_size"] == 0
            assert bytes_fetched(gw) > 0

            # The same service loads the honest bytes once the node behaves.
            proxy.tamper = None
            r = gw.client.post("/api/models/load", json={"metadataCid": doc["metadataCid"]})
            assert r.status_code == 200, r.text
            assert classes(predict(gw, r.json()["model_id"], photos["coffee"]))[0] == "espresso"


def test_a_cid_no_node_has_is_404_naming_it(ipfs_node: IpfsNode, tmp_path: Path):
    missing = cid_of_bytes(os.urandom(64))
    with ipfs_gateway(tmp_path, ipfs_api_url=ipfs_node.api_url, ipfs_find_timeout_s=1.0) as gw:
        t0 = time.monotonic()
        r = gw.client.post("/api/models/load", json={"metadataCid": missing})
        assert r.status_code == 404, r.text
        assert r.json()["cid"] == missing and missing in r.json()["message"]
        assert time.monotonic() - t0 < 8


def test_a_node_that_stays_silent_is_504(ipfs_node: IpfsNode, tmp_path: Path, published: dict):
    with TamperingProxy(ipfs_node.api_url) as proxy:
        proxy.stall_s = 3.0
        with ipfs_gateway(
            tmp_path, ipfs_api_url=proxy.url, ipfs_timeout_s=1.0, ipfs_find_timeout_s=0.5
        ) as gw:
            t0 = time.monotonic()
            r = gw.client.post(
                "/api/models/load", json={"metadataCid": published["doc"]["metadataCid"]}
            )
            assert r.status_code == 504, r.text
            assert "CIDSERVE_IPFS_TIMEOUT_S" in r.json()["message"]
            assert time.monotonic() - t0 < 3


def test_node_outage_cached_models_keep_serving_and_the_node_is_used_again(
    tmp_path: Path, efficientnet_onnx: Path, photos: dict[str, bytes]
):
    """Stop the node mid-test: new CIDs get 503 + Retry-After, loaded models keep answering,
    an evicted model reloads from the disk cache (the node is down), a restarted service reads
    its disk cache, and the restarted node is used again without restarting the service."""
    node = IpfsNode(tmp_path / "node")
    try:
        node.start()

        async def publish_all() -> tuple[PublishResult, PublishResult, PublishResult]:
            store = IpfsContentStore(
                IpfsConfig(api_url=node.api_url), BlobCache(tmp_path / "publisher", 1 << 30)
            )
            try:
                effnet = await publish_model(
                    store,
                    efficientnet_onnx,
                    name="efficientnet-lite0",
                    labels=export.imagenet_labels(),
                    preset="efficientnet-lite",
                )
                a = await publish_model(store, linear_model(tmp_path / "a.onnx", seed=1), name="a")
                b = await publish_model(store, linear_model(tmp_path / "b.onnx", seed=2), name="b")
                return effnet, a, b
            finally:
                await store.aclose()

        effnet, small_a, small_b = asyncio.run(publish_all())
        vector = {"format": "tensor", "content": [[1.0] * 8]}
        settings = {"ipfs_api_url": node.api_url, "max_models_in_memory": 1}
        with ipfs_gateway(tmp_path, **settings) as gw:
            r = gw.client.post("/api/models/load", json={"metadataCid": effnet.metadata_cid})
            assert r.status_code == 200, r.text
            assert CAT_LABELS & set(classes(predict(gw, effnet.model_id, photos["chelsea"])))
            r = gw.client.post("/api/models/load", json={"metadataCid": small_a.metadata_cid})
            assert r.status_code == 200, r.text
            assert [m["model_id"] for m in gw.client.get("/api/models").json()["models"]] == [
                small_a.model_id
            ]  # EfficientNet was evicted from memory

            node.stop()
            fetched = bytes_fetched(gw)

            t0 = time.monotonic()
            r = gw.client.post("/api/models/load", json={"metadataCid": small_b.metadata_cid})
            assert r.status_code == 503, r.text
            assert int(r.headers["Retry-After"]) > 0
            assert r.json()["cid"] == small_b.metadata_cid
            assert time.monotonic() - t0 < 10  # within CIDSERVE_IPFS_TIMEOUT_S

            ready = gw.client.get("/health/ready")
            assert ready.status_code == 200  # cached content is still served
            assert ready.json()["dependencies"]["content_store"]["status"] == "degraded"

            r = gw.client.post(
                "/api/inference/execute",
                json={"model_id": small_a.model_id, "input_data": vector},
            )
            assert r.status_code == 200, r.text  # the loaded model keeps answering

            # The evicted model reloads from the disk cache, the node still down.
            assert CAT_LABELS & set(classes(predict(gw, effnet.model_id, photos["chelsea"])))
            entry = next(
                e
                for e in gw.client.get("/api/models").json()["index"]
                if e["model_id"] == effnet.model_id
            )
            assert entry["loads"] == 2 and entry["last_source"] == "disk_cache"
            assert bytes_fetched(gw) == fetched

        # A restarted service on the same disk cache does not need the node either.
        with ipfs_gateway(tmp_path, **settings) as gw2:
            r = gw2.client.post("/api/models/load", json={"metadataCid": effnet.metadata_cid})
            assert r.status_code == 200, r.text
            assert classes(predict(gw2, effnet.model_id, photos["coffee"], 1)) == ["espresso"]
            assert bytes_fetched(gw2) == 0

            node.start()  # the same node (repository, ports) is back
            r = gw2.client.post("/api/models/load", json={"metadataCid": small_b.metadata_cid})
            assert r.status_code == 200, r.text
            assert bytes_fetched(gw2) > 0
    finally:
        node.stop()
