"""Soak: 10,000 mixed valid and hostile requests leave the server's memory flat.

A real ``cidserve serve`` process (its own process group) serves a small published model; a
bounded asyncio load generator sends a fixed mix of good requests and bad ones (unknown
models, malformed JSON, wrong media types, tensors whose declared shape does not match their
data, oversized bodies, garbage base64 and images, signatures that do not verify). Every reply
must be a typed 2xx/4xx (no 5xx, no dropped connection), and the resident set size after the
run may not exceed the size after a warm-up round by more than a small bound: no request,
good or bad, leaves memory behind.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import sys
from pathlib import Path

import httpx

from registry.local_store import LocalContentStore
from registry.publish import publish_model
from tests.harness import ServiceProcess, free_port
from tests.models import linear_model

CIDSERVE = [sys.executable, "-m", "services.cli"]
TOTAL = int(os.environ.get("CIDSERVE_SOAK_REQUESTS", "10000"))
WARMUP = 1500
CONCURRENCY = 8
MAX_GROWTH = 40 << 20  # bytes of RSS the measured run may add after the warm-up


def _requests(model_id: str) -> list[tuple[str, str, bytes, dict[str, str], set[int]]]:
    """(method, path, body, headers, accepted statuses) of one round of the mix."""
    j = {"content-type": "application/json"}
    good = json.dumps(
        {"model_id": model_id, "input_data": {"format": "tensor", "content": [[0.5] * 8]}}
    ).encode()
    v2_good = json.dumps(
        {"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": [0.1] * 16}]}
    ).encode()
    v2_lying = json.dumps(
        {"inputs": [{"name": "x", "shape": [100000, 100000], "datatype": "FP32", "data": [1.0]}]}
    ).encode()
    huge_b64 = json.dumps(
        {"model_id": model_id, "input_data": {"format": "base64", "content": "!!" * 5000}}
    ).encode()
    fake_png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200).decode()
    bad_image = json.dumps(
        {"model_id": model_id, "input_data": {"format": "base64", "content": fake_png}}
    ).encode()
    ex, v2 = "/api/inference/execute", f"/v2/models/{model_id}/infer"
    ok, client_error = {200}, {400, 401, 404, 405, 413, 415, 422}
    return [
        ("POST", ex, good, j, ok),
        ("POST", v2, v2_good, j, ok),
        ("POST", ex, good.replace(model_id.encode(), b"no-such-model"), j, {404}),
        ("POST", ex, b"{not json", j, client_error),
        ("POST", ex, good, {"content-type": "text/plain"}, {415}),
        ("POST", v2, v2_lying, j, client_error),
        ("POST", ex, huge_b64, j, client_error),
        ("POST", ex, bad_image, j, client_error),
        ("POST", ex, b"x" * (2 << 20), j, {413}),
        (
            "POST",
            ex,
            good,
            {**j, "x-cidserve-signature": "0x00", "x-cidserve-address": "0x" + "11" * 20},
            ok | client_error,
        ),
        ("GET", "/api/models/" + "a" * 300, b"", {}, {404}),
        ("GET", "/health", b"", {}, ok),
    ]


async def _drive(url: str, mix: list, n: int, statuses: collections.Counter[int]) -> list[str]:
    """Send ``n`` requests of ``mix`` round-robin with CONCURRENCY workers; the surprises."""
    surprises: list[str] = []
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                method, path, body, headers, accepted = mix[i % len(mix)]
                r = await client.request(method, path, content=body or None, headers=headers)
                statuses[r.status_code] += 1
                if r.status_code not in accepted and len(surprises) < 20:
                    surprises.append(f"{method} {path[:60]} -> {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return surprises


def test_ten_thousand_mixed_requests_leave_rss_flat(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = LocalContentStore(data / "store")
    pub = asyncio.run(publish_model(store, linear_model(tmp_path / "s.onnx", seed=5), name="soak"))
    env = {
        "CIDSERVE_DATA_DIR": str(data),
        "CIDSERVE_PORT": str(free_port()),
        "CIDSERVE_MAX_BODY_BYTES": str(1 << 20),
        "CIDSERVE_PREDICTION_CACHE": "false",
        "CIDSERVE_LOG_LEVEL": "warning",
    }
    svc = ServiceProcess([*CIDSERVE, "serve"], env, tmp_path / "soak.log")
    try:
        svc.wait_ready(timeout=120)
        r = httpx.post(svc.url + "/api/models/load", json={"metadataCid": pub.metadata_cid})
        assert r.status_code == 200, r.text
        model_id = r.json()["model_id"]
        mix = _requests(model_id)
        statuses: collections.Counter[int] = collections.Counter()
        surprises = asyncio.run(_drive(svc.url, mix, WARMUP, statuses))
        assert not surprises, surprises
        before = svc.rss_bytes()
        surprises = asyncio.run(_drive(svc.url, mix, TOTAL, statuses))
        after = svc.rss_bytes()
        assert not surprises, surprises
        assert sum(statuses.values()) == WARMUP + TOTAL
        assert all(code < 500 for code in statuses), statuses
        assert after - before < MAX_GROWTH, (
            f"RSS grew {(after - before) / 2**20:.1f} MiB over {TOTAL} requests "
            f"({before / 2**20:.0f} -> {after / 2**20:.0f} MiB); statuses {dict(statuses)}"
        )
        assert svc.proc.poll() is None
    finally:
        svc.stop()
