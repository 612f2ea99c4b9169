"""The OpenAPI document (``GET /openapi.json``) is true: real requests to a real server, on
every route, success and errors, each reply checked against the schema the document declares
for its status (and its status declared at all)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.http.app import create_app
from services.settings import Settings
from tests.harness import ServerThread
from tests.models import linear_model

TOKEN = "openapi-operator-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
RAW_TENSOR = {
    "Content-Type": "application/x-cidserve-tensor",
    "X-Tensor-Dtype": "float32",
    "X-Tensor-Shape": "1,8",
}


@dataclass
class Served:
    client: httpx.Client
    url: str
    app: Any
    model_id: str
    spare: PublishResult
    doc: dict[str, Any]


@contextlib.contextmanager
def serve_linear(root: Path, **overrides: Any) -> Iterator[Served]:
    """A server with an operator token, a small classifier loaded, and a second one published
    (not loaded)."""
    store = LocalContentStore(root / "data" / "store")
    main = asyncio.run(publish_model(store, linear_model(root / "a.onnx", seed=1), name="oa"))
    spare = asyncio.run(publish_model(store, linear_model(root / "b.onnx", seed=2), name="ob"))
    settings = Settings(  # type: ignore[call-arg]
        data_dir=root / "data", prediction_cache=False, admin_token=TOKEN, **overrides
    )
    app = create_app(settings)
    with (
        ServerThread(app) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        r = client.post("/api/models/load", json={"metadataCid": main.metadata_cid}, headers=BEARER)
        assert r.status_code == 200, r.text
        doc = client.get("/openapi.json").json()
        yield Served(client, srv.url, app, r.json()["model_id"], spare, doc)


def operation_of(doc: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The document's operation serving ``method path`` (a concrete path)."""
    for template, operations in doc["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in operations:
            return template, operations[method.lower()]
    raise AssertionError(f"{method} {path} is not in the document")


def conforms(doc: dict[str, Any], r: httpx.Response) -> dict[str, Any]:
    """Assert that ``r``'s status is declared for its operation, that its content type is one
    declared, that a JSON body validates against the declared schema and that declared headers
    hold; return the declared response."""
    template, operation = operation_of(doc, r.request.method, r.request.url.path)
    where = f"{r.request.method} {template} -> {r.status_code}: {r.text[:300]}"
    declared = operation["responses"].get(str(r.status_code))
    assert declared is not None, f"undeclared status: {where}"
    media = r.headers.get("content-type", "").split(";")[0].strip()
    content = declared.get("content", {})
    assert media in content, f"undeclared content type {media!r}: {where}"
    if media == "application/json":
        schema = {**content[media]["schema"], "components": doc["components"]}
        errors = list(Draft202012Validator(schema).iter_errors(r.json()))
        assert not errors, f"{where}: {[e.message for e in errors][:3]}"
    for name, spec in declared.get("headers", {}).items():
        if name in r.headers and spec["schema"].get("type") == "integer":
            assert r.headers[name].isdigit(), f"{name}: {r.headers[name]!r}: {where}"
    return declared


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_linear(tmp_path_factory.mktemp("openapi")) as s:
        yield s


def _execute(model_id: str, content: Any = None, **options: Any) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "input_data": {"format": "tensor", "content": content or [[0.5] * 8]},
        "options": options,
    }


def _v2_input(data: list[float] | None = None) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": data or [0.25] * 8}]
    }


