"""The session cache as a user sees it: LRU order, single-flight loads, reloads, providers."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.runtime.errors import ProviderUnavailable
from services.runtime.options import SessionConfig
from services.runtime.providers import CPU, CUDA, select_providers
from services.runtime.session import create_session
from tests.conftest import Gateway
from tests.models import linear_model, linear_weights


@pytest.fixture(scope="module")
def linear_models(workdir: Path, store: LocalContentStore) -> list[PublishResult]:
    """Five distinct small models (different weights, different CIDs)."""
    out = []
    for seed in range(5):
        path = linear_model(workdir / f"linear{seed}.onnx", seed=seed)
        out.append(
            asyncio.run(publish_model(store, path, name=f"linear-{seed}", task="classification"))
        )
    return out


def _load(gw: Gateway, pub: PublishResult) -> dict:
    r = gw.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
    assert r.status_code == 200, r.text
    return r.json()


def _run(gw: Gateway, model_id: str, x: list[float]) -> dict:
    r = gw.client.post(
        "/api/inference/execute",
        json={
            "model_id": model_id,
            "input_data": {"format": "tensor", "content": [x]},
            "options": {"top_k": 0},
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_lru_evicts_the_least_recently_used(
    private_gateway: Gateway, linear_models: list[PublishResult]
):
    gw = private_gateway
    a, b, c, d, e = (m.model_id for m in linear_models)
    for pub in linear_models[:3]:
        _load(gw, pub)
    assert gw.client.get("/api/models").json()["cacheStatus"]["models_in_cache"] == [a, b, c]

    body = _load(gw, linear_models[3])  # A is least recently used
    assert body["cacheStatus"]["models_in_cache"] == [b, c, d]
    assert body["cacheStatus"]["current_size"] == 3

    _run(gw, b, [1.0] * 8)  # B is now most recently used; C is the oldest
    body = _load(gw, linear_models[4])
    assert body["cacheStatus"]["models_in_cache"] == [d, b, e]
    counters = gw.client.get("/api/models").json()["counters"]
    assert counters["session_cache_evictions"] == 2


def test_evicted_model_reloads_on_request_with_the_same_answers(
    private_gateway: Gateway, linear_models: list[PublishResult]
):
    gw = private_gateway
    x = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 0.25, 3.0]
    first = linear_models[0]
    _load(gw, first)
    before = _run(gw, first.model_id, x)
    for pub in linear_models[1:4]:
        _load(gw, pub)
    assert (
        first.model_id not in gw.client.get("/api/models").json()["cacheStatus"]["models_in_cache"]
    )
    after = _run(gw, first.model_id, x)
    assert after["predictions"] == before["predictions"]
    # And the numbers are those of the model's own weights.
    w, b = linear_weights(0)
    logits = np.asarray(x, dtype=np.float32) @ w + b
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    got = {p["class_id"]: p["confidence"] for p in after["predictions"]}
    for i, p in enumerate(probs):
        assert got[i] == pytest.approx(float(p), rel=1e-5)


def test_unloaded_model_is_gone(private_gateway: Gateway, linear_models):
    gw = private_gateway
    model_id = _load(gw, linear_models[2])["model_id"]
    r = gw.client.delete(f"/api/models/{model_id}")
    assert r.status_code == 200
    assert model_id not in r.json()["cacheStatus"]["models_in_cache"]
    r = gw.client.post(
        "/api/inference/execute",
        json={"model_id": model_id, "input_data": {"format": "tensor", "content": [[0] * 8]}},
    )
    assert r.status_code == 404
    assert gw.client.delete(f"/api/models/{model_id}").status_code == 404


def test_concurrent_loads_of_one_model_load_it_once(
    private_gateway: Gateway, efficientnet: PublishResult
):
    gw = private_gateway
    started = gw.services.loader.loads_started

    def load(_: int) -> dict:
        return _load(gw, efficientnet)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(load, range(8)))
    assert {r["model_id"] for r in replies} == {efficientnet.model_id}
    assert gw.services.loader.loads_started == started + 1
    assert sum(r["status"] == "loaded" for r in replies) >= 1
    assert gw.client.get("/api/models").json()["cacheStatus"]["current_size"] == 1


@pytest.mark.parametrize(
    "private_gateway",
    # One session per model (no alone session, which would count twice): the sizes below.
    [{"max_cache_bytes": 40_000_000, "intra_op_threads_alone": 1}],
    indirect=True,
)
def test_byte_bound_evicts_by_measured_memory(
    private_gateway: Gateway, efficientnet: PublishResult, linear_models, workdir, store
):
    # The bound counts what each session took (measured by its trial build), not file sizes:
    # EfficientNet-Lite0 is an 18.6 MB file and holds about 60 MB once built and warmed up, so
    # the three files (23 MB) fit in 40 MB but the three sessions do not.
    gw = private_gateway
    big_path = linear_model(workdir / "big.onnx", n_in=1024, n_out=1024, seed=42)  # ~4 MB
    big = asyncio.run(publish_model(store, big_path, name="big-linear"))
    _load(gw, linear_models[0])
    status = _load(gw, big)["cacheStatus"]
    assert status["models_in_cache"] == [linear_models[0].model_id, big.model_id]
    assert status["total_bytes"] == sum(status["memory_bytes"].values()) <= 40_000_000
    body = _load(gw, efficientnet)  # over the bound: the oldest go until it fits
    status = body["cacheStatus"]
    assert status["models_in_cache"] == [efficientnet.model_id]
    assert status["total_bytes"] == status["memory_bytes"][efficientnet.model_id] > 30_000_000


@pytest.mark.parametrize("private_gateway", [{"execution_provider": "cuda"}], indirect=True)
def test_cuda_requested_without_a_gpu_falls_back_to_cpu(private_gateway: Gateway, linear_models):
    body = _load(private_gateway, linear_models[0])
    assert body["execution_provider"] == CPU
    assert "CPU fallback" in body["message"]
    assert CUDA in body["message"]


def test_provider_selection_is_wired_for_gpu_hosts():
    gpu_host = [CUDA, CPU]
    cpu_host = [CPU]
    assert select_providers("auto", gpu_host, device_id=1).providers == [
        (CUDA, {"device_id": 1}),
        CPU,
    ]
    assert select_providers("cuda", gpu_host).providers[0][0] == CUDA
    assert select_providers("cpu", gpu_host).providers == [CPU]
    assert select_providers("auto", cpu_host).providers == [CPU]
    choice = select_providers("cuda", cpu_host)
    assert choice.providers == [CPU] and choice.fallback_reason
    with pytest.raises(ProviderUnavailable, match=CUDA):
        select_providers("cuda", cpu_host, require_gpu=True)


def test_require_gpu_refuses_a_session_that_cuda_did_not_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # onnxruntime-gpu without loadable CUDA libraries still lists CUDA, then builds the session
    # on CPU: here, a CPU build that claims CUDA behaves the same way.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    path = linear_model(tmp_path / "m.onnx")
    wanted = SessionConfig(execution_provider="cuda", require_gpu=True)
    with pytest.raises(ProviderUnavailable, match="built the session on CPUExecutionProvider"):
        create_session(path, wanted)
    _, active, _ = create_session(path, SessionConfig(execution_provider="cuda"))
    assert active == CPU  # without the requirement, the fallback is served (and reported)


def test_one_input_per_request(private_gateway: Gateway, linear_models):
    model_id = _load(private_gateway, linear_models[0])["model_id"]
    r = private_gateway.client.post(
        "/api/inference/execute",
        json={
            "model_id": model_id,
            "input_data": {"format": "tensor", "content": [[0.0] * 8, [1.0] * 8]},
        },
    )
    assert r.status_code == 400
    assert "batch dimension is 2" in r.json()["message"]
