"""The order of work for a request: body bound, caller, model and license, then decoding.

An unknown model or a caller without a license gets its answer without the payload being
decoded (a garbage payload still gets 401/403/404, never 400), large bodies are parsed off
the event loop (the server keeps answering while one is handled), and a small request that
declares a huge tensor costs no memory."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.chain.auth import SignatureAuthenticator
from services.chain.client import sign_url
from services.http.app import create_app
from services.state.kv import MemoryKV
from services.wiring import build_services
from tests.conftest import Gateway, make_settings
from tests.harness import ServerThread
from tests.models import linear_model
from tests.planes import Holders
from tests.plugins.test_image_budget import MEASURED, peak_rss_growth, png

HOLDER_KEY = "0x" + "33" * 32
STRANGER_KEY = "0x" + "44" * 32
TOKEN = 7


def _address(key: str) -> str:
    from eth_account import Account

    return str(Account.from_key(key).address)


@pytest.fixture(scope="module")
def linear(workdir: Path, store: LocalContentStore) -> PublishResult:
    path = linear_model(workdir / "order-linear.onnx", seed=21)
    return asyncio.run(publish_model(store, path, name="order-linear"))


@pytest.fixture(scope="module")
def licensed(workdir: Path, store: LocalContentStore, linear: PublishResult) -> Iterator[Gateway]:
    """A gateway checking signatures, with ``linear`` loaded under token 7."""
    settings = make_settings(workdir, prediction_cache=False)
    services = build_services(
        settings,
        store=store,
        licensing=Holders({_address(HOLDER_KEY)}),
        authenticator=SignatureAuthenticator(MemoryKV()),
    )
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        r = client.post("/api/models/load", json={"metadataCid": linear.metadata_cid, "tokenId": 7})
        assert r.status_code == 200, r.text
        yield Gateway(srv.url, services, client)


def _send(gw: Gateway, path: str, body: bytes, headers: dict[str, str], key: str | None):
    if key is not None:
        headers = {**headers, **sign_url(key, "POST", gw.url + path, headers, body)}
    return gw.client.post(path, content=body, headers=headers)


def test_callers_without_a_license_are_refused_before_the_payload_is_decoded(
    licensed: Gateway, linear: PublishResult
):
    model = linear.model_id
    garbage_json = json.dumps(
        {"model_id": model, "input_data": {"format": "base64_jpeg", "content": "*not base64*"}}
    ).encode()
    lying_tensor = {
        "Content-Type": "application/x-cidserve-tensor",
        "X-Tensor-Dtype": "float32",
        "X-Tensor-Shape": "10000,10000",
    }
    cases = [
        ("/api/inference/execute", garbage_json, {"Content-Type": "application/json"}),
        (f"/api/models/{model}/predict", b"\xff\xd8 not an image", {"Content-Type": "image/jpeg"}),
        (f"/api/models/{model}/predict", b"\0" * 64, lying_tensor),
        (f"/v2/models/{model}/infer", b"{not json at all", {"Content-Type": "application/json"}),
    ]
    for path, body, headers in cases:
        r = _send(licensed, path, body, headers, None)
        assert r.status_code == 401, (path, r.text)
        r = _send(licensed, path, body, headers, STRANGER_KEY)
        assert r.status_code == 403, (path, r.text)
        # The license holder's request gets as far as decoding, which refuses the payload.
        r = _send(licensed, path, body, headers, HOLDER_KEY)
        assert r.status_code in (400, 413), (path, r.text)
    # An unknown model: 404 whatever the body holds.
    r = _send(licensed, "/v2/models/no-such-model/infer", b"\0garbage", {}, HOLDER_KEY)
    assert r.status_code == 404 and set(r.json()) == {"error"}, r.text
    r = _send(licensed, "/api/models/no-such-model/predict", b"x", lying_tensor, HOLDER_KEY)
    assert r.status_code == 404, r.text


@pytest.fixture(scope="module")
def open_gw(workdir: Path, store: LocalContentStore, linear: PublishResult) -> Iterator[Gateway]:
    """Embedded defaults (no licensing; 32 MiB body bound), ``linear`` loaded."""
    settings = make_settings(workdir, prediction_cache=False)
    services = build_services(settings, store=store)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        r = client.post("/api/models/load", json={"metadataCid": linear.metadata_cid})
        assert r.status_code == 200, r.text
        yield Gateway(srv.url, services, client)


class HealthProbe:
    """Asks ``GET /health`` every 10 ms from its own connection; the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                assert client.get("/health").status_code == 200
                self.latencies.append(time.perf_counter() - t0)
                self._stop.wait(0.01)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def test_a_30_mib_body_for_an_unknown_model_is_404_and_the_loop_keeps_answering(
    open_gw: Gateway,
):
    content = base64.b64encode(b"\0" * (22 << 20)).decode()  # 29.3 MiB of base64
    body = json.dumps(
        {"model_id": "no-such-model", "input_data": {"format": "base64_jpeg", "content": content}}
    ).encode()
    assert 29 << 20 < len(body) < open_gw.services.settings.max_body_bytes
    v2_body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [content]}]}
    ).encode()
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=open_gw.url, timeout=60) as client:
        for path, payload in (
            ("/api/inference/execute", body),
            ("/v2/models/no-such-model/infer", v2_body),
        ):
            with HealthProbe(open_gw.url) as probe:
                time.sleep(0.05)
                t0 = time.perf_counter()
                r = client.post(path, content=payload, headers=headers)
                elapsed = time.perf_counter() - t0
                time.sleep(0.05)
            assert r.status_code == 404, r.text
            assert elapsed < 5, f"{path}: {elapsed:.2f} s"
            assert len(probe.latencies) >= 5
            # Parsing on the loop stalled it ~2 s; in a worker thread it only shares the GIL.
            assert max(probe.latencies) < 0.25, (
                f"{path}: /health waited {max(probe.latencies) * 1000:.0f} ms "
                f"while a {len(payload) >> 20} MiB body was handled"
            )


