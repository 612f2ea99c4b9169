"""Dynamic batching: concurrent requests share a run, and nobody can tell from the answers.

Real sessions (EfficientNet-Lite0, small onnx.helper models) in a real thread pool; one test
goes through a running gateway and reads the batch size from ``GET /metrics``. Every model
here is trusted for cross-request batching (``cross_request_batching=True``,
``CIDSERVE_BATCH_TRUSTED_CIDS``); what happens without that trust is in
``test_batching_isolation.py``.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from services.observability.metrics import Metrics
from services.runtime.batching import BatchPolicy, batchable
from services.runtime.errors import RunTimeout
from services.runtime.options import SessionConfig
from services.runtime.runner import ModelRunner
from services.runtime.session import create_session
from tests.conftest import make_settings
from tests.harness import ServerThread
from tests.models import linear_model

POLICY = BatchPolicy(enabled=True, max_size=8, max_delay_ms=0.0, max_inflight=1)


@pytest.fixture(scope="module")
def pool() -> ThreadPoolExecutor:
    with ThreadPoolExecutor(1, thread_name_prefix="test-ort") as ex:
        yield ex


@pytest.fixture(scope="module")
def slow_session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    return _session(_slow_dynamic(tmp_path_factory.mktemp("slow") / "slow.onnx"))


def _session(path: Path) -> ort.InferenceSession:
    return create_session(path, SessionConfig(execution_provider="cpu"))[0]


def _fixed_linear(path: Path) -> Path:
    """``y = x @ W`` with a fixed batch of 1: never batched."""
    w = np.arange(32, dtype=np.float32).reshape(8, 4) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _slow_dynamic(path: Path, *, width: int = 1024, depth: int = 2000) -> Path:
    """``x [batch, width]`` through ``depth`` chained MatMuls: a run long enough (tenths of a
    second) to test deadlines inside a batch."""
    w = np.eye(width, dtype=np.float32)
    nodes = []
    prev = "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow_dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


async def _gather(runner: ModelRunner, feeds: list[dict[str, np.ndarray]], timeout_s: float = 30):
    return await asyncio.gather(*(runner.run(f, timeout_s) for f in feeds), return_exceptions=True)


def test_concurrent_requests_share_runs_and_match_unbatched_results(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    session = _session(linear_model(tmp_path / "lin.onnx", n_in=8, n_out=4, seed=3))
    metrics = Metrics()
    runner = ModelRunner(
        session, pool, batching=POLICY, cross_request_batching=True, model_id="lin", metrics=metrics
    )
    assert runner.batcher is not None
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(16)]
    feeds.append({"x": rng.standard_normal((3, 8)).astype(np.float32)})  # 3 rows in one request
    results = asyncio.run(_gather(runner, feeds))
    for f, res in zip(feeds, results, strict=True):
        assert not isinstance(res, BaseException), res
        outputs, run_s = res
        want = session.run(None, f)[0]
        assert outputs["y"].shape == want.shape
        np.testing.assert_allclose(outputs["y"], want, rtol=1e-5, atol=1e-5)
        assert run_s > 0
    assert runner.batcher.max_batch > 1
    assert runner.batcher.runs < len(feeds)
    hist = metrics.batch_size.labels("lin")
    count = metrics.registry.get_sample_value("cidserve_batch_size_count", {"model": "lin"})
    total = metrics.registry.get_sample_value("cidserve_batch_size_sum", {"model": "lin"})
    assert hist is not None and count is not None and total is not None
    assert total == len(feeds) and count == runner.batcher.runs and total > count


def test_efficientnet_batched_outputs_equal_single_runs(
    efficientnet_onnx: Path, pool: ThreadPoolExecutor
) -> None:
    session = _session(efficientnet_onnx)
    runner = ModelRunner(
        session, pool, batching=POLICY, cross_request_batching=True, model_id="effnet"
    )
    assert runner.batcher is not None
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(5)]
    results = asyncio.run(_gather(runner, feeds))
    assert runner.batcher.max_batch > 1
    for f, res in zip(feeds, results, strict=True):
        assert not isinstance(res, BaseException), res
        want = session.run(None, f)[0]
        np.testing.assert_allclose(res[0]["logits"], want, rtol=1e-5, atol=1e-5)


def test_fixed_batch_model_is_never_batched(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    session = _session(_fixed_linear(tmp_path / "fixed.onnx"))
    assert not batchable(session)
    metrics = Metrics()
    runner = ModelRunner(
        session,
        pool,
        batching=POLICY,
        cross_request_batching=True,
        model_id="fixed",
        metrics=metrics,
    )
    assert runner.batcher is None
    feeds = [{"x": np.full((1, 8), i, dtype=np.float32)} for i in range(6)]
    results = asyncio.run(_gather(runner, feeds))
    for f, res in zip(feeds, results, strict=True):
        assert not isinstance(res, BaseException), res
        np.testing.assert_allclose(res[0]["y"], session.run(None, f)[0], rtol=1e-6)
    # Six runs of one request each.
    assert metrics.registry.get_sample_value("cidserve_batch_size_count", {"model": "fixed"}) == 6
    assert metrics.registry.get_sample_value("cidserve_batch_size_sum", {"model": "fixed"}) == 6


def test_requests_of_other_shapes_run_in_their_own_batch(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """A dynamic non-batch dimension: requests of a different width are not concatenated."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0, axes=[1])],
        "rowsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "rowsum.onnx"))
    session = _session(tmp_path / "rowsum.onnx")
    runner = ModelRunner(
        session, pool, batching=POLICY, cross_request_batching=True, model_id="rowsum"
    )
    feeds = [{"x": np.ones((1, 2 + i % 3), dtype=np.float32)} for i in range(9)]
    results = asyncio.run(_gather(runner, feeds))
    for f, res in zip(feeds, results, strict=True):
        assert not isinstance(res, BaseException), res
        assert res[0]["y"].tolist() == [float(f["x"].shape[1])]


