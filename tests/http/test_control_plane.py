"""The control plane behind the operator's bearer token, JSON-only routes, CORS off by default,
and no secrets or host paths in replies. Real servers on loopback ports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.http.app import create_app
from services.settings import Settings
from tests.harness import ServerThread, free_port
from tests.models import linear_model

TOKEN = "op-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
KEY = "SECRETKEY0123456789"


def _publish(tmp_path: Path, name: str, model: Path) -> PublishResult:
    store = LocalContentStore(tmp_path / "data" / "store")
    return asyncio.run(publish_model(store, model, name=name))


@pytest.fixture
def linear(tmp_path: Path) -> PublishResult:
    return _publish(tmp_path, "ctl", linear_model(tmp_path / "ctl.onnx", seed=3))


def _serve(tmp_path: Path, **overrides: object) -> ServerThread:
    settings = Settings(data_dir=tmp_path / "data", prediction_cache=False, **overrides)  # type: ignore[arg-type]
    return ServerThread(create_app(settings))


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[httpx.Client]:
    """A server with an admin token."""
    with (
        _serve(tmp_path, admin_token=TOKEN) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        yield c


@pytest.fixture
def open_plane(tmp_path: Path) -> Iterator[httpx.Client]:
    """A server without an admin token (as on loopback)."""
    with _serve(tmp_path) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


def _load(client: httpx.Client, cid: str, headers: dict[str, str] | None = None) -> str:
    r = client.post("/api/models/load", json={"metadataCid": cid}, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


def _control_calls(model_id: str, cid: str) -> list[tuple[str, str, dict[str, object]]]:
    return [
        ("DELETE", f"/api/models/{model_id}", {}),
        ("POST", "/v2/repository/index", {"json": {}}),
        ("POST", f"/v2/repository/models/{model_id}/unload", {"json": {}}),
        ("POST", "/v2/repository/models/ctl/load", {"json": {"parameters": {"metadataCid": cid}}}),
    ]


def _assert_401(r: httpx.Response) -> str:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["www-authenticate"].lower().startswith("bearer")
    body = r.json()
    message = str(body.get("message", body.get("error")))
    return message


def test_every_control_plane_call_needs_the_bearer(guarded: httpx.Client, linear: PublishResult):
    model_id = _load(guarded, linear.metadata_cid, BEARER)
    for method, path, kwargs in _control_calls(model_id, linear.metadata_cid):
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
            r = guarded.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
            message = _assert_401(r)
            assert "Authorization: Bearer" in message and "CIDSERVE_ADMIN_TOKEN" in message
    # Nothing happened: the model is still served.
    assert guarded.get(f"/api/models/{model_id}").status_code == 200
    # Read routes stay open.
    for path in ("/api/models", f"/api/models/{model_id}", "/health", "/health/ready", "/metrics"):
        assert guarded.get(path).status_code == 200, path
    assert guarded.get(f"/v2/models/{model_id}").status_code == 200


def test_the_operator_drives_the_control_plane(guarded: httpx.Client, linear: PublishResult):
    model_id = _load(guarded, linear.metadata_cid, BEARER)
    r = guarded.post("/v2/repository/index", json={}, headers=BEARER)
    assert r.status_code == 200 and [row["name"] for row in r.json()] == [model_id], r.text
    r = guarded.post(f"/v2/repository/models/{model_id}/unload", json={}, headers=BEARER)
    assert r.status_code == 200 and r.json()["state"] == "UNAVAILABLE", r.text
    body = {"parameters": {"metadataCid": linear.metadata_cid}}
    r = guarded.post("/v2/repository/models/ctl/load", json=body, headers=BEARER)
    assert r.status_code == 200 and r.json()["name"] == model_id, r.text
    # The scheme is case-insensitive.
    r = guarded.delete(f"/api/models/{model_id}", headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["message"] == "Model unloaded", r.text
    assert guarded.get(f"/api/models/{model_id}").status_code == 404


def test_without_a_token_loopback_callers_are_the_operator(
    open_plane: httpx.Client, linear: PublishResult
):
    model_id = _load(open_plane, linear.metadata_cid)
    # A name that resolves to 127.0.0.1 for a page (DNS rebinding) is not a loopback Host.
    r = open_plane.delete(f"/api/models/{model_id}", headers={"Host": "attacker.example"})
    message = _assert_401(r)
    assert "CIDSERVE_ADMIN_TOKEN" in message and "loopback" in message
    assert open_plane.post("/v2/repository/index", json={}).status_code == 200
    r = open_plane.delete(f"/api/models/{model_id}", headers={"Host": f"localhost:{1234}"})
    assert r.status_code == 200, r.text


def test_the_opt_out_opens_the_control_plane_to_any_host(tmp_path: Path, linear: PublishResult):
    with (
        _serve(tmp_path, allow_open_control_plane=True) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        model_id = _load(c, linear.metadata_cid)
        r = c.delete(f"/api/models/{model_id}", headers={"Host": "gateway.example"})
        assert r.status_code == 200, r.text


def test_json_routes_take_json_only(open_plane: httpx.Client, linear: PublishResult):
    model_id = _load(open_plane, linear.metadata_cid)
    execute = json.dumps(
        {"model_id": model_id, "input_data": {"format": "tensor", "content": [[0.5] * 8]}}
    ).encode()
    load = json.dumps({"metadataCid": linear.metadata_cid}).encode()
    refused = [
        ("/api/inference/execute", execute, {"Content-Type": "text/plain"}),
        ("/api/inference/execute", execute, {"Content-Type": "application/x-www-form-urlencoded"}),
        ("/api/models/load", load, {"Content-Type": "text/plain;charset=UTF-8"}),
        ("/api/models/load", load, {"Content-Type": "multipart/form-data; boundary=x"}),
        # No Content-Type, from a browser (it sends Origin): refused too.
        ("/api/models/load", load, {"Origin": "https://attacker.example"}),
    ]
    for path, body, headers in refused:
        r = open_plane.post(path, content=body, headers=headers)
        assert r.status_code == 415, (path, headers, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["expected"] == "application/json"
        assert "Content-Type: application/json" in r.json()["message"]
    r = open_plane.post(
        "/v2/repository/models/ctl/unload", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415 and "application/json" in r.json()["error"], r.text
    assert open_plane.get(f"/api/models/{model_id}").status_code == 200  # still loaded

    accepted = [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "application/vnd.cidserve+json"},
        {},  # a command-line client that names no type
    ]
    for headers in accepted:
        r = open_plane.post("/api/inference/execute", content=execute, headers=headers)
        assert r.status_code == 200, (headers, r.text)
    # Routes that take other bodies keep working: a raw tensor, V2 binary tensor data.
    x = np.full((1, 8), 0.5, dtype=np.float32)
    r = open_plane.post(
        f"/api/models/{model_id}/predict",
        content=x.tobytes(),
        headers={
            "Content-Type": "application/x-cidserve-tensor",
            "X-Tensor-Dtype": "float32",
            "X-Tensor-Shape": "1,8",
        },
    )
    assert r.status_code == 200, r.text
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ]
        }
    ).encode()
    r = open_plane.post(
        f"/v2/models/{model_id}/infer",
        content=header + x.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert r.status_code == 200, r.text


def test_no_cors_headers_unless_configured(tmp_path: Path, open_plane: httpx.Client):
    origin = {"Origin": "https://attacker.example"}
    r = open_plane.get("/api/models", headers=origin)
    assert r.status_code == 200
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    r = open_plane.options(
        "/api/models/load",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
    allowed = "https://console.example"
    with (
        _serve(tmp_path, cors_origins=(allowed,)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        r = c.get("/api/models", headers={"Origin": allowed})
        assert r.headers["access-control-allow-origin"] == allowed
        r = c.get("/api/models", headers=origin)
        assert "access-control-allow-origin" not in r.headers


def test_urls_with_keys_are_redacted_in_health_and_errors(tmp_path: Path):
    # An IPFS API URL with credentials and a key in its path, on a port nothing listens on:
    # the store's health report and the load's 503 name it, without the secrets.
    url = f"http://user:hunter2@127.0.0.1:{free_port()}/v3/{KEY}"
    with (
        _serve(tmp_path, ipfs_api_url=url, ipfs_retries=0, admin_token=TOKEN) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        ready = c.get("/health/ready")
        health = c.get("/health")
        cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
        load = c.post("/api/models/load", json={"metadataCid": cid}, headers=BEARER)
        assert load.status_code == 503, load.text
        v2 = c.post(
            "/v2/repository/models/x/load",
            json={"parameters": {"metadataCid": cid}},
            headers=BEARER,
        )
        assert v2.status_code == 503, v2.text
    for r in (ready, health, load, v2):
        assert KEY not in r.text and "hunter2" not in r.text and "user:" not in r.text, r.text
    assert "http://127.0.0.1:" in ready.text and "<redacted>" in ready.text, ready.text
    assert "http://127.0.0.1:" in load.json()["message"], load.text
    assert load.json()["message"].count("/<redacted>") == 1, load.text


def test_a_bad_url_setting_is_named_without_its_key():
    from services.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as info:
        load_settings(ipfs_api_url=f"ftp://user:hunter2@node.example/{KEY}")
    message = str(info.value)
    assert "CIDSERVE_IPFS_API_URL" in message
    assert KEY not in message and "hunter2" not in message


def _unloadable_model(path: Path) -> Path:
    """A valid ONNX file whose graph ONNX Runtime refuses (an operator it does not have)."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"], domain="cidserve.test")],
        "unloadable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("cidserve.test", 1)],
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_model_errors_carry_no_host_paths(tmp_path: Path):
    pub = _publish(tmp_path, "bad", _unloadable_model(tmp_path / "bad.onnx"))
    with _serve(tmp_path) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert "ONNX Runtime cannot load model" in message, message
    assert str(tmp_path) not in message and "/data/" not in message and "/tmp" not in message


def test_overlong_identity_cids_are_client_errors(open_plane: httpx.Client):
    from multiformats import CID, multihash

    def identity_cid(n: int) -> str:
        return str(CID("base32", 1, "raw", multihash.get("identity").wrap(b"x" * n)))

    for n in (100, 4000):  # inside and far beyond the request's bounds
        cid = identity_cid(n)
        r = open_plane.post("/api/models/load", json={"metadataCid": cid})
        assert r.status_code in (400, 422), r.text
        r = open_plane.post(
            "/v2/repository/models/m/load", json={"parameters": {"metadataCid": cid}}
        )
        assert r.status_code == 400, r.text
        for path in (f"/api/models/{cid}", f"/v2/models/{cid}"):
            assert open_plane.get(path).status_code == 404
        r = open_plane.post(f"/v2/models/{cid}/infer", json={"inputs": []})
        assert 400 <= r.status_code < 500, r.text
