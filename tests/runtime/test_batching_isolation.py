"""Dynamic batching never mixes callers' rows unless the operator trusts the model.

The hostile model here is one ``Slice`` with step -1 on axis 0: it hands each row of a run the
output of another row. Untrusted (the default), every request runs alone, so each caller gets
what its own input gives, and the prediction cache holds only such answers. Trusted
(``CIDSERVE_BATCH_TRUSTED_CIDS``), concurrent requests share runs, and the same model then
swaps two callers' answers and caches the swapped ones: why trust is the operator's call.

Real sessions in a real thread pool, then real gateways (``ServerThread``) over loopback.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from registry.unixfs import canonical_cid
from services.http.app import create_app
from services.observability.metrics import Metrics
from services.runtime.batching import BatchPolicy
from services.runtime.options import SessionConfig
from services.runtime.runner import ModelRunner
from services.runtime.session import create_session
from services.settings import SettingsError, load_settings
from services.wiring import build_services
from tests.conftest import make_settings
from tests.harness import ServerThread
from tests.models import linear_model

POLICY = BatchPolicy(enabled=True, max_size=8, max_delay_ms=0.0, max_inflight=1)
VICTIM = [11.0, 22.0, 33.0, 44.0]
INT64_MIN = np.iinfo(np.int64).min


def reverse_rows_model(path: Path, *, width: int = 4, score: bool = False) -> Path:
    """``x [batch, width]`` -> its rows in reverse order (``y``), or, with ``score``, each
    reversed row's sum (``score [batch, 1]``): a few hundred bytes that look batchable."""
    consts = [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([INT64_MIN], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "steps"),
    ]
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    if score:
        consts.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "sum_axes"))
        nodes.append(helper.make_node("ReduceSum", ["y", "sum_axes"], ["score"], keepdims=1))
        output = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph(
        nodes,
        "reverse_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [output],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2, thread_name_prefix="test-ort") as ex:
        yield ex


@pytest.fixture(scope="module")
def reverse_session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    path = reverse_rows_model(tmp_path_factory.mktemp("rev") / "rev.onnx")
    return create_session(path, SessionConfig(execution_provider="cpu"))[0]


async def _gather(runner: ModelRunner, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
    return await asyncio.gather(*(runner.run(f, 30) for f in feeds), return_exceptions=True)


def _batch_samples(metrics: Metrics, model_id: str) -> tuple[float | None, float | None]:
    """(runs, requests) of the model as the batch-size histogram counts them."""
    labels = {"model": model_id}
    return (
        metrics.registry.get_sample_value("cidserve_batch_size_count", labels),
        metrics.registry.get_sample_value("cidserve_batch_size_sum", labels),
    )


# -- the runner ------------------------------------------------------------------------------


def test_untrusted_reversing_model_gives_every_caller_its_own_rows(
    reverse_session: ort.InferenceSession, pool: ThreadPoolExecutor
) -> None:
    """50 rounds of 8 concurrent callers (one of them with 3 rows): each gets its own rows,
    reversed among themselves only; every run serves one request."""
    metrics = Metrics()
    runner = ModelRunner(reverse_session, pool, batching=POLICY, model_id="rev", metrics=metrics)
    assert runner.batcher is None and runner.cross_request_batching is False
    rng = np.random.default_rng(7)
    total = 0
    for _ in range(50):
        feeds = [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(7)]
        feeds.insert(3, {"x": rng.standard_normal((3, 4)).astype(np.float32)})
        results = asyncio.run(_gather(runner, feeds))
        for f, res in zip(feeds, results, strict=True):
            assert not isinstance(res, BaseException), res
            np.testing.assert_array_equal(res[0]["y"], f["x"][::-1])
        total += len(feeds)
    assert _batch_samples(metrics, "rev") == (total, total)


def test_untrusted_victim_and_attacker_each_get_their_own_answer(
    reverse_session: ort.InferenceSession, pool: ThreadPoolExecutor
) -> None:
    runner = ModelRunner(reverse_session, pool, batching=POLICY, model_id="rev")
    victim = {"x": np.array([VICTIM], dtype=np.float32)}
    attacker = {"x": np.zeros((1, 4), dtype=np.float32)}
    for _ in range(100):
        got_victim, got_attacker = asyncio.run(_gather(runner, [victim, attacker]))
        assert got_victim[0]["y"].tolist() == [VICTIM]
        assert got_attacker[0]["y"].tolist() == [[0.0] * 4]


def test_trusted_reversing_model_is_batched_and_mixes_rows(
    reverse_session: ort.InferenceSession, pool: ThreadPoolExecutor
) -> None:
    """What trust allows: the two requests share one run, and the model swaps their answers
    (the victim's input reaches the attacker). Cross-request batching is the operator's call."""
    metrics = Metrics()
    runner = ModelRunner(
        reverse_session,
        pool,
        batching=POLICY,
        cross_request_batching=True,
        model_id="rev-trusted",
        metrics=metrics,
    )
    assert runner.batcher is not None and runner.cross_request_batching is True
    victim = {"x": np.array([VICTIM], dtype=np.float32)}
    attacker = {"x": np.zeros((1, 4), dtype=np.float32)}
    got_victim, got_attacker = asyncio.run(_gather(runner, [victim, attacker]))
    assert got_victim[0]["y"].tolist() == [[0.0] * 4]
    assert got_attacker[0]["y"].tolist() == [VICTIM]
    assert runner.batcher.runs == 1 and runner.batcher.max_batch == 2
    assert _batch_samples(metrics, "rev-trusted") == (1, 2)


def test_benign_model_answers_correctly_trusted_or_not(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    session = create_session(
        linear_model(tmp_path / "lin.onnx", seed=5), SessionConfig(execution_provider="cpu")
    )[0]
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(12)]
    want = [session.run(None, f)[0] for f in feeds]
    for trusted in (False, True):
        metrics = Metrics()
        runner = ModelRunner(
            session,
            pool,
            batching=POLICY,
            cross_request_batching=trusted,
            model_id="lin",
            metrics=metrics,
        )
        results = asyncio.run(_gather(runner, feeds))
        for res, w in zip(results, want, strict=True):
            assert not isinstance(res, BaseException), res
            np.testing.assert_allclose(res[0]["y"], w, rtol=1e-5, atol=1e-5)
        runs, requests = _batch_samples(metrics, "lin")
        assert requests == len(feeds)
        assert (runs is not None and runs < requests) is trusted


def test_batching_switched_off_wins_over_trust(
    reverse_session: ort.InferenceSession, pool: ThreadPoolExecutor
) -> None:
    off = BatchPolicy(enabled=False)
    runner = ModelRunner(reverse_session, pool, batching=off, cross_request_batching=True)
    assert runner.batcher is None and runner.cross_request_batching is False


# -- the policy and the setting ---------------------------------------------------------------

CID_V0 = "QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB"
CID_V1 = canonical_cid(CID_V0)


def test_policy_trusts_listed_cids_in_any_spelling() -> None:
    policy = BatchPolicy(trusted_cids=frozenset({CID_V0}))
    assert policy.trusted_cids == frozenset({CID_V1})
    assert policy.trusts(CID_V0) and policy.trusts(CID_V1)
    assert not policy.trusts("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
    assert not policy.trusts("not a cid")
    assert not BatchPolicy().trusts(CID_V1)
    with pytest.raises(ValueError, match="not a CID"):
        BatchPolicy(trusted_cids=frozenset({"nope"}))


def test_trusted_cids_setting_is_canonicalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIDSERVE_BATCH_TRUSTED_CIDS", f" {CID_V0} ,{CID_V1},")
    assert load_settings().batch_trusted_cids == frozenset({CID_V1})
    monkeypatch.setenv("CIDSERVE_BATCH_TRUSTED_CIDS", "")
    assert load_settings().batch_trusted_cids == frozenset()
    assert load_settings(batch_trusted_cids=[CID_V0]).batch_trusted_cids == frozenset({CID_V1})


def test_invalid_trusted_cid_fails_start_up_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIDSERVE_BATCH_TRUSTED_CIDS", f"{CID_V0},not-a-cid")
    with pytest.raises(SettingsError, match=r"CIDSERVE_BATCH_TRUSTED_CIDS.*entry 2 is not a CID"):
        load_settings()


# -- through the gateway ----------------------------------------------------------------------


@dataclass
class Served:
    url: str
    client: httpx.Client
    model_id: str


@pytest.fixture(scope="module")
def reverse_score(workdir: Path, store: LocalContentStore) -> PublishResult:
    path = reverse_rows_model(workdir / "reverse-score.onnx", score=True)
    return asyncio.run(publish_model(store, path, name="reverse-score", task="score"))


@pytest.fixture
def serve(workdir: Path, store: LocalContentStore, reverse_score: PublishResult):
    """``serve(**settings)``: a gateway with the reversing score model loaded."""
    stack: list[Any] = []

    def start(**overrides: Any) -> Served:
        settings = make_settings(workdir, batch_max_size=2, **overrides)
        srv = ServerThread(create_app(settings, build_services(settings, store=store)))
        stack.append(srv.__enter__())
        client = httpx.Client(base_url=srv.url, timeout=60)
        stack.append(client)
        r = client.post("/api/models/load", json={"metadataCid": reverse_score.metadata_cid})
        assert r.status_code == 200, r.text
        return Served(srv.url, client, r.json()["model_id"])

    yield start
    for part in reversed(stack):
        part.close() if isinstance(part, httpx.Client) else part.__exit__(None, None, None)


def _pairs(served: Served, pairs: list[tuple[list[float], list[float]]]) -> list[list[Any]]:
    """Each pair sent by two callers at the same moment; (score, cache status) per caller."""
    clients = [httpx.Client(base_url=served.url, timeout=60) for _ in range(2)]
    barrier = threading.Barrier(2, timeout=30)

    def call(i: int, x: list[float]) -> tuple[float, str]:
        barrier.wait()
        r = clients[i].post(
            "/api/inference/execute",
            json={"model_id": served.model_id, "input_data": {"format": "tensor", "content": [x]}},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cache"] == r.headers["X-Cache"]
        return body["details"]["score"], body["cache"]

    out = []
    try:
        with ThreadPoolExecutor(2) as ex:
            for victim, attacker in pairs:
                a = ex.submit(call, 0, victim)
                b = ex.submit(call, 1, attacker)
                out.append([a.result(timeout=60), b.result(timeout=60)])
    finally:
        for c in clients:
            c.close()
    return out


def _metric(served: Served, name: str) -> float:
    text = served.client.get("/metrics").text
    m = re.search(rf'^{name}\{{model="{re.escape(served.model_id)}"\}} (\S+)$', text, re.M)
    assert m, f"{name} for {served.model_id} not in /metrics"
    return float(m.group(1))


def _inputs(n: int, offset: int = 0) -> list[tuple[list[float], list[float]]]:
    """Distinct pairs: the victim's row sums to 110 + i, the attacker's to i (< 110)."""
    return [([*VICTIM[:3], VICTIM[3] + i], [0.0, 0.0, 0.0, float(i)]) for i in range(offset, n)]


def test_gateway_untrusted_model_never_mixes_callers_or_their_cached_answers(serve) -> None:
    """Concurrent victim/attacker pairs through HTTP, each answered from its own input; the
    prediction cache then serves each caller its own answer, never the other's."""
    served = serve(batch_max_delay_ms=200.0, prediction_cache=True)
    described = served.client.get(f"/api/models/{served.model_id}").json()
    assert described["cross_request_batching"] is False
    pairs = _inputs(20)
    first = _pairs(served, pairs)
    for (victim, attacker), ((v_score, v_cache), (a_score, a_cache)) in zip(
        pairs, first, strict=True
    ):
        assert (v_score, a_score) == (sum(victim), sum(attacker))
        assert v_cache == a_cache == "miss"
    again = _pairs(served, pairs)
    for (victim, attacker), ((v_score, v_cache), (a_score, a_cache)) in zip(
        pairs, again, strict=True
    ):
        assert (v_score, a_score) == (sum(victim), sum(attacker))
        assert v_cache == a_cache == "hit"
    # Every computed request was a run of its own.
    assert _metric(served, "cidserve_batch_size_count") == 2 * len(pairs)
    assert _metric(served, "cidserve_batch_size_sum") == 2 * len(pairs)


def test_gateway_trusted_model_batches_and_so_may_mix_callers(
    serve, reverse_score: PublishResult
) -> None:
    """The same model, its CID listed in CIDSERVE_BATCH_TRUSTED_CIDS: pairs share runs (the
    batch-size metric), and this model swaps the two answers and caches the swapped ones."""
    served = serve(
        batch_max_delay_ms=1000.0,
        prediction_cache=True,
        batch_trusted_cids=reverse_score.metadata_cid,
    )
    described = served.client.get(f"/api/models/{served.model_id}").json()
    assert described["cross_request_batching"] is True
    pairs = _inputs(105, offset=100)
    results = _pairs(served, pairs)
    runs = _metric(served, "cidserve_batch_size_count")
    assert _metric(served, "cidserve_batch_size_sum") == 2 * len(pairs)
    assert runs < 2 * len(pairs)
    swapped = [
        (victim, attacker)
        for (victim, attacker), ((v_score, _), (a_score, _)) in zip(pairs, results, strict=True)
        if (v_score, a_score) == (sum(attacker), sum(victim))
    ]
    assert len(swapped) == 2 * len(pairs) - runs  # every shared run swapped its pair
    # The victim's input is now cached with the attacker's answer.
    victim, attacker = swapped[0]
    r = served.client.post(
        "/api/inference/execute",
        json={"model_id": served.model_id, "input_data": {"format": "tensor", "content": [victim]}},
    )
    assert r.headers["X-Cache"] == "hit"
    assert r.json()["details"]["score"] == sum(attacker)
