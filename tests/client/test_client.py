"""The Python client against a real gateway on loopback: load, list, predict, execute, V2
infer and unload, sync and async, with the operator's token; every error as its type."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from cidserve_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InferInput,
    InputData,
    InvalidResponseError,
    NotFoundError,
    RateLimitedError,
    TransportError,
)
from fastapi import FastAPI, Request, Response

from tests.client.support import ADMIN, X, expected_y, publish_linear, serve
from tests.conftest import CAT_LABELS
from tests.harness import ServerThread, free_port

SEED = 21


@pytest.fixture(scope="module")
def operated(workdir, store) -> Iterator[str]:
    """A gateway whose control plane needs the operator's token."""
    with serve(workdir, store, admin_token=ADMIN, max_top_k=10) as url:
        yield url


@pytest.fixture(scope="module")
def linear(store, tmp_path_factory):
    return publish_linear(store, tmp_path_factory.mktemp("client"), SEED)


def _tensor() -> InputData:
    return InputData.tensor([X])


def test_sync_client_loads_lists_runs_and_unloads(operated, linear):
    with Client(operated, admin_token=ADMIN, timeout=60) as client:
        health = client.health()
        assert health.status == "ok"
        assert health.store

        loaded = client.load(linear.metadata_cid, warmup=True)
        assert loaded.model_id == linear.model_id
        assert loaded.status == "loaded"
        assert linear.model_id in loaded.cache_status.models_in_cache
        assert client.load(linear.metadata_cid).status == "already_loaded"

        listed = client.models()
        assert linear.model_id in listed.ids()
        described = next(m for m in listed.models if m.model_id == linear.model_id)
        assert described.metadata_cid == linear.metadata_cid
        assert described.token_id is None
        assert [t.name for t in described.inputs] == ["x"]

        y = expected_y(SEED)
        result = client.execute(linear.model_id, _tensor(), {"top_k": 2})
        assert result.model_id == linear.model_id
        assert len(result.predictions) == 2
        assert result.top is not None
        assert result.top.class_id == int(np.argmax(y))
        assert result.metrics.total_time_ms >= 0

        v2 = client.infer(
            linear.model_id,
            [InferInput(name="x", datatype="FP32", shape=[1, 8], data=X)],
            request_id="r-1",
        )
        assert v2.model_name == linear.model_id
        assert v2.id == "r-1"
        out = v2.output("y")
        assert out.shape == [1, 4]
        np.testing.assert_allclose(out.data, y.ravel(), rtol=1e-5, atol=1e-5)

        gone = client.unload(linear.model_id)
        assert gone.model_id == linear.model_id
        assert linear.model_id not in client.models().ids()
        with pytest.raises(NotFoundError):
            client.unload(linear.model_id)


