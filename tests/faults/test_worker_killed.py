"""One of two worker processes is killed (SIGKILL) under load.

``cidserve serve --workers 2`` runs in its own process group (``tests/harness.py``), with a
private Redis for the model index the workers share (a worker that never loaded a model finds
it there and loads it). Four clients run a linear model, a new connection per request, so the
kernel hands them to both workers; a fifth lists the models with GETs, retried on a lost
connection as a careful client does. Killing a worker may cost the requests it held at that
moment (a connection error each, at most one per client); every reply received is right, no
reply is a 500, the surviving worker keeps answering, and uvicorn starts a replacement.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import redis

from registry.local_store import LocalContentStore
from registry.publish import publish_model
from tests.faults.linear import Linear
from tests.faults.load import Call, Load, assert_nothing_lies, summary
from tests.harness import ServiceProcess, free_port
from tests.models import linear_model
from tests.redis_support import RedisServer

CIDSERVE = [sys.executable, "-m", "services.cli"]
INFERENCE_TIMEOUT_MS = 2000
CLIENTS = 4
JSON = {"Content-Type": "application/json"}


def worker_pids(parent: int) -> list[int]:
    """The uvicorn worker processes under ``parent`` (spawned by multiprocessing)."""
    pids = []
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(child))
    return sorted(pids)


def loaders(redis_url: str) -> set[int]:
    """The pids of the processes whose loads the shared index recorded (``host/pid/id``)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        events = client.lrange("cidserve:index:history", 0, -1)
    finally:
        client.close()
    return {int(json.loads(e)["replica"].split("/")[-2]) for e in events}


def test_worker_killed_under_load(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = LocalContentStore(data / "store")
    pub = asyncio.run(publish_model(store, linear_model(tmp_path / "w.onnx", seed=6), name="w"))
    lin = Linear(6)
    with RedisServer(tmp_path) as redis_server:
        env = {
            "CIDSERVE_DATA_DIR": str(data),
            "CIDSERVE_PORT": str(free_port()),
            "CIDSERVE_REDIS_URL": redis_server.url,
            "CIDSERVE_REDIS_TIMEOUT_MS": "250",
            "CIDSERVE_PREDICTION_CACHE": "false",
            "CIDSERVE_INFERENCE_TIMEOUT_MS": str(INFERENCE_TIMEOUT_MS),
        }
        svc = ServiceProcess([*CIDSERVE, "serve", "--workers", "2"], env, tmp_path / "svc.log")
        try:
            svc.wait_ready(timeout=90)
            deadline = time.monotonic() + 60
            while len(worker_pids(svc.proc.pid)) < 2:
                assert time.monotonic() < deadline, "two workers never came up"
                time.sleep(0.1)
            r = httpx.post(
                svc.url + "/api/models/load", json={"metadataCid": pub.metadata_cid}, timeout=30
            )
            assert r.status_code == 200, r.text
            counter = itertools.count()

            def make_call(client: int) -> Call:
                if client == CLIENTS:
                    return Call(
                        "index",
                        "GET",
                        "/api/models",
                        check=lambda r: pub.model_id in [e["model_id"] for e in r.json()["index"]],
                        retry=True,
                    )
                body, x = lin.execute_body(pub.model_id, next(counter))
                return Call(
                    "execute",
                    "POST",
                    "/api/inference/execute",
                    check=lambda r: lin.execute_is_right(r, x),
                    headers=JSON,
                    content=body,
                )

            load = Load(svc.url, make_call, clients=CLIENTS + 1, keepalive=False, pause_s=0.01)
            with load:
                time.sleep(2.0)  # both workers serve (the second loads the model by its id)
                before = worker_pids(svc.proc.pid)
                assert len(loaders(redis_server.url) & set(before)) == 2  # both loaded it
                victim = before[0]
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
                deadline = killed_at + 30
                while True:
                    pids = worker_pids(svc.proc.pid)
                    if len(pids) == 2 and victim not in pids:
                        break
                    assert time.monotonic() < deadline, f"no replacement worker: {svc.log()}"
                    time.sleep(0.05)
                replaced_s = time.monotonic() - killed_at
                # The replacement serves too: asked for the model, it finds it in the shared
                # index and loads it, which the index's load history records with its pid.
                (replacement,) = set(pids) - set(before)
                while replacement not in loaders(redis_server.url):
                    assert time.monotonic() < deadline, "the replacement never served"
                    time.sleep(0.1)
                serving_s = time.monotonic() - killed_at
                time.sleep(1.0)
            outcomes = load.stop()
            assert svc.proc.poll() is None, svc.log()
        finally:
            svc.stop()

    counts = summary(outcomes)
    assert_nothing_lies(outcomes, max_latency_s=INFERENCE_TIMEOUT_MS / 1000 + 3)
    lost = [o for o in outcomes if o.status is None]
    # Only requests in flight on the killed worker are lost: at most one per client, at
    # the moment of the kill; the GETs were retried and all answered.
    assert len(lost) <= CLIENTS, counts
    assert all(o.kind == "execute" and o.sent_at <= killed_at for o in lost), counts
    assert all(o.status == 200 for o in outcomes if o.kind == "index"), counts
    assert all(o.status in (200, None) for o in outcomes), counts
    # The service never stopped answering: no gap of 5 s between replies.
    answered = sorted(o.ended_at for o in outcomes if o.status == 200)
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    assert max(gaps) < 5, f"a {max(gaps):.2f} s gap without a reply"
    after = [o for o in outcomes if o.sent_at > killed_at]
    assert after and all(o.status == 200 for o in after), counts
    retried = sum(o.retries for o in outcomes)
    print(
        f"\nworker killed: {counts}; {len(lost)} requests lost, {retried} GET retries; "
        f"replacement worker started after {replaced_s:.2f} s, serving after {serving_s:.2f} s; "
        f"longest gap between replies "
        f"{max(gaps) * 1000:.0f} ms; max latency {max(o.latency_s for o in outcomes) * 1000:.0f} ms"
    )
