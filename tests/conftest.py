"""Session fixtures: the real EfficientNet-Lite0, a content store, and a running gateway."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from registry import export, samples
from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.http.app import create_app
from services.settings import Settings
from services.wiring import Services, build_services
from tests.harness import ServerThread
from tests.ipfs_node import IpfsNode

CAT_LABELS = {"tiger cat", "Egyptian cat", "tabby"}


@dataclass
class Gateway:
    url: str
    services: Services
    client: httpx.Client


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cidserve")


@pytest.fixture(scope="session")
def efficientnet_onnx(workdir: Path) -> Path:
    path = workdir / "efficientnet-lite0.onnx"
    export.export_efficientnet_lite0(path)
    return path


@pytest.fixture(scope="session")
def store(workdir: Path) -> LocalContentStore:
    return LocalContentStore(workdir / "data" / "store")


@pytest.fixture(scope="session")
def efficientnet(store: LocalContentStore, efficientnet_onnx: Path) -> PublishResult:
    """EfficientNet-Lite0 published with its ImageNet labels and preprocessing preset."""
    return asyncio.run(
        publish_model(
            store,
            efficientnet_onnx,
            name="efficientnet-lite0",
            labels=export.imagenet_labels(),
            preset="efficientnet-lite",
        )
    )


@pytest.fixture(scope="session")
def ipfs_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsNode]:
    """A real IPFS node (js-ipfs, Kubo RPC API + gateway) for the session (tests/ipfs_node.py)."""
    node = IpfsNode(tmp_path_factory.mktemp("ipfs"))
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return {
        "chelsea": samples.sample_image_bytes("chelsea"),
        "coffee": samples.sample_image_bytes("coffee"),
        "chelsea_png": samples.sample_image_bytes("chelsea", fmt="PNG"),
        "astronaut": samples.sample_image_bytes("astronaut"),
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_settings(workdir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=workdir / "data", **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def gateway(workdir: Path, store: LocalContentStore) -> Iterator[Gateway]:
    """The gateway on embedded defaults, serving from the session's content store.

    Its prediction cache is off, so every request runs the model (the cache has its own
    tests in tests/dataplane/test_redis_cache.py)."""
    settings = make_settings(workdir, prediction_cache=False)
    services = build_services(settings, store=store)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield Gateway(srv.url, services, client)


@pytest.fixture(scope="session")
def effnet_id(gateway: Gateway, efficientnet: PublishResult) -> str:
    r = gateway.client.post(
        "/api/models/load", json={"metadataCid": efficientnet.metadata_cid, "warmup": True}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


@pytest.fixture
def private_gateway(workdir: Path, store: LocalContentStore, request: pytest.FixtureRequest):
    """A fresh gateway (own session cache) on the shared store; settings via indirect param."""
    overrides = {"prediction_cache": False, **(getattr(request, "param", {}) or {})}
    settings = make_settings(workdir, **overrides)
    services = build_services(settings, store=store)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield Gateway(srv.url, services, client)
