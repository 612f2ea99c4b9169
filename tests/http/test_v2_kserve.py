"""The Open Inference Protocol with the real KServe client (``kserve.InferenceRESTClient``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.http.app import create_app
from services.wiring import build_services
from tests.conftest import CAT_LABELS, Gateway, make_settings
from tests.harness import ServerThread
from tests.models import linear_model


@pytest.fixture(scope="module")
def kserve_gw(
    workdir: Path, store: LocalContentStore, efficientnet: PublishResult
) -> Iterator[tuple[Gateway, str, str, Path]]:
    """A gateway with a linear model and EfficientNet-Lite0 loaded."""
    path = linear_model(workdir / "kserve-linear.onnx", seed=21)
    linear = asyncio.run(publish_model(store, path, name="kserve-linear"))
    settings = make_settings(workdir, max_models_in_memory=4)
    services = build_services(settings, store=store)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        ids = []
        for cid in (linear.metadata_cid, efficientnet.metadata_cid):
            r = client.post("/api/models/load", json={"metadataCid": cid})
            assert r.status_code == 200, r.text
            ids.append(r.json()["model_id"])
        yield Gateway(srv.url, services, client), ids[0], ids[1], path


def _run(coro_fn: Any) -> Any:
    """Run ``coro_fn(client)`` with a fresh KServe V2 REST client."""
    from kserve import InferenceRESTClient, RESTConfig

    async def main() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        try:
            return await coro_fn(client)
        finally:
            await client.close()

    return asyncio.run(main())


def test_health_and_readiness(kserve_gw):
    gw, linear_id, _, _ = kserve_gw

    async def check(client):
        return (
            await client.is_server_live(gw.url),
            await client.is_server_ready(gw.url),
            await client.is_model_ready(gw.url, linear_id),
            await client.is_model_ready(gw.url, "kserve-linear"),
            await client.is_model_ready(gw.url, "not-loaded"),
        )

    assert _run(check) == (True, True, True, True, False)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_onnxruntime(kserve_gw, binary):
    from kserve import InferInput, InferRequest

    gw, linear_id, _, path = kserve_gw
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    inp = InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    request = InferRequest(model_name=linear_id, infer_inputs=[inp], request_id="ks-1")

    async def infer(client):
        return await client.infer(gw.url, request, model_name=linear_id)

    response = _run(infer)
    assert response.id == "ks-1"
    (out,) = response.outputs
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    assert out.name == "y" and out.datatype == "FP32" and out.shape == [3, 4]
    np.testing.assert_allclose(out.as_numpy(), want, rtol=1e-5, atol=1e-5)


def test_jpeg_bytes_with_classification(kserve_gw, photos):
    from kserve import InferInput, InferRequest
    from kserve.protocol.infer_type import RequestedOutput

    gw, _, effnet_id, _ = kserve_gw
    inp = InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([photos["chelsea"]], dtype=object), binary_data=True)
    request = InferRequest(
        model_name=effnet_id,
        infer_inputs=[inp],
        request_outputs=[RequestedOutput("logits", {"classification": 2})],
    )

    async def infer(client):
        return await client.infer(gw.url, request, model_name=effnet_id)

    (out,) = _run(infer).outputs
    assert out.datatype == "BYTES" and out.shape == [1, 2]
    top = out.as_numpy().reshape(-1)[0]
    label = (top.decode() if isinstance(top, bytes) else str(top)).split(":", 2)[2]
    assert label in CAT_LABELS


def test_errors_reach_the_kserve_client(kserve_gw):
    from kserve import InferInput, InferRequest

    gw, linear_id, _, _ = kserve_gw
    x = np.zeros((1, 7), dtype=np.float32)
    inp = InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)

    async def infer(client):
        return await client.infer(
            gw.url, InferRequest(model_name=linear_id, infer_inputs=[inp]), model_name=linear_id
        )

    with pytest.raises(httpx.HTTPStatusError) as err:
        _run(infer)
    assert err.value.response.status_code == 400
    assert "input 'x': dimension 1 is 7, not 8" in str(err.value)
