"""The ``cidserve`` command as a user runs it: publish, serve --demo, bad settings, memory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from registry.local_store import LocalContentStore
from registry.publish import publish_model
from tests.conftest import CAT_LABELS
from tests.harness import ServiceProcess, free_port
from tests.models import linear_model

CIDSERVE = [sys.executable, "-m", "services.cli"]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {"CIDSERVE_DATA_DIR": str(data_dir), "CIDSERVE_PORT": str(free_port()), **extra}


def test_bad_setting_stops_startup_naming_the_variable(tmp_path: Path):
    env = {**_env(tmp_path), "CIDSERVE_MAX_MODELS_IN_MEMORY": "zero"}
    proc = subprocess.run(
        [*CIDSERVE, "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "MAX_MODELS_IN_MEMORY" in proc.stderr
    assert "zero" in proc.stderr


def test_publish_prints_cids_and_the_same_file_gets_the_same_model_cid(tmp_path: Path):
    model = linear_model(tmp_path / "m.onnx", seed=3)
    labels = tmp_path / "labels.txt"
    labels.write_text("alpha\nbeta\ngamma\ndelta\n")
    env = {**os.environ, "CIDSERVE_DATA_DIR": str(tmp_path / "data")}
    out = []
    for i in range(2):  # a version the catalogue has already is refused: 2.0, then 2.1
        proc = subprocess.run(
            [
                *CIDSERVE,
                "publish",
                str(model),
                "--labels",
                str(labels),
                "--name",
                "greek",
                "--version",
                f"2.{i}",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        out.append(json.loads(proc.stdout))
    first, second = out
    assert first["modelCid"] == second["modelCid"]
    assert first["modelCid"].startswith("bafk")  # one raw block: a small file
    assert first["metadataCid"].startswith("baf")
    assert first["model_id"].startswith("greek-")
    blobs = list((tmp_path / "data" / "store").rglob("*"))
    assert any(first["modelCid"] in p.name for p in blobs)

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    proc = subprocess.run(
        [*CIDSERVE, "publish", str(bad)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "ONNX" in proc.stderr


@pytest.mark.slow
def test_serve_demo_prints_a_curl_line_that_classifies_the_photo(tmp_path: Path):
    """What the README's run command does, end to end, in a real process."""
    env = _env(tmp_path / "data")
    svc = ServiceProcess([*CIDSERVE, "serve", "--demo"], env, tmp_path / "serve.log")
    try:
        svc.wait_ready(timeout=240)
        log = svc.log()
        assert "curl" in log
        line = next(x for x in log.splitlines() if x.startswith("curl") and "predict" in x)
        proc = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60)
        body = json.loads(proc.stdout)
        assert body["success"] is True
        assert CAT_LABELS & {p["class"] for p in body["predictions"]}
        line2 = next(x for x in log.splitlines() if x.startswith("curl") and "execute" in x)
        proc = subprocess.run(line2, shell=True, capture_output=True, text=True, timeout=60)
        assert json.loads(proc.stdout)["predictions"][0]["class"] == "espresso"
    finally:
        svc.stop()


@pytest.mark.slow
def test_rss_stays_flat_while_50_models_cycle_through_a_cache_of_3(tmp_path: Path):
    """Evicted sessions are released: memory does not grow with the number of models."""
    data = tmp_path / "data"
    store = LocalContentStore(data / "store")
    cids = []
    for seed in range(50):  # 50 distinct ~4 MB models
        path = linear_model(tmp_path / f"m{seed}.onnx", n_in=1024, n_out=1024, seed=seed)
        cids.append(asyncio.run(publish_model(store, path, name=f"big-{seed}")).metadata_cid)

    svc = ServiceProcess([*CIDSERVE, "serve"], _env(data), tmp_path / "rss.log")
    try:
        svc.wait_ready()
        client = httpx.Client(base_url=svc.url, timeout=60)
        x = {"format": "tensor", "content": [[0.1] * 1024]}
        rss = []
        for i, cid in enumerate(cids):
            r = client.post("/api/models/load", json={"metadataCid": cid})
            assert r.status_code == 200, r.text
            model_id = r.json()["model_id"]
            r = client.post("/api/inference/execute", json={"model_id": model_id, "input_data": x})
            assert r.status_code == 200, r.text
            assert r.json()["metrics"]["inference_time_ms"] >= 0
            if i in (9, 49):
                rss.append(svc.rss_bytes())
        status = client.get("/api/models").json()["cacheStatus"]
        assert status["current_size"] == 3
        grown = rss[1] - rss[0]
        # Each model holds ~4 MB of weights; 40 leaked sessions would add ~160+ MB.
        assert grown < 40 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB: {rss}"
        # The target: within 1.3x of the three largest models + 200 MB (the process itself).
        sizes = sorted((tmp_path / f"m{seed}.onnx").stat().st_size for seed in range(50))
        limit = 1.3 * (sum(sizes[-3:]) + 200 * 2**20)
        assert rss[1] <= limit, f"RSS {rss[1] / 2**20:.0f} MiB > {limit / 2**20:.0f} MiB"
    finally:
        svc.stop()
