"""Async jobs as a client sees them, on replicas sharing one Redis: 202 with a job id, a poll
that ends ``done`` with the sync reply's body (answered by any replica, and still there after
the replica that ran it restarts), 404 for an unknown job or another caller's, 503 +
Retry-After past CIDSERVE_MAX_JOBS, and the license checked before a job exists."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.chain.auth import SignatureAuthenticator
from services.chain.signing import sign_request
from services.settings import Settings
from services.state.redis_kv import RedisKV
from tests.conftest import make_settings
from tests.models import linear_model, slow_model
from tests.redis_support import (
    REDIS_URL,
    App,
    delete_prefix,
    require_redis,
    running_app,
    unique_prefix,
)

# Throwaway signing keys (never funded, never used elsewhere).
KEY_A = "0x" + "6a" * 32
KEY_B = "0x" + "6b" * 32
ROW = [[0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8]]
SLOW_ROW = [[1.0] * 1024]
HOST = "cidserve.example"


@pytest.fixture(scope="module")
def models(workdir: Path, store: LocalContentStore) -> dict[str, PublishResult]:
    d = workdir / "jobs-models"
    d.mkdir(exist_ok=True)
    return {
        "linear": asyncio.run(
            publish_model(store, linear_model(d / "lin.onnx", seed=11), name="job-lin")
        ),
        "slow": asyncio.run(
            publish_model(store, slow_model(d / "slow.onnx", depth=200), name="job-slow")
        ),
    }


@pytest.fixture(scope="module")
def redis_settings(workdir: Path) -> Iterator[Settings]:
    require_redis()
    prefix = unique_prefix("jobs")
    try:
        yield make_settings(
            workdir,
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            redis_timeout_ms=250,
            prediction_cache=False,
        )
    finally:
        delete_prefix(REDIS_URL, prefix)


def _replica(settings: Settings, store: LocalContentStore) -> Any:
    """A gateway with its own Redis pool that verifies signed requests (unsigned: anonymous)."""
    assert settings.redis_url is not None
    kv = RedisKV(settings.redis_url, prefix=settings.redis_prefix, timeout_ms=250)
    return running_app(settings, store=store, kv=kv, authenticator=SignatureAuthenticator(kv))


def _load(app: App, pub: PublishResult) -> str:
    r = app.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


def _execute(app: App, model_id: str, mode: str, row: Any = ROW, **headers: str) -> httpx.Response:
    body = {
        "model_id": model_id,
        "execution_mode": mode,
        "input_data": {"format": "tensor", "content": row},
        "options": {"top_k": 0},
    }
    return app.client.post("/api/inference/execute", json=body, headers=headers)


def _poll(
    app: App,
    job_id: str,
    timeout: float = 30,
    sign: Callable[[str], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Poll until the job ends; ``sign`` makes fresh headers for each poll (a nonce each)."""
    path = f"/api/inference/jobs/{job_id}"
    deadline = time.monotonic() + timeout
    while True:
        r = app.client.get(path, headers=sign(path) if sign else None)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert body["status"] in ("queued", "running", "done", "failed")
        if body["status"] in ("done", "failed"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def test_a_job_ends_with_the_sync_reply_on_every_replica_and_after_a_restart(
    redis_settings: Settings, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    with _replica(redis_settings, store) as b:
        with _replica(redis_settings, store) as a:
            model_id = _load(a, models["linear"])
            sync = _execute(a, model_id, "sync")
            assert sync.status_code == 200, sync.text

            accepted = _execute(a, model_id, "async")
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            assert len(job_id) == 32 and int(job_id, 16) >= 0
            assert accepted.headers["Location"] == f"/api/inference/jobs/{job_id}"

            done = _poll(a, job_id)
            assert done["status"] == "done", done
            assert done["error"] is None
            result = done["result"]
            assert result["predictions"] == sync.json()["predictions"]
            assert result["model_id"] == model_id and result["success"] is True
            # Any replica answers the poll: B never ran it.
            assert _poll(b, job_id)["result"] == result

            # options.execution_mode is the same switch.
            r = a.client.post(
                "/api/inference/execute",
                json={
                    "model_id": model_id,
                    "input_data": {"format": "tensor", "content": ROW},
                    "options": {"execution_mode": "async"},
                },
            )
            assert r.status_code == 202, r.text
        # A stopped; a new replica on the same Redis still has the result.
        with _replica(redis_settings, store) as a2:
            again = a2.client.get(f"/api/inference/jobs/{job_id}")
            assert again.status_code == 200 and again.json()["result"] == result


def test_unknown_jobs_and_refusals_before_a_job_exists(
    redis_settings: Settings, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    with _replica(redis_settings, store) as a:
        for job_id in ("0" * 32, "f" * 32, "not-a-job", "A" * 32):
            r = a.client.get(f"/api/inference/jobs/{job_id}")
            assert r.status_code == 404, r.text
            assert r.json()["success"] is False and "unknown" in r.json()["message"]
        # An unknown model, or an input that cannot be decoded, is answered now, not as a job.
        r = _execute(a, "nothing-0000beef", "async")
        assert r.status_code == 404
        model_id = _load(a, models["linear"])
        r = _execute(a, model_id, "async", row="not a tensor")
        assert r.status_code == 400
        r = _execute(a, model_id, "later")
        assert r.status_code == 422 and "execution_mode" in r.text


def test_a_failing_job_reports_the_sync_error(
    redis_settings: Settings, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    with _replica(redis_settings, store) as a:
        model_id = _load(a, models["linear"])
        r = _execute(a, model_id, "async", row=[[0.1] * 5])  # the model takes 8 features
        assert r.status_code == 202, r.text
        failed = _poll(a, r.json()["job_id"])
        assert failed["status"] == "failed" and failed["result"] is None
        assert failed["error"]["status"] == 400
        assert failed["error"]["message"]


def _signed_get(key: str, path: str) -> dict[str, str]:
    sent = {"Host": HOST}
    return {**sent, **sign_request(key, "GET", path, b"", headers=sent)}


def test_a_signed_callers_job_is_invisible_to_others(
    redis_settings: Settings, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    with _replica(redis_settings, store) as a:
        model_id = _load(a, models["linear"])
        body = {
            "model_id": model_id,
            "execution_mode": "async",
            "input_data": {"format": "tensor", "content": ROW},
        }
        raw = json.dumps(body).encode()
        sent = {"Content-Type": "application/json", "Host": HOST}
        headers = {
            **sent,
            **sign_request(KEY_A, "POST", "/api/inference/execute", raw, headers=sent),
        }
        r = a.client.post("/api/inference/execute", content=raw, headers=headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        path = f"/api/inference/jobs/{job_id}"

        owner = _poll(a, job_id, sign=lambda p: _signed_get(KEY_A, p))
        assert owner["status"] == "done"
        other = a.client.get(path, headers=_signed_get(KEY_B, path))
        assert other.status_code == 404
        anonymous = a.client.get(path)
        assert anonymous.status_code == 404


def test_past_max_jobs_a_submission_is_refused_with_retry_after(
    workdir: Path, store: LocalContentStore, models: dict[str, PublishResult]
) -> None:
    settings = make_settings(workdir, prediction_cache=False, max_jobs=1, inference_workers=1)
    with running_app(settings, store=store) as app:
        model_id = _load(app, models["slow"])
        first = _execute(app, model_id, "async", row=SLOW_ROW)
        assert first.status_code == 202, first.text
        refused = _execute(app, model_id, "async", row=SLOW_ROW)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "CIDSERVE_MAX_JOBS" in refused.json()["message"]
        # Sync requests are not jobs: the bound does not apply to them.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sync = pool.submit(_execute, app, model_id, "sync", SLOW_ROW)
            assert sync.result(timeout=60).status_code == 200
        assert _poll(app, first.json()["job_id"], timeout=60)["status"] == "done"
        # The job finished: its slot is free again.
        again = _execute(app, model_id, "async", row=SLOW_ROW)
        assert again.status_code == 202, again.text
        assert _poll(app, again.json()["job_id"], timeout=60)["status"] == "done"


def test_a_job_whose_replica_stopped_answering_is_reported_failed() -> None:
    from services.dataplane.jobs import JobPolicy, Jobs
    from services.state.kv import MemoryKV

    async def main() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        kv = MemoryKV()
        never = asyncio.Event()

        async def work() -> dict[str, Any]:
            await never.wait()
            return {}

        running = Jobs(kv, JobPolicy(max_jobs=4, ttl_s=60, lease_s=30))
        job_id = await running.submit(None, work, lambda exc: {"message": str(exc)})
        await asyncio.sleep(0.05)
        now = await running.get(job_id, None)
        # Another replica, a minute later: the lease (never renewed past 30 s) has passed.
        later = Jobs(kv, JobPolicy(max_jobs=4, ttl_s=60), clock=lambda: time.time() + 60)
        lost = await later.get(job_id, None)
        await running.aclose()
        return now, lost

    now, lost = asyncio.run(main())
    assert now is not None and now["status"] == "running"
    assert lost is not None and lost["status"] == "failed"
    assert "stopped answering" in lost["error"]["message"]