def test_a_small_v2_request_declaring_a_huge_tensor_costs_no_memory(
    open_gw: Gateway, linear: PublishResult
):
    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "BYTES", "shape": [48_000_000], "data": ["x" * 1000] * 70}
            ]
        }
    ).encode()
    assert len(body) < 80_000
    path = f"/v2/models/{linear.model_id}/infer"
    with httpx.Client(base_url=open_gw.url, timeout=60) as client:
        client.get("/health")  # the connection is open before the measurement
        holder: dict[str, httpx.Response] = {}

        def send() -> None:
            holder["r"] = client.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )

        raised, grown = peak_rss_growth(send)
    assert raised is None
    r = holder["r"]
    assert r.status_code == 400, r.text
    assert "'x'" in r.json()["error"] and "48000000" in r.json()["error"], r.text
    assert grown < 20 << 20, f"peak RSS rose {grown >> 20} MiB"
    # A declared shape over the element limit is 413.
    huge = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [10**5, 10**4], "data": [0.0]}]}
    ).encode()
    r = open_gw.client.post(path, content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def test_a_16_bit_png_of_many_mp_is_413_over_http_without_decoding(
    gateway: Gateway, effnet_id: str
):
    data = png(*MEASURED, 16, 4)  # 16-bit grey + alpha, 39.7 MP, a few hundred KiB
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        client.get("/health")
        holder: dict[str, httpx.Response] = {}

        def send() -> None:
            holder["r"] = client.post(
                f"/api/models/{effnet_id}/predict",
                content=data,
                headers={"Content-Type": "image/png"},
            )

        raised, grown = peak_rss_growth(send)
    assert raised is None
    r = holder["r"]
    assert r.status_code == 413, r.text
    assert "CIDSERVE_MAX_IMAGE_BYTES" in r.json()["message"]
    assert grown < 20 << 20, f"peak RSS rose {grown >> 20} MiB"