def test_async_client_does_the_same_and_runs_requests_concurrently(operated, linear):
    async def scenario() -> None:
        async with AsyncClient(operated, admin_token=ADMIN, timeout=60) as client:
            assert (await client.health()).status == "ok"
            loaded = await client.load(linear.metadata_cid, warmup=False)
            assert loaded.model_id == linear.model_id
            inputs = [[X[(i + j) % 8] for j in range(8)] for i in range(6)]
            results = await asyncio.gather(
                *(client.execute(linear.model_id, InputData.tensor([x])) for x in inputs)
            )
            for x, res in zip(inputs, results, strict=True):
                assert res.top is not None
                assert res.top.class_id == int(np.argmax(expected_y(SEED, x)))
            v2 = await client.infer(
                linear.model_id, [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": X}]
            )
            np.testing.assert_allclose(v2.output("y").data, expected_y(SEED).ravel(), rtol=1e-5)
            assert linear.model_id in (await client.models()).ids()
            with pytest.raises(NotFoundError) as info:
                await client.execute("nope-00000000", _tensor())
            assert info.value.status == 404
            await client.unload(linear.model_id)
            assert linear.model_id not in (await client.models()).ids()
            with pytest.raises(AuthenticationError):
                async with AsyncClient(operated) as anonymous:
                    await anonymous.load(linear.metadata_cid)

    asyncio.run(scenario())


def test_predict_sends_the_image_from_a_path_or_as_bytes(gateway, efficientnet, photos, tmp_path):
    jpeg = tmp_path / "chelsea.jpg"
    jpeg.write_bytes(photos["chelsea"])
    with Client(gateway.url) as client:  # a loopback server without a token: open
        model_id = client.load(efficientnet.metadata_cid).model_id
        by_path = client.predict(model_id, jpeg, top_k=3)
        assert len(by_path.predictions) == 3
        assert by_path.top is not None and by_path.top.label in CAT_LABELS
        assert client.predict(model_id, photos["coffee"], top_k=1).top.label == "espresso"
        png = client.predict(model_id, photos["chelsea_png"], top_k=1)
        assert png.top is not None and png.top.label in CAT_LABELS
        by_str = client.predict(model_id, str(jpeg), top_k=2)
        assert [p.label for p in by_str.predictions] == [p.label for p in by_path.predictions[:2]]

    async def run_async() -> str:
        async with AsyncClient(gateway.url) as client:
            result = await client.predict(model_id, jpeg, top_k=1)
            assert result.top is not None
            return result.top.label

    assert asyncio.run(run_async()) in CAT_LABELS


def test_errors_carry_status_and_the_servers_message(operated, linear):
    with Client(operated, admin_token=ADMIN) as client:
        with pytest.raises(NotFoundError) as info:
            client.predict("missing-12345678", b"\xff\xd8\xff\xe0", top_k=1)
        assert info.value.status == 404
        assert info.value.title == "Model not found"
        assert "missing-12345678" in info.value.message

        with pytest.raises(BadRequestError) as info:
            client.load("not-a-cid")
        assert info.value.status == 400
        assert "CID" in str(info.value)

        model_id = client.load(linear.metadata_cid, warmup=False).model_id
        with pytest.raises(BadRequestError) as info:
            client.execute(model_id, _tensor(), {"top_k": 11})
        assert "top_k" in info.value.message and "10" in info.value.message

        with pytest.raises(NotFoundError) as info:  # /v2 replies {"error": message}
            client.infer(
                "no-such-model", [InferInput(name="x", datatype="FP32", shape=[1], data=[0])]
            )
        assert info.value.message and info.value.title is None

    with Client(operated) as anonymous:
        with pytest.raises(AuthenticationError) as info:
            anonymous.load(linear.metadata_cid)
        assert info.value.status == 401
        with pytest.raises(AuthenticationError):
            anonymous.unload(model_id)
    with Client(operated, admin_token="wrong-token") as wrong, pytest.raises(AuthenticationError):
        wrong.load(linear.metadata_cid)

    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as nowhere:
        with pytest.raises(TransportError) as info:
            nowhere.health()
        assert info.value.status is None

    with Client(operated, max_response_bytes=64) as small, pytest.raises(InvalidResponseError):
        small.models()

    with pytest.raises(ValueError, match="metadata_cid"), Client(operated) as client:
        client.load()


def test_rate_limit_is_a_typed_error_with_retry_after(workdir, store, linear):
    with serve(workdir, store, rate_limit_rps=0.2, rate_limit_burst=1) as url, Client(url) as c:
        model_id = c.load(linear.metadata_cid, warmup=False).model_id
        with pytest.raises(RateLimitedError) as info:
            for _ in range(3):
                c.execute(model_id, _tensor())
        assert info.value.status == 429
        assert info.value.retry_after is not None and info.value.retry_after >= 1


def _recording_proxy(upstream: str, seen: list[str | None]) -> FastAPI:
    """A reverse proxy that routes nothing but notes the X-Model-Id each request carries."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def forward(path: str, request: Request) -> Response:
        seen.append(request.headers.get("x-model-id"))
        async with httpx.AsyncClient(base_url=upstream, timeout=60) as http:
            r = await http.request(
                request.method,
                "/" + path,
                params=request.query_params,
                content=await request.body(),
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            )
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

    return app


def test_execute_names_its_model_in_x_model_id_for_a_proxy(gateway, linear):
    seen: list[str | None] = []
    with (
        ServerThread(_recording_proxy(gateway.url, seen)) as proxy,
        Client(gateway.url) as direct,
        Client(proxy.url) as client,
    ):
        model_id = direct.load(linear.metadata_cid, warmup=False).model_id
        result = client.execute(model_id, _tensor(), {"top_k": 1})
        assert result.model_id == model_id
    assert seen == [model_id]
