"""Models with several inputs and outputs, and string inputs, over /api and /v2.

``affine``: inputs ``x`` (float32 [batch, 3]) and ``a`` (int32 [batch, 3]); outputs
``y = a * x + 0.5`` (float32 [batch, 3]) and ``k = argmax(y)`` (int64 [batch]). ``parse``:
input ``s`` (strings [batch, 2]) cast to numbers, output ``v`` (float32 [batch, 2]): its
warm-up with empty strings fails, so it only loads with ``warmup: false``.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from postprocessing.tensor import TensorPostprocessing
from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from tests.conftest import Gateway

X = [[1.0, 2.0, 3.0]]
A = [[2, 0, -1]]
Y = [[2.5, 0.5, -2.5]]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def affine_model(path: Path) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["a"], ["af"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["af", "x"], ["ax"]),
            helper.make_node("Add", ["ax", "b"], ["y"]),
            helper.make_node("ArgMax", ["y"], ["k"], axis=1, keepdims=0),
        ],
        "affine",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("a", TensorProto.INT32, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["batch"]),
        ],
        [numpy_helper.from_array(np.array(0.5, dtype=np.float32), "b")],
    )
    return _save(graph, path)


def parse_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["s"], ["v"], to=TensorProto.FLOAT)],
        "parse",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", 2])],
    )
    return _save(graph, path)


@pytest.fixture(scope="module")
def affine(store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory) -> PublishResult:
    path = affine_model(tmp_path_factory.mktemp("affine") / "affine.onnx")
    return asyncio.run(publish_model(store, path, name="affine", task="tensor"))


@pytest.fixture(scope="module")
def affine_k_only(
    store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory
) -> PublishResult:
    """The same model, replying with ``k`` only."""
    path = affine_model(tmp_path_factory.mktemp("affine-k") / "affine.onnx")
    post = TensorPostprocessing(outputs=["k"])
    return asyncio.run(publish_model(store, path, name="affine-k", postprocessing=post))


@pytest.fixture(scope="module")
def affine_bounded(
    store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory
) -> PublishResult:
    """The same model, refusing replies of over 3 elements (``y`` and ``k`` make 4)."""
    path = affine_model(tmp_path_factory.mktemp("affine-b") / "affine.onnx")
    post = TensorPostprocessing(max_elements=3)
    return asyncio.run(publish_model(store, path, name="affine-b", postprocessing=post))


@pytest.fixture(scope="module")
def parse(store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory) -> PublishResult:
    path = parse_model(tmp_path_factory.mktemp("parse") / "parse.onnx")
    return asyncio.run(publish_model(store, path, name="parse", task="tensor"))


def _load(gw: Gateway, pub: PublishResult, warmup: bool = True) -> str:
    r = gw.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid, "warmup": warmup})
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


def _execute(gw: Gateway, model_id: str, content: object, fmt: str = "tensors"):
    return gw.client.post(
        "/api/inference/execute",
        json={"model_id": model_id, "input_data": {"format": fmt, "content": content}},
    )


def _b64(values: object, dtype: str) -> dict[str, object]:
    arr = np.asarray(values, dtype=dtype)
    return {
        "b64": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode(),
        "dtype": dtype,
        "shape": list(arr.shape),
    }


def test_publish_records_every_input_and_output(affine: PublishResult) -> None:
    md = affine.metadata
    assert [(t.name, t.dtype, t.shape) for t in md.inputs] == [
        ("x", "float32", ["batch", 3]),
        ("a", "int32", ["batch", 3]),
    ]
    assert [(t.name, t.dtype) for t in md.outputs] == [("y", "float32"), ("k", "int64")]
    assert md.preprocessing.kind == "tensor" and md.preprocessing.input is None
    assert md.postprocessing.kind == "tensor"


def test_tensors_as_nested_lists_and_b64(gateway: Gateway, affine: PublishResult) -> None:
    model_id = _load(gateway, affine)
    for content in (
        {"x": X, "a": A},
        {"x": _b64(X, "float32"), "a": _b64(A, "int32")},
        {"x": X[0], "a": _b64(A, "int32")},  # one rank short: a batch of one
    ):
        r = _execute(gateway, model_id, content)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] is True and body["predictions"] == []
        outputs = body["details"]["outputs"]
        assert outputs["y"]["dtype"] == "float32" and outputs["y"]["shape"] == [1, 3]
        np.testing.assert_allclose(outputs["y"]["data"], Y)
        assert outputs["k"] == {"dtype": "int64", "shape": [1], "data": [0]}
        assert set(body["metrics"]) >= {"inference_time_ms", "total_time_ms"}


@pytest.mark.parametrize(
    ("content", "status", "words"),
    [
        ({"x": X}, 400, ["'a'", "missing"]),
        ({"x": X, "a": A, "z": A}, 400, ["'z'"]),
        ({"x": X, "a": [[2.5, 0.0, 1.0]]}, 400, ["'a'", "float64", "int32"]),
        ({"x": [[1.0, 2.0]], "a": A}, 400, ["'x'", "dimension 1"]),
        ({"x": [["1", "2", "3"]], "a": A}, 400, ["'x'", "string"]),
        ({"x": [[1.0, 2.0], [3.0]], "a": A}, 400, ["'x'", "regular"]),
        ({"x": {"b64": "AAAA", "dtype": "float32", "shape": [1, 3]}, "a": A}, 400, ["'x'"]),
        ({"x": {"b64": "AAAA", "dtype": "complex", "shape": [1]}, "a": A}, 400, ["'x'", "dtype"]),
        ({"x": 3, "a": A}, 400, ["'x'"]),
        ([[1.0]], 400, ["tensors"]),
    ],
)
def test_bad_tensors_are_named(
    gateway: Gateway, affine: PublishResult, content: object, status: int, words: list[str]
) -> None:
    model_id = _load(gateway, affine)
    r = _execute(gateway, model_id, content)
    assert r.status_code == status, r.text
    message = r.json()["message"]
    for word in words:
        assert word in message, message


def test_one_tensor_for_two_inputs_says_what_to_send(
    gateway: Gateway, affine: PublishResult
) -> None:
    r = _execute(gateway, _load(gateway, affine), X, fmt="tensor")
    assert r.status_code == 400
    assert "'tensors'" in r.json()["message"]


@pytest.mark.parametrize("private_gateway", [{"max_tensor_elements": 5}], indirect=True)
def test_all_tensors_together_are_bounded(private_gateway: Gateway, affine: PublishResult) -> None:
    model_id = _load(private_gateway, affine)
    r = _execute(private_gateway, model_id, {"x": X, "a": A})  # 3 + 3 elements
    assert r.status_code == 413, r.text
    assert "CIDSERVE_MAX_TENSOR_ELEMENTS" in r.json()["message"]
    # The bound is read from the declared shape, before the base64 is decoded.
    huge = {"b64": "AAAA", "dtype": "float32", "shape": [10**9, 10**9]}
    r = _execute(private_gateway, model_id, {"x": huge, "a": A})
    assert r.status_code == 413, r.text


def test_v2_two_inputs_two_outputs(gateway: Gateway, affine: PublishResult) -> None:
    model_id = _load(gateway, affine)
    r = gateway.client.get(f"/v2/models/{model_id}")
    assert r.status_code == 200, r.text
    assert [i["name"] for i in r.json()["inputs"]] == ["x", "a"]
    body = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 1, 1, 1]},
            {"name": "a", "shape": [2, 3], "datatype": "INT32", "data": [2, 0, -1, 1, 3, 2]},
        ]
    }
    r = gateway.client.post(f"/v2/models/{model_id}/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["y"]["datatype"] == "FP32" and outputs["y"]["shape"] == [2, 3]
    np.testing.assert_allclose(outputs["y"]["data"], [2.5, 0.5, -2.5, 1.5, 3.5, 2.5])
    assert outputs["k"]["datatype"] == "INT64" and outputs["k"]["data"] == [0, 1]
    del body["inputs"][1]
    r = gateway.client.post(f"/v2/models/{model_id}/infer", json=body)
    assert r.status_code == 400
    assert "'a'" in r.json()["error"]


def test_tensor_postprocessor_chooses_and_bounds_outputs(
    gateway: Gateway, affine_k_only: PublishResult, affine_bounded: PublishResult
) -> None:
    model_id = _load(gateway, affine_k_only)
    r = _execute(gateway, model_id, {"x": X, "a": A})
    assert r.status_code == 200, r.text
    assert r.json()["details"]["outputs"] == {"k": {"dtype": "int64", "shape": [1], "data": [0]}}

    model_id = _load(gateway, affine_bounded)
    r = _execute(gateway, model_id, {"x": X, "a": A})
    assert r.status_code == 500, r.text
    message = r.json()["message"]
    assert "'k'" in message and "postprocessing.max_elements" in message


@pytest.mark.parametrize("private_gateway", [{"prediction_cache": True}], indirect=True)
def test_prediction_cache_keys_cover_every_input(
    private_gateway: Gateway, affine: PublishResult
) -> None:
    model_id = _load(private_gateway, affine)
    first = _execute(private_gateway, model_id, {"x": X, "a": A})
    assert first.status_code == 200 and first.json()["cache"] == "miss", first.text
    again = _execute(private_gateway, model_id, {"a": A, "x": X})
    assert again.json()["cache"] == "hit"
    assert again.json()["details"] == first.json()["details"]
    other = _execute(private_gateway, model_id, {"x": X, "a": [[1, 1, 1]]})
    assert other.json()["cache"] == "miss"
    np.testing.assert_allclose(other.json()["details"]["outputs"]["y"]["data"], [[1.5, 2.5, 3.5]])


@pytest.mark.parametrize(
    "private_gateway",
    [{"max_models_in_memory": 1, "prediction_cache": False}],
    indirect=True,
)
def test_string_model_reloads_without_warmup_as_loaded(
    private_gateway: Gateway, parse: PublishResult, affine: PublishResult
) -> None:
    gw = private_gateway
    r = gw.client.post("/api/models/load", json={"metadataCid": parse.metadata_cid})
    assert r.status_code == 422, r.text  # "" does not parse as a number: the warm-up fails
    assert "warm-up" in r.json()["message"]
    model_id = _load(gw, parse, warmup=False)
    strings = {"s": [["1.5", "-2"]]}
    r = _execute(gw, model_id, strings)
    assert r.status_code == 200, r.text
    assert r.json()["details"]["outputs"]["v"]["data"] == [[1.5, -2.0]]

    _load(gw, affine)  # evicts the string model (one model in memory)
    assert gw.services.repository.peek(model_id) is None
    r = _execute(gw, model_id, {"s": [["7", "0.25"]]})
    assert r.status_code == 200, r.text
    assert r.json()["details"]["outputs"]["v"]["data"] == [[7.0, 0.25]]
    assert gw.services.repository.peek(model_id) is not None

    r = _execute(gw, model_id, {"s": [[1, 2]]})
    assert r.status_code == 400
    assert "'s'" in r.json()["message"] and "string" in r.json()["message"]
