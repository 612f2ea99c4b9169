"""Open Inference Protocol: the model repository extension, model names and versions, every
datatype end to end, and licensed models, with the real Triton HTTP client and small models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from postprocessing.classification import ClassificationPostprocessing
from preprocessing.tensor import TensorPreprocessing
from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.chain.auth import SignatureAuthenticator
from services.chain.client import sign_url
from services.http.app import create_app
from services.state.kv import MemoryKV
from services.wiring import build_services
from tests.conftest import Gateway, make_settings
from tests.harness import ServerThread
from tests.models import linear_model, linear_weights, slow_model
from tests.planes import Holders

ELEM_TYPES = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BYTES": (TensorProto.STRING, np.object_),
}
HOLDER_KEY = "0x" + "11" * 32
STRANGER_KEY = "0x" + "22" * 32


def identity_model(path: Path, datatype: str) -> Path:
    """``y = Identity(x)`` for one element type; ``x`` is [batch, 3]."""
    elem = ELEM_TYPES[datatype][0]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", elem, ["batch", 3])],
        [helper.make_tensor_value_info("y", elem, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def sample(datatype: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    if datatype == "BYTES":
        return np.array([[b"a", b"", "caf\u00e9".encode()], [b"x" * 300, b"b", b"c"]], dtype=object)
    dtype = np.dtype(ELEM_TYPES[datatype][1])
    if dtype.kind == "b":
        return rng.integers(0, 2, (2, 3)).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, 2, info.max - 1]], dtype=dtype)
    return rng.standard_normal((2, 3)).astype(dtype)


@pytest.fixture(scope="module")
def published(workdir: Path, store: LocalContentStore) -> dict[str, PublishResult]:
    """Two versions of one linear model, and an identity model per datatype."""
    out: dict[str, PublishResult] = {}
    for seed, version in ((11, "1.0.0"), (12, "2.0.0")):
        path = linear_model(workdir / f"v2-linear-{seed}.onnx", seed=seed)
        out[version] = asyncio.run(
            publish_model(
                store,
                path,
                name="v2-linear",
                version_=version,
                labels=["north", "east", "south", "west"],
            )
        )
    for datatype in ELEM_TYPES:
        path = identity_model(workdir / f"v2-identity-{datatype}.onnx", datatype)
        out[datatype] = asyncio.run(
            publish_model(
                store,
                path,
                name=f"identity-{datatype.lower()}",
                preprocessing=TensorPreprocessing(input="x"),
                postprocessing=ClassificationPostprocessing(output="y"),
            )
        )
    return out


def _serve(workdir: Path, store: LocalContentStore, **kwargs) -> Iterator[Gateway]:
    overrides = {"max_models_in_memory": kwargs.pop("max_models", 32)}
    settings = make_settings(workdir, **overrides)
    services = build_services(settings, store=store, **kwargs)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield Gateway(srv.url, services, client)


@pytest.fixture(scope="module")
def repo_gw(workdir: Path, store: LocalContentStore) -> Iterator[Gateway]:
    yield from _serve(workdir, store)


def _client(gw: Gateway) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(gw.url.removeprefix("http://"))


def _x(rows: int = 2) -> np.ndarray:
    return np.arange(rows * 8, dtype=np.float32).reshape(rows, 8) / 10


def _linear(client: triton.InferenceServerClient, model: str, version: str = "") -> np.ndarray:
    x = _x()
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], model_version=version).as_numpy("y")


def test_load_index_infer_unload(repo_gw: Gateway, published):
    pub = published["1.0.0"]
    client = _client(repo_gw)
    client.load_model("v2-linear", config=json.dumps({"metadataCid": pub.metadata_cid}))
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index[pub.model_id] == {
        "name": pub.model_id,
        "version": "1.0.0",
        "state": "READY",
        "reason": "",
    }
    assert client.is_model_ready(pub.model_id)
    w, b = linear_weights(11)
    np.testing.assert_allclose(_linear(client, pub.model_id), _x() @ w + b, rtol=1e-5, atol=1e-5)
    # The same load through /api is the same model: already in the session cache.
    r = repo_gw.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
    assert r.json()["status"] == "already_loaded"

    client.unload_model(pub.model_id)
    assert pub.model_id not in {row["name"] for row in client.get_model_repository_index()}
    assert not client.is_model_ready(pub.model_id)
    with pytest.raises(InferenceServerException) as err:
        _linear(client, pub.model_id)
    assert err.value.status() == "404"
    # Loading again by the model_id and the CID in plain parameters works too.
    r = repo_gw.client.post(
        f"/v2/repository/models/{pub.model_id}/load",
        json={"parameters": {"metadataCid": pub.metadata_cid, "warmup": False}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == pub.model_id and r.json()["state"] == "READY"
    assert client.is_model_ready(pub.model_id)
    client.close()


def test_load_errors(repo_gw: Gateway, published):
    client = _client(repo_gw)
    pub = published["1.0.0"]
    with pytest.raises(InferenceServerException) as err:
        client.load_model("some-other-name", config=json.dumps({"metadataCid": pub.metadata_cid}))
    assert err.value.status() == "400"
    assert "describes model 'v2-linear'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.load_model("never-seen")
    assert err.value.status() == "400"
    assert "parameters.metadataCid" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.load_model("x", config=json.dumps({"metadataCid": "bafkreinotacid"}))
    assert err.value.status() == "400"
    missing = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("x", config=json.dumps({"metadataCid": missing}))
    assert err.value.status() == "404"
    client.close()


def test_names_and_versions_resolve(repo_gw: Gateway, published):
    client = _client(repo_gw)
    for version in ("1.0.0", "2.0.0"):
        client.load_model(
            "v2-linear", config=json.dumps({"metadataCid": published[version].metadata_cid})
        )
    for version, seed in (("1.0.0", 11), ("2.0.0", 12)):
        w, b = linear_weights(seed)
        np.testing.assert_allclose(
            _linear(client, "v2-linear", version), _x() @ w + b, rtol=1e-5, atol=1e-5
        )
        meta = client.get_model_metadata("v2-linear", version)
        assert meta["name"] == published[version].model_id
    # Without a version: the most recently used one.
    assert client.get_model_metadata("v2-linear")["name"] == published["2.0.0"].model_id
    with pytest.raises(InferenceServerException) as err:
        _linear(client, "v2-linear", "3.0.0")
    assert err.value.status() == "404"
    assert "'1.0.0', '2.0.0'" in err.value.message()
    # Classification by the model's own labels (softmax of the logits), per batch row.
    x = _x()
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer(
        "v2-linear",
        [inp],
        model_version="1.0.0",
        outputs=[triton.InferRequestedOutput("y", binary_data=False, class_count=2)],
    ).as_numpy("y")
    w, b = linear_weights(11)
    logits = x @ w + b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = ["north", "east", "south", "west"]
    assert out.shape == (2, 2)
    for row, p in zip(out, probs, strict=True):
        top = np.argsort(-p)[:2]
        parts = [str(s).split(":") for s in row]
        assert [int(i) for _, i, _ in parts] == top.tolist()
        assert [label for _, _, label in parts] == [labels[i] for i in top]
        np.testing.assert_allclose([float(v) for v, _, _ in parts], p[top], rtol=1e-5)
    client.close()


@pytest.mark.parametrize("datatype", list(ELEM_TYPES))
def test_every_datatype_round_trips(repo_gw: Gateway, published, datatype):
    pub = published[datatype]
    r = repo_gw.client.post(
        f"/v2/repository/models/{pub.model_id}/load",
        # Warm-up runs zeros, which string inputs cannot be: skip it for BYTES.
        json={"parameters": {"metadataCid": pub.metadata_cid, "warmup": datatype != "BYTES"}},
    )
    assert r.status_code == 200, r.text
    client = _client(repo_gw)
    meta = client.get_model_metadata(pub.model_id)
    assert meta["inputs"] == [{"name": "x", "datatype": datatype, "shape": [-1, 3]}]
    x = sample(datatype)
    for binary in (True, False):
        if datatype == "BYTES" and not binary:
            x = np.array([[b"json", b"is", b"text"]], dtype=object)
        inp = triton.InferInput("x", list(x.shape), datatype)
        inp.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(
            pub.model_id, [inp], outputs=[triton.InferRequestedOutput("y", binary_data=binary)]
        )
        y = result.as_numpy("y")
        assert result.get_response()["outputs"][0]["datatype"] == datatype
        if datatype == "BYTES":
            got = [v if isinstance(v, bytes) else str(v).encode() for v in y.reshape(-1)]
            assert got == list(x.reshape(-1))
        else:
            assert y.dtype == x.dtype
            np.testing.assert_array_equal(y, x)
    client.close()


@pytest.fixture(scope="module")
def small_gw(workdir: Path, store: LocalContentStore) -> Iterator[Gateway]:
    """Room for two models only: the third load evicts the least recently used."""
    yield from _serve(workdir, store, max_models=2)


def test_evicted_model_is_unavailable_until_reloaded(small_gw: Gateway, published):
    client = _client(small_gw)
    first, second, third = published["INT32"], published["INT64"], published["FP32"]
    for pub in (first, second, third):
        client.load_model(pub.metadata.name, config=json.dumps({"metadataCid": pub.metadata_cid}))
    assert not client.is_model_ready(first.model_id)
    row = next(r for r in client.get_model_repository_index() if r["name"] == first.model_id)
    assert row["state"] == "UNAVAILABLE" and "evicted" in row["reason"]
    ready = {
        r["name"] for r in small_gw.client.post("/v2/repository/index", json={"ready": True}).json()
    }
    assert ready == {second.model_id, third.model_id}
    # Metadata still answers (read from the content store, no reload).
    assert client.get_model_metadata(first.model_id)["inputs"][0]["datatype"] == "INT32"
    assert not client.is_model_ready(first.model_id)
    # A load by name alone brings it back from the index.
    client.load_model(first.model_id)
    assert client.is_model_ready(first.model_id)
    client.close()


@pytest.fixture(scope="module")
def licensed_gw(workdir: Path, store: LocalContentStore) -> Iterator[Gateway]:
    """Licensing on: signed requests (the real authenticator), holders known to the backend;
    one model in memory at a time."""
    holder = triton_address(HOLDER_KEY)
    yield from _serve(
        workdir,
        store,
        max_models=1,
        licensing=Holders({holder}),
        authenticator=SignatureAuthenticator(MemoryKV()),
    )


def triton_address(key: str) -> str:
    from eth_account import Account

    return str(Account.from_key(key).address)


def test_licensed_model_needs_signed_headers(licensed_gw: Gateway, published):
    pub = published["1.0.0"]
    client = _client(licensed_gw)
    client.load_model(
        "v2-linear", config=json.dumps({"metadataCid": pub.metadata_cid, "tokenId": 7})
    )
    assert licensed_gw.services.cache.peek(pub.model_id).token_id == 7
    x = _x()
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outputs = [triton.InferRequestedOutput("y")]
    path = f"/v2/models/{pub.model_id}/infer"
    body, json_size = client.generate_request_body([inp], outputs=outputs)
    url, sent = licensed_gw.url + path, {"Inference-Header-Content-Length": str(json_size)}

    with pytest.raises(InferenceServerException) as err:
        client.infer(pub.model_id, [inp], outputs=outputs)
    assert err.value.status() == "401"
    with pytest.raises(InferenceServerException) as err:
        client.infer(
            pub.model_id,
            [inp],
            outputs=outputs,
            headers=sign_url(STRANGER_KEY, "POST", url, sent, body),
        )
    assert err.value.status() == "403"
    signed = sign_url(HOLDER_KEY, "POST", url, sent, body)
    y = client.infer(pub.model_id, [inp], outputs=outputs, headers=signed).as_numpy("y")
    w, b = linear_weights(11)
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)
    # A signature covers one request: the same headers again are a replay.
    with pytest.raises(InferenceServerException) as err:
        client.infer(pub.model_id, [inp], outputs=outputs, headers=signed)
    assert err.value.status() == "401"

    # Evicted, the licensed model is reloaded for a license holder only.
    other = published["FP32"]
    client.load_model(other.metadata.name, config=json.dumps({"metadataCid": other.metadata_cid}))
    cache = licensed_gw.services.cache
    assert cache.peek(pub.model_id) is None
    with pytest.raises(InferenceServerException) as err:
        client.infer(pub.model_id, [inp], outputs=outputs)
    assert err.value.status() == "401"
    assert cache.peek(pub.model_id) is None  # no load for a caller without a license
    signed = sign_url(HOLDER_KEY, "POST", url, sent, body)
    y = client.infer(pub.model_id, [inp], outputs=outputs, headers=signed).as_numpy("y")
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)
    assert cache.peek(pub.model_id) is not None
    client.close()


def test_request_checks_and_deadline(repo_gw: Gateway, published, workdir: Path, store):
    client = _client(repo_gw)
    pub = published["INT64"]
    client.load_model(pub.metadata.name, config=json.dumps({"metadataCid": pub.metadata_cid}))
    x = np.zeros((1, 3), dtype=np.int64)
    wrong = triton.InferInput("z", [1, 3], "INT64")
    wrong.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        client.infer(pub.model_id, [wrong])
    assert err.value.status() == "400"
    assert "model has no input 'z'; its inputs are 'x'" in err.value.message()
    right = triton.InferInput("x", [1, 3], "INT64")
    right.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        client.infer(pub.model_id, [right], sequence_id=5)
    assert err.value.status() == "400"
    assert "sequence" in err.value.message()

    # Triton clients send the deadline in microseconds; past it the run is stopped: 504.
    slow = asyncio.run(publish_model(store, slow_model(workdir / "v2-slow.onnx"), name="v2-slow"))
    client.load_model(
        "v2-slow", config=json.dumps({"metadataCid": slow.metadata_cid, "warmup": False})
    )
    inp = triton.InferInput("x", [1, 1024], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1024), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("v2-slow", [inp], timeout=50_000)
    assert err.value.status() == "504"
    assert "did not finish within 50 ms" in err.value.message()
    client.close()
