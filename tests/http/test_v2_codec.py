"""The Open Inference Protocol codec against the real Triton client's own encoder and decoder.

Request bodies are made by ``tritonclient.http`` exactly as it sends them (JSON and binary
tensor data); replies are read back with its ``InferResult``: what a Triton user sends must
decode to the same numpy arrays, and what cidserve replies must decode to the arrays it had.
"""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from services.http.errors import HttpError, PayloadTooLarge
from services.http.v2_codec import (
    HEADER_LENGTH,
    V2Error,
    V2Limits,
    V2TooLarge,
    decode_request,
)
from services.http.v2_reply import OutputTensor, classification_strings, encode_response

LIMITS = V2Limits(max_elements=1_000_000, max_classes=100)

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1, 2**63], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([[-32768], [32767]], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [5, 6]], dtype=np.int64),
    "FP16": np.array([0.5, -1.25, 65504], dtype=np.float16),
    "FP32": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32),
    "FP64": np.array([np.pi, -1e300, 5e-324]),
    "BYTES": np.array([b"", b"\x00\xffbinary", "caf\u00e9".encode()], dtype=object),
}


def _triton_request(arrays: dict[str, np.ndarray], binary: bool, **kwargs):
    inputs = []
    for name, arr in arrays.items():
        dt = name.split("_")[0]
        inp = triton.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return body, (None if json_size is None else str(json_size))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_decodes_as_the_triton_client_sent_it(binary):
    arrays = {k: v for k, v in SAMPLES.items() if binary or k not in ("BYTES",)}
    if not binary:  # JSON BYTES are text; binary-safe bytes need the binary extension
        arrays["BYTES"] = np.array([b"text", "caf\u00e9".encode()], dtype=object)
    body, header = _triton_request(arrays, binary, request_id="req-1")
    req = decode_request(body, header, LIMITS)
    assert req.id == "req-1"
    assert [t.name for t in req.inputs] == list(arrays)
    for tensor in req.inputs:
        sent = arrays[tensor.name]
        assert tensor.binary is binary
        assert tensor.shape == sent.shape
        assert tensor.array.shape == sent.shape
        if tensor.datatype == "BYTES":
            assert tensor.array.tolist() == sent.tolist()
        else:
            assert tensor.array.dtype == sent.dtype, tensor.name
            np.testing.assert_array_equal(tensor.array, sent)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_replies_decode_with_the_triton_client(binary):
    outputs = [OutputTensor(k, v, binary) for k, v in SAMPLES.items() if k != "BYTES" or binary]
    body, json_length = encode_response({"model_name": "m", "id": "x"}, outputs)
    assert (json_length is not None) is binary
    result = triton.InferResult.from_response_body(body, header_length=json_length)
    assert result.get_response()["id"] == "x"
    for out in outputs:
        got = result.as_numpy(out.name)
        if out.name == "BYTES":
            assert got.tolist() == out.array.tolist()
        else:
            assert got.dtype == out.array.dtype
            np.testing.assert_array_equal(got, out.array)


def test_nested_and_flat_json_data_are_the_same_tensor():
    nested = {"name": "x", "datatype": "INT32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}
    flat = {**nested, "data": [1, 2, 3, 4, 5, 6]}
    a = decode_request(orjson.dumps({"inputs": [nested]}), None, LIMITS).inputs[0].array
    b = decode_request(orjson.dumps({"inputs": [flat]}), None, LIMITS).inputs[0].array
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 3) and a.dtype == np.int32


def test_request_parameters_and_output_selection_are_read():
    doc = {
        "id": "42",
        "parameters": {"binary_data_output": True, "custom": "kept"},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.5]}],
        "outputs": [
            {"name": "a"},
            {"name": "b", "parameters": {"binary_data": False, "classification": 3}},
        ],
    }
    req = decode_request(orjson.dumps(doc), None, LIMITS)
    assert req.parameters["custom"] == "kept"
    assert req.outputs is not None
    assert [(o.name, o.binary, o.classification) for o in req.outputs] == [
        ("a", True, 0),
        ("b", False, 3),
    ]