def test_a_failing_run_fails_only_its_own_batch(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    session = _session(linear_model(tmp_path / "lin.onnx", seed=4))
    runner = ModelRunner(
        session, pool, batching=POLICY, cross_request_batching=True, model_id="lin"
    )
    good = [{"x": np.ones((1, 8), dtype=np.float32)} for _ in range(4)]
    bad = [{"x": np.ones((1, 8), dtype=np.float64)} for _ in range(3)]  # wrong dtype
    mixed = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]
    results = asyncio.run(_gather(runner, mixed))
    want = session.run(None, good[0])[0]
    for f, res in zip(mixed, results, strict=True):
        if f["x"].dtype == np.float64:
            assert isinstance(res, InvalidArgument), res
            assert "tensor(double)" in str(res)
        else:
            assert not isinstance(res, BaseException), res
            np.testing.assert_allclose(res[0]["y"], want, rtol=1e-6)


def test_deadlines_inside_a_batch(
    slow_session: ort.InferenceSession, pool: ThreadPoolExecutor
) -> None:
    """A request whose deadline passes while queued is dropped before the run; one whose
    deadline passes during the run times out alone; the others get their results."""
    runner = ModelRunner(
        slow_session, pool, batching=POLICY, cross_request_batching=True, model_id="slow"
    )
    assert runner.batcher is not None
    x = np.full((1, 1024), 0.5, dtype=np.float32)

    async def scenario() -> list[object]:
        # Occupies the only slot; the next three queue behind it and form one batch.
        first = asyncio.ensure_future(runner.run({"x": x}, 30))
        await asyncio.sleep(0.01)
        short = asyncio.ensure_future(runner.run({"x": x}, 0.005))  # expires while queued
        long_a = asyncio.ensure_future(runner.run({"x": x}, 30))
        long_b = asyncio.ensure_future(runner.run({"x": x + 1}, 30))
        return await asyncio.gather(first, short, long_a, long_b, return_exceptions=True)

    first, short, long_a, long_b = asyncio.run(scenario())
    assert isinstance(short, RunTimeout)
    for res, value in ((first, 0.5), (long_a, 0.5), (long_b, 1.5)):
        assert not isinstance(res, BaseException), res
        np.testing.assert_allclose(res[0]["y"], np.full((1, 1024), value), rtol=1e-5)
    # The expired request never reached a run: two runs, three requests served.
    assert runner.batcher.runs == 2 and runner.batcher.requests == 3

    async def during_run() -> list[object]:
        quick = asyncio.ensure_future(runner.run({"x": x}, 0.01))
        patient = asyncio.ensure_future(runner.run({"x": x}, 30))
        return await asyncio.gather(quick, patient, return_exceptions=True)

    quick, patient = asyncio.run(during_run())
    assert isinstance(quick, RunTimeout)
    assert not isinstance(patient, BaseException), patient
    np.testing.assert_allclose(patient[0]["y"], np.full((1, 1024), 0.5), rtol=1e-5)


