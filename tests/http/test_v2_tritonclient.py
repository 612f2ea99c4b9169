"""The Open Inference Protocol with the real Triton HTTP client and EfficientNet-Lite0.

Outputs are compared with an in-process ONNX Runtime run of the same ONNX file; the JPEG
path (a BYTES input) is compared with cidserve's own ``/api`` predictions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from registry.local_store import LocalContentStore
from registry.publish import PublishResult
from services.http.app import create_app
from services.wiring import build_services
from tests.conftest import CAT_LABELS, Gateway, make_settings
from tests.harness import ServerThread

INPUT, OUTPUT = "input", "logits"


@pytest.fixture(scope="module")
def v2gw(workdir: Path, store: LocalContentStore) -> Iterator[Gateway]:
    """A gateway of its own (room for every model of this module in its session cache)."""
    settings = make_settings(workdir, max_models_in_memory=8)
    services = build_services(settings, store=store)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield Gateway(srv.url, services, client)


@pytest.fixture(scope="module")
def effnet(v2gw: Gateway, efficientnet: PublishResult) -> str:
    r = v2gw.client.post("/api/models/load", json={"metadataCid": efficientnet.metadata_cid})
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


@pytest.fixture(scope="module")
def client(v2gw: Gateway) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(v2gw.url.removeprefix("http://"), network_timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(efficientnet_onnx: Path) -> ort.InferenceSession:
    """The same ONNX file, run in this process."""
    return ort.InferenceSession(str(efficientnet_onnx), providers=["CPUExecutionProvider"])


def _input(arr: np.ndarray, binary: bool = True) -> triton.InferInput:
    inp = triton.InferInput(INPUT, list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def test_server_health_and_metadata(client: triton.InferenceServerClient):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "cidserve"
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(meta["extensions"])


def test_model_metadata_uses_protocol_datatypes(client: triton.InferenceServerClient, effnet):
    meta = client.get_model_metadata(effnet)
    assert meta["name"] == effnet
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 1000]}]
    # The published name (and name + version) finds the same model.
    assert client.get_model_metadata("efficientnet-lite0")["name"] == effnet
    assert client.get_model_metadata("efficientnet-lite0", "1.0.0")["name"] == effnet
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("efficientnet-lite0", "9.9")
    assert err.value.status() == "404"
    assert "no version '9.9'" in err.value.message()


def test_model_readiness(client: triton.InferenceServerClient, effnet):
    assert client.is_model_ready(effnet)
    assert client.is_model_ready("efficientnet-lite0", "1.0.0")
    assert not client.is_model_ready("no-such-model")


def test_binary_infer_equals_onnxruntime(client, effnet, reference):
    batch = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    result = client.infer(
        effnet,
        [_input(batch)],
        outputs=[triton.InferRequestedOutput(OUTPUT, binary_data=True)],
        request_id="batch-of-two",
    )
    got = result.as_numpy(OUTPUT)
    want = reference.run([OUTPUT], {INPUT: batch})[0]
    assert got.dtype == np.float32 and got.shape == (2, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    reply = result.get_response()
    assert reply["id"] == "batch-of-two"
    assert reply["model_name"] == effnet
    assert reply["outputs"][0]["parameters"]["binary_data_size"] == 2 * 1000 * 4


def test_json_infer_equals_onnxruntime(client, effnet, reference):
    x = np.random.default_rng(2).uniform(-2, 2, (1, 3, 224, 224)).astype(np.float32)
    result = client.infer(
        effnet,
        [_input(x, binary=False)],
        outputs=[triton.InferRequestedOutput(OUTPUT, binary_data=False)],
    )
    output = result.get_response()["outputs"][0]
    assert "data" in output and "parameters" not in output  # JSON all the way
    want = reference.run([OUTPUT], {INPUT: x})[0]
    np.testing.assert_allclose(result.as_numpy(OUTPUT), want, rtol=1e-5, atol=1e-5)


def test_jpeg_as_bytes_with_classification(client, effnet, v2gw: Gateway, photos):
    images = np.array([[photos["chelsea"]], [photos["coffee"]]], dtype=object)
    inp = triton.InferInput(INPUT, [2, 1], "BYTES")
    inp.set_data_from_numpy(images)
    result = client.infer(
        effnet, [inp], outputs=[triton.InferRequestedOutput(OUTPUT, class_count=3)]
    )
    classes = result.as_numpy(OUTPUT)
    assert classes.shape == (2, 3)
    rows = [[s.decode().split(":", 2) for s in row] for row in classes]
    assert rows[0][0][2] in CAT_LABELS
    assert rows[1][0][2] == "espresso"
    # The same preprocessing as the JSON API: the same classes and confidences.
    for photo, row in zip(("chelsea", "coffee"), rows, strict=True):
        r = v2gw.client.post(
            f"/api/models/{effnet}/predict?top_k=3",
            content=photos[photo],
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code == 200, r.text
        api = r.json()["predictions"]
        assert [p["class"] for p in api] == [label for _, _, label in row]
        assert [p["class_id"] for p in api] == [int(index) for _, index, _ in row]
        np.testing.assert_allclose(
            [float(v) for v, _, _ in row], [p["confidence"] for p in api], rtol=1e-5
        )


def test_datatype_and_shape_mismatches_name_the_input(client, effnet):
    wrong_type = triton.InferInput(INPUT, [1, 3, 224, 224], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 3, 224, 224)))
    with pytest.raises(InferenceServerException) as err:
        client.infer(effnet, [wrong_type])
    assert err.value.status() == "400"
    assert "input 'input'" in err.value.message() and "FP64" in err.value.message()

    with pytest.raises(InferenceServerException) as err:
        client.infer(effnet, [_input(np.zeros((1, 3, 200, 224), np.float32))])
    assert err.value.status() == "400"
    assert "input 'input': dimension 2 is 200, not 224" in err.value.message()

    with pytest.raises(InferenceServerException) as err:
        client.infer(
            effnet,
            [_input(np.zeros((1, 3, 224, 224), np.float32))],
            outputs=[triton.InferRequestedOutput("probabilities")],
        )
    assert err.value.status() == "400"
    assert "no output 'probabilities'" in err.value.message()


def test_raw_http_binary_request_and_error_shape(v2gw: Gateway, effnet, reference):
    """What curl sends: JSON header, then the raw little-endian tensor."""
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    head = json.dumps(
        {
            "id": "curl-1",
            "parameters": {"binary_data_output": True},
            "inputs": [
                {
                    "name": INPUT,
                    "shape": [1, 3, 224, 224],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
        }
    ).encode()
    r = v2gw.client.post(
        f"/v2/models/{effnet}/infer",
        content=head + x.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    reply = json.loads(r.content[:n])
    assert reply["id"] == "curl-1"
    (out,) = reply["outputs"]
    assert out["name"] == OUTPUT and out["datatype"] == "FP32" and out["shape"] == [1, 1000]
    got = np.frombuffer(r.content[n:], dtype="<f4").reshape(1, 1000)
    np.testing.assert_allclose(got, reference.run([OUTPUT], {INPUT: x})[0], rtol=1e-5, atol=1e-5)

    # Errors on /v2 are the protocol's {"error": ...}, never the /api envelope.
    for method, path, kwargs, status in [
        ("POST", f"/v2/models/{effnet}/infer", {"content": b"not json"}, 400),
        ("POST", f"/v2/models/{effnet}/infer", {"json": {"inputs": []}}, 400),
        # An unknown model is answered before the body is parsed.
        ("POST", "/v2/models/missing/infer", {"content": b"not json"}, 404),
        ("GET", "/v2/models/missing", {}, 404),
        (
            "POST",
            f"/v2/models/{effnet}/infer",
            {"content": b"{}", "headers": {"Content-Encoding": "gzip"}},
            415,
        ),
    ]:
        r = v2gw.client.request(method, path, **kwargs)
        assert r.status_code == status, (path, r.text)
        assert set(r.json()) == {"error"}, r.text


def test_element_bound_is_413(v2gw: Gateway, effnet):
    body = {
        "inputs": [
            {"name": INPUT, "shape": [10**6, 3, 224, 224], "datatype": "FP32", "data": [0.0]}
        ]
    }
    r = v2gw.client.post(f"/v2/models/{effnet}/infer", json=body)
    assert r.status_code == 413
    assert "CIDSERVE_MAX_TENSOR_ELEMENTS" in r.json()["error"]


def test_bytes_that_are_not_an_image_are_400(client, effnet):
    inp = triton.InferInput(INPUT, [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"GIF89a but not really"], dtype=object))
    with pytest.raises(InferenceServerException) as err:
        client.infer(effnet, [inp])
    assert err.value.status() == "400"
