"""Deterministic mode (CIDSERVE_DETERMINISTIC): identical inputs give bit-identical outputs,
whatever else runs at the same time, even for a model the operator trusts for batching."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.http.app import create_app
from services.settings import Settings
from services.wiring import build_services
from tests.harness import ServerThread
from tests.models import linear_model, linear_weights

N_IN = 256
CONCURRENT = 48


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, PublishResult]:
    store = LocalContentStore(tmp_path / "data" / "store")
    path = linear_model(tmp_path / "wide.onnx", n_in=N_IN, n_out=64, seed=3)
    return tmp_path, asyncio.run(publish_model(store, path, name="wide"))


@pytest.fixture
def server(published: tuple[Path, PublishResult]) -> Iterator[tuple[str, PublishResult]]:
    tmp_path, result = published
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        deterministic=True,
        prediction_cache=False,
        # Everything that could mix requests is asked for; deterministic mode keeps them apart.
        batch_enabled=True,
        batch_max_delay_ms=5.0,
        batch_trusted_cids=frozenset({result.metadata_cid}),
        inference_workers=4,
        intra_op_threads=2,
    )
    services = build_services(settings)
    with ServerThread(create_app(settings, services)) as srv:
        yield srv.url, result


def _infer_body(x: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


def test_same_input_many_concurrent_requests_bit_identical(
    server: tuple[str, PublishResult],
) -> None:
    url, result = server
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, N_IN)).astype(np.float32)
    noise = [rng.standard_normal((1, N_IN)).astype(np.float32) for _ in range(CONCURRENT)]

    async def main() -> list[bytes]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            r = await client.post("/api/models/load", json={"metadataCid": result.metadata_cid})
            assert r.status_code == 200, r.text
            model_id = r.json()["model_id"]
            info = (await client.get(f"/api/models/{model_id}")).json()
            assert info["cross_request_batching"] is False

            async def one(body: dict[str, object]) -> bytes:
                r = await client.post(f"/v2/models/{model_id}/infer", json=body)
                assert r.status_code == 200, r.text
                values = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
                return values.tobytes()

            # The same input, interleaved with other callers' inputs.
            bodies = [_infer_body(x)] * CONCURRENT + [_infer_body(n) for n in noise]
            order = rng.permutation(len(bodies))
            got = await asyncio.gather(*(one(bodies[i]) for i in order))
            return [g for g, i in zip(got, order, strict=True) if i < CONCURRENT]

    same = asyncio.run(main())
    assert len(same) == CONCURRENT
    assert len(set(same)) == 1, "outputs differ between runs of the same input"
    w, b = linear_weights(3, N_IN, 64)
    assert np.allclose(np.frombuffer(same[0], np.float32), (x @ w + b).ravel(), atol=1e-3)


def test_session_options_are_deterministic() -> None:
    from services.runtime.options import SessionConfig, session_options

    opts = session_options(SessionConfig(intra_op_threads=0, deterministic=True))
    assert opts.use_deterministic_compute
    assert opts.intra_op_num_threads == 1
    import onnxruntime as ort

    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert not session_options(SessionConfig()).use_deterministic_compute