def test_whole_run_past_every_deadline_is_terminated(
    slow_session: ort.InferenceSession, pool: ThreadPoolExecutor
) -> None:
    runner = ModelRunner(
        slow_session, pool, batching=POLICY, cross_request_batching=True, model_id="slow"
    )
    x = np.ones((1, 1024), dtype=np.float32)
    results = asyncio.run(_gather(runner, [{"x": x}, {"x": x}], timeout_s=0.01))
    assert all(isinstance(r, RunTimeout) for r in results)
    # The terminated run frees the worker quickly: the next request is served.
    (after,) = asyncio.run(_gather(runner, [{"x": x[:, :]}], timeout_s=60))
    assert not isinstance(after, BaseException), after


def _metric(text: str, name: str, model_id: str) -> float:
    m = re.search(rf'^{name}\{{model="{re.escape(model_id)}"\}} (\S+)$', text, re.M)
    assert m, f"{name} for {model_id} not in /metrics"
    return float(m.group(1))


def test_gateway_batches_concurrent_predictions(
    workdir: Path, store, efficientnet, photos: dict[str, bytes]
) -> None:
    """Through HTTP: concurrent predictions are batched (the metric says so) and give the same
    answers as one request at a time; a short deadline still gives 504."""
    settings = make_settings(
        workdir,
        prediction_cache=False,
        batch_max_delay_ms=50.0,
        batch_max_size=8,
        batch_trusted_cids=efficientnet.metadata_cid,
    )
    from services.http.app import create_app
    from services.wiring import build_services

    services = build_services(settings, store=store)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        r = client.post("/api/models/load", json={"metadataCid": efficientnet.metadata_cid})
        assert r.status_code == 200, r.text
        model_id = r.json()["model_id"]
        assert client.get(f"/api/models/{model_id}").json()["cross_request_batching"] is True
        images = [photos["chelsea"], photos["coffee"], photos["astronaut"]] * 3

        def predict(data: bytes) -> dict[str, object]:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                resp = c.post(
                    f"/api/models/{model_id}/predict",
                    content=data,
                    headers={"Content-Type": "image/jpeg"},
                )
            assert resp.status_code == 200, resp.text
            return resp.json()

        alone = [predict(d) for d in images[:3]]
        with ThreadPoolExecutor(len(images)) as ex:
            together = list(ex.map(predict, images))
        for i, got in enumerate(together):
            want = alone[i % 3]
            assert [p["class_id"] for p in got["predictions"]] == [
                p["class_id"] for p in want["predictions"]
            ]
            for a, b in zip(got["predictions"], want["predictions"], strict=True):
                assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
        text = client.get("/metrics").text
        count = _metric(text, "cidserve_batch_size_count", model_id)
        total = _metric(text, "cidserve_batch_size_sum", model_id)
        assert total == len(images) + 3
        assert count < total  # some run served more than one request
        queue = re.search(
            rf'^cidserve_request_duration_seconds_count\{{model="{re.escape(model_id)}",'
            rf'stage="queue"\}} (\S+)$',
            text,
            re.M,
        )
        assert queue and float(queue.group(1)) == len(images) + 3
        r = client.post(
            f"/api/models/{model_id}/predict?timeout=1",
            content=photos["chelsea"],
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code == 504, r.text
        assert r.json()["success"] is False
