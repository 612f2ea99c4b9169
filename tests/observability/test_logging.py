"""Logs as an operator reads them: one line per request with its id, model, status and stage
timings; JSON for log shippers, text for a terminal; the level from settings."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.observability.logs import JsonFormatter, TextFormatter
from tests.conftest import Gateway
from tests.harness import ServiceProcess, free_port
from tests.models import linear_model

CIDSERVE = [sys.executable, "-m", "services.cli"]
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
STAGE_KEYS = {"queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "total_ms"}


@dataclass
class Served:
    svc: ServiceProcess
    model: PublishResult


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PublishResult]:
    root = tmp_path_factory.mktemp("logging")
    store = LocalContentStore(root / "data" / "store")
    pub = asyncio.run(publish_model(store, linear_model(root / "log.onnx", seed=11), name="logs"))
    return root, pub


@pytest.fixture(scope="module")
def servers(published: tuple[Path, PublishResult]) -> Iterator[dict[str, Served]]:
    """Three services started side by side: json/info, text/info, json/warning."""
    root, pub = published
    started: dict[str, Served] = {}
    try:
        for name, fmt, level in (
            ("json", "json", "info"),
            ("text", "text", "info"),
            ("quiet", "json", "warning"),
        ):
            env = {
                "CIDSERVE_DATA_DIR": str(root / "data"),
                "CIDSERVE_PORT": str(free_port()),
                "CIDSERVE_LOG_FORMAT": fmt,
                "CIDSERVE_LOG_LEVEL": level,
            }
            svc = ServiceProcess([*CIDSERVE, "serve"], env, root / f"{name}.log")
            started[name] = Served(svc, pub)
        for served in started.values():
            served.svc.wait_ready()
            r = httpx.post(
                served.svc.url + "/api/models/load",
                json={"metadataCid": pub.metadata_cid},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        yield started
    finally:
        for served in started.values():
            served.svc.stop()


def _execute(served: Served, request_id: str | None) -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return httpx.post(
        served.svc.url + "/api/inference/execute",
        json={
            "model_id": served.model.model_id,
            # Fresh inputs: a prediction-cache hit would have no stages but the total.
            "input_data": {"format": "tensor", "content": [[random.random() for _ in range(8)]]},
        },
        headers=headers,
        timeout=30,
    )


def _lines(served: Served) -> list[str]:
    served.svc._log.flush()
    return served.svc.log_path.read_text().splitlines()


def _wait_for(served: Served, needle: str) -> list[str]:
    """Log lines once one containing ``needle`` is written (the log is flushed per line)."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = _lines(served)
        if any(needle in x for x in lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in the log: {_lines(served)[-10:]}")


def test_json_log_has_one_line_per_request_with_id_model_status_and_stages(
    servers: dict[str, Served],
):
    served = servers["json"]
    r = _execute(served, "trace-7f3a")
    assert r.status_code == 200
    assert r.headers["X-Request-ID"] == "trace-7f3a"
    missing = httpx.post(
        served.svc.url + "/api/inference/execute",
        json={"model_id": "nope-1", "input_data": {"format": "tensor", "content": [[0.0] * 8]}},
        headers={"X-Request-ID": "trace-404"},
        timeout=30,
    )
    assert missing.status_code == 404
    lines = _wait_for(served, "trace-404")

    records = [json.loads(x) for x in lines]  # every line, the server's own too, is JSON
    assert any("ready" in rec["msg"] for rec in records)
    mine = [rec for rec in records if rec.get("request_id") == "trace-7f3a"]
    assert len(mine) == 1
    line = mine[0]
    assert line["logger"] == "cidserve.access"
    assert line["level"] == "info"
    assert line["status"] == 200
    assert line["method"] == "POST"
    assert line["endpoint"] == "/api/inference/execute"
    assert line["model"] == served.model.model_id
    assert set(line["stages"]) == STAGE_KEYS
    body_metrics = r.json()["metrics"]
    assert line["stages"]["inference_ms"] == pytest.approx(body_metrics["inference_time_ms"])
    assert line["duration_ms"] >= line["stages"]["total_ms"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", line["ts"])

    (not_found,) = [rec for rec in records if rec.get("request_id") == "trace-404"]
    assert not_found["status"] == 404
    assert "model" not in not_found  # an unknown id is not a model


def test_a_request_id_is_generated_when_none_or_a_bad_one_is_sent(servers: dict[str, Served]):
    served = servers["json"]
    plain = _execute(served, None)
    generated = plain.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(generated)
    hostile = _execute(served, "x" * 300)  # too long to be anyone's trace id
    replaced = hostile.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(replaced) and replaced != generated
    lines = _wait_for(served, replaced)
    ids = [json.loads(x).get("request_id") for x in lines]
    assert generated in ids and replaced in ids
    assert "x" * 300 not in "\n".join(lines)


def test_text_log_is_one_readable_line_per_request(servers: dict[str, Served]):
    served = servers["text"]
    assert _execute(served, "trace-text-1").status_code == 200
    lines = _wait_for(served, "trace-text-1")
    (line,) = [x for x in lines if "id=trace-text-1" in x]
    assert " INFO " in line and "cidserve.access" in line
    assert "POST /api/inference/execute 200" in line
    assert f"model={served.model.model_id}" in line
    assert "inference_ms=" in line and "total_ms=" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_the_level_from_settings_silences_request_lines(servers: dict[str, Served]):
    served = servers["quiet"]
    assert _execute(served, "trace-quiet").status_code == 200
    assert httpx.get(served.svc.url + "/api/models/nope", timeout=10).status_code == 404
    # The text server, asked the same after, shows the request has been logged by then.
    assert _execute(servers["text"], "trace-after-quiet").status_code == 200
    _wait_for(servers["text"], "trace-after-quiet")
    lines = _lines(served)
    assert not [x for x in lines if "cidserve.access" in x]
    assert all(json.loads(x)["level"] in ("warning", "error") for x in lines)


def test_a_bad_log_format_stops_startup_naming_the_variable(tmp_path: Path):
    env = {
        **os.environ,
        "CIDSERVE_DATA_DIR": str(tmp_path),
        "CIDSERVE_PORT": str(free_port()),
        "CIDSERVE_LOG_FORMAT": "yaml",
    }
    proc = subprocess.run([*CIDSERVE, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "CIDSERVE_LOG_FORMAT" in proc.stderr and "yaml" in proc.stderr


def test_lines_written_during_a_request_carry_its_id(
    gateway: Gateway, tmp_path: Path, store: LocalContentStore
):
    """The loader's 'loaded ...' line is written in the middle of a load request."""
    pub = asyncio.run(
        publish_model(store, linear_model(tmp_path / "ctx.onnx", seed=12), name="ctx")
    )
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cidserve.loader")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        r = gateway.client.post(
            "/api/models/load",
            json={"metadataCid": pub.metadata_cid},
            headers={"X-Request-ID": "load-trace-1"},
        )
        assert r.status_code == 200, r.text
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    loaded = [rec for rec in records if rec["msg"].startswith("loaded ")]
    assert loaded and loaded[0]["request_id"] == "load-trace-1"


def test_formatters_keep_tracebacks_and_odd_values():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t",
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("x",),
            sys.exc_info(),
            extra={"model": "m-1", "odd": {1, 2}},
        )
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "failed x" and doc["level"] == "error" and doc["model"] == "m-1"
    assert "ValueError: boom" in doc["exc"]
    assert "\n" not in JsonFormatter().format(record)
    text = TextFormatter().format(record)
    first, _, rest = text.partition("\n")
    assert first.endswith("failed x model=m-1")
    assert "ValueError: boom" in rest
