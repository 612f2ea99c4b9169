"""SIGTERM as an orchestrator sends it: readiness turns 503 ``draining``, the request in
flight still gets its 200, new connections are refused, and ``cidserve serve`` exits 0."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from registry.local_store import LocalContentStore
from registry.publish import publish_model
from tests.harness import ServiceProcess, free_port
from tests.models import slow_model

CIDSERVE = [sys.executable, "-m", "services.cli"]
DRAIN_DELAY_S = 1.0


def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = LocalContentStore(data / "store")
    # About 1-3 s per run here: still running when the listening socket closes.
    pub = asyncio.run(publish_model(store, slow_model(tmp_path / "s.onnx", depth=400), name="s"))
    env = {
        "CIDSERVE_DATA_DIR": str(data),
        "CIDSERVE_PORT": str(free_port()),
        "CIDSERVE_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
        "CIDSERVE_DRAIN_TIMEOUT_S": "60",
        "CIDSERVE_INFERENCE_TIMEOUT_MS": "60000",
        "CIDSERVE_PREDICTION_CACHE": "false",
        "CIDSERVE_WARMUP_TIMEOUT_MS": "60000",
    }
    svc = ServiceProcess([*CIDSERVE, "serve"], env, tmp_path / "serve.log")
    try:
        svc.wait_ready()
        r = httpx.post(
            svc.url + "/api/models/load",
            json={"metadataCid": pub.metadata_cid, "warmup": False},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        model_id = r.json()["model_id"]
        assert httpx.get(svc.url + "/health/ready", timeout=5).status_code == 200
        body = {
            "inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": [1.0] * 1024}]
        }

        def slow_request() -> tuple[int, float]:
            reply = httpx.post(f"{svc.url}/v2/models/{model_id}/infer", json=body, timeout=90)
            return reply.status_code, time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(slow_request)
            deadline = time.monotonic() + 20
            while (
                f'cidserve_queue_depth{{model="{model_id}"}} 1.0'
                not in httpx.get(svc.url + "/metrics", timeout=5).text
            ):
                assert time.monotonic() < deadline, "the request never reached the model"
                time.sleep(0.02)
            t_term = time.monotonic()
            os.kill(svc.proc.pid, signal.SIGTERM)

            # Readiness off at once, while the server still accepts connections.
            ready = httpx.get(svc.url + "/health/ready", timeout=5)
            assert ready.status_code == 503, ready.text
            assert ready.json()["status"] == "draining"
            v2_ready = httpx.get(svc.url + "/v2/health/ready", timeout=5)
            assert v2_ready.status_code == 503
            assert httpx.get(svc.url + "/health/live", timeout=5).status_code == 200

            # After the delay the listening socket is closed: new connections are refused.
            refused_at = None
            while refused_at is None:
                assert time.monotonic() - t_term < DRAIN_DELAY_S + 10, svc.log()
                try:
                    httpx.get(svc.url + "/health/live", timeout=2)
                except httpx.ConnectError:
                    refused_at = time.monotonic()
                else:
                    time.sleep(0.05)
            assert refused_at - t_term >= DRAIN_DELAY_S - 0.2

            status, done_at = in_flight.result(timeout=90)
        assert status == 200, svc.log()
        assert done_at > refused_at  # it was still running when new connections were refused
        assert svc.proc.wait(timeout=30) == 0, svc.log()
        assert time.monotonic() - t_term < 60
    finally:
        svc.stop()