def test_the_document_declares_the_shapes_security_and_bodies(served: Served) -> None:
    doc = served.doc
    paths = doc["paths"]
    assert doc["components"]["securitySchemes"]["operatorBearer"]["scheme"] == "bearer"
    # Every JSON reply of every route is typed: no bare object or string for a 200.
    for template, operations in paths.items():
        for method, op in operations.items():
            ok = op["responses"]["200"]["content"]
            if "application/json" in ok:
                assert "$ref" in ok["application/json"]["schema"] or ok["application/json"][
                    "schema"
                ].get("items"), f"{method} {template}"
    control = [
        ("delete", "/api/models/{model_id}"),
        ("post", "/v2/repository/index"),
        ("post", "/v2/repository/models/{model}/load"),
        ("post", "/v2/repository/models/{model}/unload"),
    ]
    for method, template in control:
        assert paths[template][method]["security"] == [{"operatorBearer": []}]
        assert "WWW-Authenticate" in paths[template][method]["responses"]["401"]["headers"]
    assert {"operatorBearer": []} in paths["/api/models/load"]["post"]["security"]
    # A licensee's signed request: the five X-Cidserve-* headers, required together.
    schemes = doc["components"]["securitySchemes"]
    signed = {n: [] for n, s in schemes.items() if s.get("name", "").startswith("X-Cidserve-")}
    assert {schemes[n]["name"] for n in signed} == {
        "X-Cidserve-Version",
        "X-Cidserve-Address",
        "X-Cidserve-Timestamp",
        "X-Cidserve-Nonce",
        "X-Cidserve-Signature",
    }
    for method, template in (
        ("post", "/api/inference/execute"),
        ("post", "/api/models/{model_id}/predict"),
        ("post", "/v2/models/{model}/infer"),
        ("post", "/api/models/load"),
    ):
        assert signed in paths[template][method]["security"], template
    # Bodies the routes parse themselves are still described.
    execute = paths["/api/inference/execute"]["post"]["requestBody"]["content"]
    assert "input_data" in execute["application/json"]["schema"]["properties"]
    predict = paths["/api/models/{model_id}/predict"]["post"]["requestBody"]["content"]
    assert {"image/*", "application/x-cidserve-tensor", "multipart/form-data"} <= set(predict)
    infer = paths["/v2/models/{model}/infer"]["post"]
    assert "inputs" in infer["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "application/octet-stream" in infer["responses"]["200"]["content"]
    for status in ("429", "503"):
        assert "Retry-After" in infer["responses"][status]["headers"]
    # The errors of /api and /v2 have their own shapes; FastAPI's {detail} is never declared.
    assert "HTTPValidationError" not in json.dumps(doc)
    err = paths["/api/inference/execute"]["post"]["responses"]["404"]
    assert err["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    err = infer["responses"]["404"]
    assert err["content"]["application/json"]["schema"]["$ref"].endswith("/V2ErrorResponse")


def test_the_document_is_valid_openapi(served: Served) -> None:
    validate(served.doc)  # openapi-spec-validator: the OpenAPI 3.1 schema and its rules


def test_api_model_routes_reply_as_documented(served: Served) -> None:
    c, doc, mid = served.client, served.doc, served.model_id
    cid = served.spare.metadata_cid
    assert conforms(doc, c.get("/api/models")) and c.get("/api/models").json()["models"]
    conforms(doc, c.get(f"/api/models/{mid}"))
    conforms(doc, c.get("/api/models/nope-00000000"))
    loaded = c.post("/api/models/load", json={"metadataCid": cid}, headers=BEARER)
    assert loaded.status_code == 200 and loaded.json()["status"] == "loaded"
    conforms(doc, loaded)
    again = c.post("/api/models/load", json={"metadataCid": cid}, headers=BEARER)
    assert again.json()["status"] == "already_loaded"
    conforms(doc, again)
    for body, headers, status in (
        ({"metadataCid": "not-a-cid"}, BEARER, 400),
        ({"warmup": True}, BEARER, 422),
        ({"metadataCid": cid, "tokenId": -1}, BEARER, 422),
    ):
        r = c.post("/api/models/load", json=body, headers=headers)
        assert r.status_code == status, r.text
        conforms(doc, r)
    r = c.post("/api/models/load", content=b"metadataCid=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    conforms(doc, r)
    spare_id = loaded.json()["model_id"]
    r = c.delete(f"/api/models/{spare_id}")
    assert r.status_code == 401 and "Bearer" in r.headers["WWW-Authenticate"]
    conforms(doc, r)
    assert c.delete(f"/api/models/{spare_id}", headers=BEARER).status_code == 200
    conforms(doc, c.delete(f"/api/models/{spare_id}", headers=BEARER))  # now 404


def test_inference_routes_reply_as_documented(served: Served) -> None:
    c, doc, mid = served.client, served.doc, served.model_id
    ok = c.post("/api/inference/execute", json=_execute(mid, top_k=2))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
    conforms(doc, ok)
    huge = {"data": "", "dtype": "float32", "shape": [10**6, 10**6]}
    for body, status in (
        (_execute("nope-00000000"), 404),
        (_execute(mid, top_k=10**6), 400),
        (_execute(mid, content=huge), 413),
        ({"model_id": mid}, 422),
        (_execute(mid, content=[[1.0] * 3]), 400),
    ):
        r = c.post("/api/inference/execute", json=body)
        assert r.status_code == status, r.text
        conforms(doc, r)
    x = np.linspace(0, 1, 8, dtype=np.float32).tobytes()
    r = c.post(f"/api/models/{mid}/predict?top_k=0", content=x, headers=RAW_TENSOR)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 4
    conforms(doc, r)
    for path, body, headers, status in (
        (f"/api/models/{mid}/predict", b"abc", {"Content-Type": "text/csv"}, 415),
        (f"/api/models/{mid}/predict?top_k=-1", x, RAW_TENSOR, 422),
        ("/api/models/nope-00000000/predict", x, RAW_TENSOR, 404),
        (f"/api/models/{mid}/predict", x[:8], RAW_TENSOR, 400),
    ):
        r = c.post(path, content=body, headers=headers)
        assert r.status_code == status, r.text
        conforms(doc, r)
    conforms(doc, c.get("/api/inference/formats"))


def test_health_and_metrics_reply_as_documented(served: Served) -> None:
    c, doc = served.client, served.doc
    for path in ("/health", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
        r = c.get(path)
        assert r.status_code == 200, r.text
        conforms(doc, r)
    r = c.get("/metrics")
    assert r.status_code == 200 and "cidserve_requests_total" in r.text
    conforms(doc, r)
    r = c.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    conforms(doc, r)


def test_v2_routes_reply_as_documented(served: Served) -> None:
    c, doc, mid = served.client, served.doc, served.model_id
    conforms(doc, c.get("/v2"))
    for path in (
        f"/v2/models/{mid}",
        f"/v2/models/{mid}/versions/1.0.0",
        f"/v2/models/{mid}/ready",
    ):
        r = c.get(path)
        assert r.status_code == 200, r.text
        conforms(doc, r)
    for path in ("/v2/models/nope", f"/v2/models/{mid}/versions/9.9/ready"):
        r = c.get(path)
        assert r.status_code == 404, r.text
        conforms(doc, r)
    ok = c.post(f"/v2/models/{mid}/infer", json={"id": "r1", **_v2_input()})
    assert ok.status_code == 200 and ok.json()["id"] == "r1"
    conforms(doc, ok)
    classified = {
        **_v2_input(),
        "outputs": [{"name": "y", "parameters": {"classification": 2}}],
    }
    r = c.post(f"/v2/models/{mid}/versions/1.0.0/infer", json=classified)
    assert r.status_code == 200 and r.json()["outputs"][0]["datatype"] == "BYTES"
    conforms(doc, r)
    binary = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 8],
                    "parameters": {"binary_data_size": 32},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    r = c.post(
        f"/v2/models/{mid}/infer",
        content=binary + np.ones(8, dtype=np.float32).tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(binary)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    conforms(doc, r)
    for path, body, status in (
        (f"/v2/models/{mid}/infer", {"inputs": []}, 400),
        (f"/v2/models/{mid}/infer", _v2_input([1.0]), 400),
        ("/v2/models/nope/infer", _v2_input(), 404),
    ):
        r = c.post(path, json=body)
        assert r.status_code == status, r.text
        conforms(doc, r)
    r = c.post(f"/v2/models/{mid}/infer", content=b"{}", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 415
    conforms(doc, r)


def test_v2_repository_replies_as_documented(served: Served) -> None:
    c, doc = served.client, served.doc
    cid = served.spare.metadata_cid
    r = c.post("/v2/repository/index", json={})
    assert r.status_code == 401
    conforms(doc, r)
    r = c.post("/v2/repository/index", json={"ready": True}, headers=BEARER)
    assert r.status_code == 200 and r.json()
    conforms(doc, r)
    r = c.post("/v2/repository/index", json={"ready": 3}, headers=BEARER)
    assert r.status_code == 400
    conforms(doc, r)
    load = {"parameters": {"metadataCid": cid}}
    r = c.post("/v2/repository/models/ob/load", json=load, headers=BEARER)
    assert r.status_code == 200, r.text
    conforms(doc, r)
    name = r.json()["name"]
    r = c.post("/v2/repository/models/ob/load", json={"parameters": 1}, headers=BEARER)
    assert r.status_code == 400
    conforms(doc, r)
    r = c.post(f"/v2/repository/models/{name}/unload", json={}, headers=BEARER)
    assert r.status_code == 200, r.text
    conforms(doc, r)
    r = c.post(f"/v2/repository/models/{name}/unload", json={}, headers=BEARER)
    assert r.status_code == 404
    conforms(doc, r)
    r = c.post(
        "/v2/repository/index", content=b"{}", headers={**BEARER, "Content-Type": "text/plain"}
    )
    assert r.status_code == 415
    conforms(doc, r)


def test_429_and_503_carry_retry_after_as_documented(tmp_path: Path) -> None:
    with serve_linear(tmp_path, rate_limit_rps=0.2, rate_limit_burst=1) as s:
        c, doc, mid = s.client, s.doc, s.model_id
        assert c.post(f"/v2/models/{mid}/infer", json=_v2_input()).status_code == 200
        for r in (
            c.post(f"/v2/models/{mid}/infer", json=_v2_input()),
            c.post("/api/inference/execute", json=_execute(mid)),
            c.post(f"/api/models/{mid}/predict", content=b"", headers=RAW_TENSOR),
        ):
            assert r.status_code == 429, r.text
            assert conforms(doc, r)["headers"]["Retry-After"]
            assert int(r.headers["Retry-After"]) >= 1
        s.app.state.services.dataplane.admission.drain()
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        conforms(doc, r)
        r = c.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        conforms(doc, r)


def test_base64_tensor_content_is_described_and_accepted(served: Served) -> None:
    """The request body the document describes for execute is the one the route takes."""
    c, doc, mid = served.client, served.doc, served.model_id
    schema = doc["paths"]["/api/inference/execute"]["post"]["requestBody"]["content"]
    body = _execute(
        mid,
        content={
            "data": base64.b64encode(np.zeros(8, np.float32).tobytes()).decode(),
            "dtype": "float32",
            "shape": [1, 8],
        },
    )
    Draft202012Validator(schema["application/json"]["schema"]).validate(body)
    r = c.post("/api/inference/execute", json=body)
    assert r.status_code == 200, r.text
    conforms(doc, r)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        (1e300, "float32"),  # overflowed to infinity by the cast
        (7e4, "float16"),
        (300, "int8"),  # wrapped around by the cast
        (-1, "uint8"),
        (2**64 - 1, "int64"),
    ],
)
def test_typed_tensor_values_out_of_range_are_a_400(
    served: Served, values: float, dtype: str
) -> None:
    """A nested-list tensor with a ``dtype`` its values do not fit is refused, naming the
    dtype, before it reaches the model (it used to reach it as inf or wrapped values)."""
    content = {"data": [[values] * 8], "dtype": dtype}
    r = served.client.post("/api/inference/execute", json=_execute(served.model_id, content))
    assert r.status_code == 400, r.text
    assert r.json()["message"] == f"tensor holds values out of the range of {dtype}"
    conforms(served.doc, r)
