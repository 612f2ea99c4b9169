"""GET /metrics as Prometheus sees it: request counters, stage histograms, cache counters,
load times, in-flight requests, and the sum over several worker processes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from tests.conftest import Gateway
from tests.harness import ServiceProcess, free_port
from tests.models import linear_model

CIDSERVE = [sys.executable, "-m", "services.cli"]
STAGES = ("queue", "preprocess", "inference", "postprocess", "total")
PREDICT = "/api/models/{model_id}/predict"
EXECUTE = "/api/inference/execute"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(client: httpx.Client) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


def _tensor_request(model_id: str, n: int = 8) -> dict:
    # Random inputs: a prediction-cache hit would skip the stages under test.
    x = [random.uniform(-1, 1) for _ in range(n)]
    return {"model_id": model_id, "input_data": {"format": "tensor", "content": [x]}}


@pytest.fixture(scope="module")
def tiny_models(workdir: Path, store: LocalContentStore) -> list[PublishResult]:
    out = []
    for seed in (101, 102):
        path = linear_model(workdir / f"metrics{seed}.onnx", seed=seed)
        out.append(asyncio.run(publish_model(store, path, name=f"metrics-{seed}")))
    return out


def test_metrics_is_prometheus_text_and_names_every_metric(gateway: Gateway):
    r = gateway.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    for name in (
        "cidserve_requests",
        "cidserve_request_duration_seconds",
        "cidserve_inflight_requests",
        "cidserve_models_loaded",
        "cidserve_session_cache_hits",
        "cidserve_session_cache_evictions",
        "cidserve_prediction_cache_hits",
        "cidserve_ipfs_bytes_fetched",
    ):
        assert name in names, name
    om = gateway.client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")


def test_a_prediction_is_counted_with_its_model_endpoint_status_and_stages(
    gateway: Gateway, effnet_id: str, photos: dict[str, bytes]
):
    before = scrape(gateway.client)
    r = gateway.client.post(
        f"/api/models/{effnet_id}/predict",
        content=photos["coffee"],
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    after = scrape(gateway.client)

    labels = {"model": effnet_id, "endpoint": PREDICT, "status": "200"}
    assert value(after, "cidserve_requests_total", **labels) == (
        value(before, "cidserve_requests_total", **labels) + 1
    )
    hist = "cidserve_request_duration_seconds"
    grew = {}
    for stage in STAGES:
        lbl = {"model": effnet_id, "stage": stage}
        assert value(after, f"{hist}_count", **lbl) == value(before, f"{hist}_count", **lbl) + 1
        grew[stage] = value(after, f"{hist}_sum", **lbl) - value(before, f"{hist}_sum", **lbl)
    parts = grew["queue"] + grew["preprocess"] + grew["inference"] + grew["postprocess"]
    assert grew["inference"] > 0 and grew["preprocess"] > 0
    assert grew["total"] >= parts * 0.999
    # The reply's own timings are the ones observed.
    reply_ms = r.json()["metrics"]["inference_time_ms"]
    assert grew["inference"] * 1000 == pytest.approx(reply_ms, abs=0.01)


def test_unknown_models_and_paths_do_not_create_label_values(gateway: Gateway):
    """A client cannot blow up the series count by inventing model ids or paths."""
    before = scrape(gateway.client)
    for i in range(3):
        r = gateway.client.post(
            f"/api/models/made-up-{i}/predict", content=b"x", headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 404
        assert gateway.client.get(f"/no/such/path/{i}").status_code == 404
    after = scrape(gateway.client)
    lbl = {"model": "none", "endpoint": PREDICT, "status": "404"}
    assert value(after, "cidserve_requests_total", **lbl) == (
        value(before, "cidserve_requests_total", **lbl) + 3
    )
    lbl = {"model": "none", "endpoint": "unmatched", "status": "404"}
    assert value(after, "cidserve_requests_total", **lbl) == (
        value(before, "cidserve_requests_total", **lbl) + 3
    )
    text = gateway.client.get("/metrics").text
    assert "made-up" not in text and "/no/such" not in text


def test_inflight_requests_counts_a_request_while_it_is_being_handled(
    gateway: Gateway, effnet_id: str, photos: dict[str, bytes]
):
    base = value(scrape(gateway.client), "cidserve_inflight_requests")
    release = threading.Event()
    result: dict[str, int] = {}

    def body() -> Iterator[bytes]:
        yield photos["chelsea"][:1000]
        release.wait(30)
        yield photos["chelsea"][1000:]

    def upload() -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as c:
            r = c.post(
                f"/api/models/{effnet_id}/predict",
                content=body(),
                headers={"Content-Type": "image/jpeg"},
            )
            result["status"] = r.status_code

    t = threading.Thread(target=upload)
    t.start()
    try:
        deadline = time.monotonic() + 20
        seen = base
        while time.monotonic() < deadline and seen != base + 1:
            seen = value(scrape(gateway.client), "cidserve_inflight_requests")
            time.sleep(0.02)
        assert seen == base + 1  # the upload is in flight; the scrapes themselves are not
    finally:
        release.set()
        t.join(60)
    assert result["status"] == 200
    assert value(scrape(gateway.client), "cidserve_inflight_requests") == base


@pytest.mark.parametrize("private_gateway", [{"max_models_in_memory": 1}], indirect=True)
def test_session_cache_counters_and_load_sources(
    private_gateway: Gateway, tiny_models: list[PublishResult]
):
    gw = private_gateway
    a, b = tiny_models

    def load(pub: PublishResult) -> dict:
        r = gw.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
        assert r.status_code == 200, r.text
        return r.json()

    def run(pub: PublishResult) -> None:
        r = gw.client.post(EXECUTE, json=_tensor_request(pub.model_id))
        assert r.status_code == 200, r.text

    load(a)
    run(a)  # hit
    assert load(a)["status"] == "already_loaded"  # from memory
    load(b)  # evicts A
    run(a)  # miss: reloaded, evicts B
    m = scrape(gw.client)
    cache = gw.services.cache
    assert value(m, "cidserve_session_cache_evictions_total") == cache.evictions == 2
    assert value(m, "cidserve_session_cache_misses_total") == cache.misses >= 1
    assert value(m, "cidserve_session_cache_hits_total") == cache.hits >= 2
    assert value(m, "cidserve_models_loaded") == 1
    load_count = "cidserve_model_load_duration_seconds_count"
    assert value(m, load_count, source="local") == 3  # A, B, A again
    assert value(m, load_count, source="memory") == 1
    assert value(m, "cidserve_model_load_duration_seconds_sum", source="local") > 0
    assert (
        value(m, "cidserve_requests_total", model=a.model_id, endpoint=EXECUTE, status="200") == 2
    )
    # Loads are counted under the model they loaded.
    load_ep = "/api/models/load"
    assert (
        value(m, "cidserve_requests_total", model=a.model_id, endpoint=load_ep, status="200") == 2
    )


# --- several worker processes ------------------------------------------------------------


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(child))
    return pids


def _seed_stale_values(path: Path) -> None:
    """What a previous run would leave behind: 1000 requests that must not be summed in."""
    code = (
        "from services.observability.metrics import Metrics\n"
        "Metrics().requests.labels('stale', '/api/inference/execute', '200').inc(1000)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert list(path.glob("counter_*.db"))


@pytest.mark.slow
def test_two_workers_report_the_sum_of_both(tmp_path: Path):
    data = tmp_path / "data"
    store = LocalContentStore(data / "store")
    pub = asyncio.run(
        publish_model(store, linear_model(tmp_path / "w.onnx", seed=7), name="workers")
    )
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    _seed_stale_values(prom_dir)
    env = {
        "CIDSERVE_DATA_DIR": str(data),
        "CIDSERVE_PORT": str(free_port()),
        "CIDSERVE_LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
    }
    svc = ServiceProcess([*CIDSERVE, "serve", "--workers", "2"], env, tmp_path / "w.log")
    try:
        svc.wait_ready(timeout=120)
        # Each worker has its own session cache: load until both hold the model. Fresh
        # connections let the kernel hand them to either worker.
        loaded = 0.0
        for _ in range(200):
            r = httpx.post(
                svc.url + "/api/models/load", json={"metadataCid": pub.metadata_cid}, timeout=30
            )
            assert r.status_code == 200, r.text
            loaded = value(parse(httpx.get(svc.url + "/metrics").text), "cidserve_models_loaded")
            if loaded == 2:
                break
        assert loaded == 2, "models_loaded never summed both workers' models"
        assert len(_worker_pids(svc.proc.pid)) == 2

        before = parse(httpx.get(svc.url + "/metrics").text)
        assert total(before, "cidserve_requests_total", model="stale") == 0
        n = 30
        for _ in range(n):
            r = httpx.post(svc.url + EXECUTE, json=_tensor_request(pub.model_id), timeout=30)
            assert r.status_code == 200, r.text
        after = parse(httpx.get(svc.url + "/metrics").text)
        lbl = {"model": pub.model_id, "endpoint": EXECUTE, "status": "200"}
        assert value(after, "cidserve_requests_total", **lbl) == n
        count = "cidserve_request_duration_seconds_count"
        assert value(after, count, model=pub.model_id, stage="total") == n
        assert value(after, "cidserve_inflight_requests") == 0

        # A worker dies: uvicorn starts a new one; the dead one's model no longer counts as
        # loaded, and the totals do not go backwards.
        victim = _worker_pids(svc.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        m = after
        while time.monotonic() < deadline:
            try:
                m = parse(httpx.get(svc.url + "/metrics", timeout=5).text)
            except httpx.HTTPError:
                m = {}
            if m and value(m, "cidserve_models_loaded") == 1:
                break
            time.sleep(0.3)
        assert value(m, "cidserve_models_loaded") == 1
        assert value(m, "cidserve_requests_total", **lbl) == n
    finally:
        svc.stop()
    assert not list(prom_dir.glob("*.db")), "the metrics directory was not cleaned at exit"