def test_base64_bytes_in_json():
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": ["AP8Q"],
            }
        ]
    }
    arr = decode_request(orjson.dumps(doc), None, LIMITS).inputs[0].array
    assert arr.tolist() == [b"\x00\xff\x10"]


def _binary_body(header: dict, payload: bytes) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return head + payload, str(len(head))


@pytest.mark.parametrize(
    ("doc", "payload", "message"),
    [
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0]}]},
            None,
            "input 'x': data has 1 values; its shape needs 2",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]},
            None,
            "input 'x': a value is out of the range of INT8",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]},
            None,
            "input 'x': INT32 data must be integers",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [1e6]}]},
            None,
            "input 'x': a value is out of the range of FP16",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "BF16", "shape": [1], "data": [1]}]},
            None,
            "input 'x': datatype 'BF16' is not supported",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, -1], "data": []}]},
            None,
            "input 'x': shape must be a list",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]},
            None,
            "input 'x': BOOL data must be true/false values",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]},
            None,
            "input 'x' has no 'data'",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [2],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\x00" * 4,
            "input 'x': binary_data_size is 4 bytes; 2 FP32 elements take 8",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\x00" * 4,
            "input 'x': binary_data_size is 8, but only 4 bytes",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\x00" * 6,
            "the body has 6 bytes of binary data after the JSON",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "s",
                        "datatype": "BYTES",
                        "shape": [2],
                        "parameters": {"binary_data_size": 9},
                    }
                ]
            },
            struct.pack("<I", 1) + b"a" + struct.pack("<I", 9),
            "input 's': BYTES element 1 says 9 bytes; 0 are left",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "b",
                        "datatype": "BOOL",
                        "shape": [1],
                        "parameters": {"binary_data_size": 1},
                    }
                ]
            },
            b"\x02",
            "input 'b': BOOL bytes must be 0 or 1",
        ),
    ],
)
def test_bad_tensors_are_refused_naming_the_input(doc, payload, message):
    if payload is None:
        body, header = orjson.dumps(doc), None
    else:
        body, header = _binary_body(doc, payload)
    with pytest.raises(HttpError) as err:
        decode_request(body, header, LIMITS)
    assert message in str(err.value)
    assert err.value.status_code == 400


def test_element_bound_is_checked_before_anything_is_built():
    doc = {
        "inputs": [
            {
                "name": "big",
                "datatype": "FP32",
                "shape": [100_000, 100_000],
                "parameters": {"binary_data_size": 4},
            }
        ]
    }
    body, header = _binary_body(doc, b"\x00" * 4)
    with pytest.raises(V2TooLarge) as err:
        decode_request(body, header, LIMITS)
    assert err.value.status_code == 413
    assert "input 'big' has 10000000000 elements" in str(err.value)


def test_header_length_must_fit_the_body():
    with pytest.raises(V2Error, match=HEADER_LENGTH):
        decode_request(b"{}", "500", LIMITS)
    with pytest.raises(V2Error, match=HEADER_LENGTH):
        decode_request(b"{}", "two", LIMITS)


def test_classification_strings_follow_triton():
    values = np.array([[1.1, 3.3, 0.5, 2.4], [9.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    out = classification_strings(values, 2, None)
    assert out.shape == (2, 2)
    assert [s.decode() for s in out[0]] == ["3.3:1", "2.4:3"]
    assert [s.decode() for s in out[1]] == ["9:0", "1:3"]
    one_d = classification_strings(np.array([1, 5, 10, 4], dtype=np.int32), 2, None)
    assert [s.decode() for s in one_d] == ["10:2", "5:1"]
    labelled = classification_strings(values[:1], 1, [[(0.75, 1, "tabby")]])
    assert [s.decode() for s in labelled[0]] == ["0.75:1:tabby"]


def test_base64_elements_are_bounded():
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": ["QUFB" * 10],
            }
        ]
    }
    limits = V2Limits(max_elements=10, max_base64_chars=16)
    with pytest.raises(PayloadTooLarge, match="CIDSERVE_MAX_BASE64_CHARS") as err:
        decode_request(orjson.dumps(doc), None, limits)
    assert err.value.status_code == 413
