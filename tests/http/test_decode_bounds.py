"""Every decoder compares what a request declares with the bytes it carries, and with the
limits, before it allocates anything: a small body declaring a huge tensor costs nothing."""

from __future__ import annotations

import base64
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from preprocessing import InputTooLarge, PreprocessingError
from services.http.codecs import CodecLimits, decode_input
from services.http.errors import BadRequest, HttpError, PayloadTooLarge
from services.http.raw_tensor import parse_raw_tensor
from services.http.upload import MAX_PARTS, UploadLimits, decode_upload, multipart_file
from services.http.v2_codec import HEADER_LENGTH, V2Error, V2Limits, V2TooLarge, decode_request

LIMITS = V2Limits(max_elements=50_000_000)
HUGE = 48_000_000  # under the element limit: only the data present can refuse it
PEAK_BOUND = 20 << 20


def peak_of(fn: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """What ``fn`` raised (None) and the peak of Python/numpy memory it allocated."""
    tracemalloc.start()
    try:
        fn()
        raised: BaseException | None = None
    except Exception as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak


def _strings(n: int) -> list[str]:
    """``n`` JSON strings of 1000 characters."""
    return ["x" * 1000] * n


def _v2(inputs: list[dict[str, Any]], binary: bytes = b"") -> tuple[bytes, str | None]:
    head = orjson.dumps({"inputs": inputs})
    return head + binary, (str(len(head)) if binary else None)


@pytest.mark.parametrize(
    "inputs, binary",
    [
        # JSON BYTES: 70 strings of 1000 characters for a declared 48 million.
        ([{"name": "s", "datatype": "BYTES", "shape": [HUGE], "data": _strings(70)}], b""),
        # JSON numbers.
        ([{"name": "x", "datatype": "FP32", "shape": [HUGE], "data": [0.5] * 17_000}], b""),
        # Binary BYTES: 70 KB of elements for a declared 48 million.
        (
            [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [HUGE],
                    "parameters": {"binary_data_size": 70 * 1004},
                }
            ],
            (struct.pack("<I", 1000) + b"x" * 1000) * 70,
        ),
        # Binary FP32.
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [HUGE],
                    "parameters": {"binary_data_size": 70_000},
                }
            ],
            b"\0" * 70_000,
        ),
    ],
    ids=["json-bytes", "json-fp32", "binary-bytes", "binary-fp32"],
)
def test_v2_small_body_declaring_a_huge_shape_is_400_without_allocating(inputs, binary):
    body, header = _v2(inputs, binary)
    assert 60_000 < len(body) < 80_000
    raised, peak = peak_of(lambda: decode_request(body, header, LIMITS))
    assert isinstance(raised, V2Error) and not isinstance(raised, V2TooLarge), raised
    assert raised.status_code == 400
    name = inputs[0]["name"]
    assert f"input {name!r}" in raised.message and str(HUGE) in raised.message, raised.message
    # Both numbers: what the declaration needs and what is there.
    assert any(str(n) in raised.message for n in (70, 17_000, 70_000, 70 * 1004)), raised.message
    assert peak < PEAK_BOUND, f"decoding allocated {peak >> 20} MiB"


def test_v2_shape_over_the_element_limit_is_413_before_anything():
    body, header = _v2([{"name": "x", "datatype": "FP64", "shape": [10_000, 10_000], "data": []}])
    raised, peak = peak_of(lambda: decode_request(body, header, LIMITS))
    assert isinstance(raised, V2TooLarge) and raised.status_code == 413
    assert "100000000" in raised.message and "50000000" in raised.message
    assert peak < 1 << 20


def test_v2_well_formed_requests_still_decode():
    body, header = _v2(
        [
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]},
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
            {"name": "b", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}},
        ],
        struct.pack("<I", 2) + b"hi",
    )
    req = decode_request(body, header, LIMITS)
    s, x, b = (t.array for t in req.inputs)
    assert s.tolist() == [b"ab", b"c"] and b.tolist() == [b"hi"]
    np.testing.assert_array_equal(x, np.array([[1, 2], [3, 4]], np.float32))
    with pytest.raises(V2Error, match=r"data has 3 values; its shape needs 2"):
        decode_request(
            *_v2([{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "b", "c"]}]),
            LIMITS,
        )
    with pytest.raises(V2Error, match=r"not a regular array"):
        decode_request(
            *_v2([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}]),
            LIMITS,
        )
    assert HEADER_LENGTH


def test_base64_tensor_length_is_checked_against_its_shape_before_decoding():
    limits = CodecLimits(max_base64_chars=28 << 20, max_tensor_elements=50_000_000)
    data = base64.b64encode(b"\0" * 30_000).decode()
    content = {"data": data, "dtype": "float32", "shape": [HUGE]}
    raised, peak = peak_of(lambda: decode_input("tensor", content, limits))
    assert isinstance(raised, BadRequest), raised
    assert "30000" in raised.message and str(HUGE * 4) in raised.message, raised.message
    assert peak < 1 << 20  # not even the 30 KB were decoded
    too_many = {"data": data, "dtype": "float32", "shape": [60_000_000]}
    with pytest.raises(PayloadTooLarge, match="60000000"):
        decode_input("tensor", too_many, limits)
    ok = decode_input("tensor", {"data": data, "dtype": "float32", "shape": [7500]}, limits)
    assert ok.array.shape == (7500,)  # type: ignore[union-attr]
    with pytest.raises(BadRequest, match="base64"):
        decode_input("tensor", {"data": data[:-1], "dtype": "float32", "shape": [7500]}, limits)


def test_raw_tensor_body_is_checked_against_its_headers_before_the_view():
    body = b"\0" * 70_000
    raised, peak = peak_of(
        lambda: parse_raw_tensor(body, "float32", str(HUGE), None, max_elements=50_000_000)
    )
    assert isinstance(raised, PreprocessingError) and not isinstance(raised, InputTooLarge)
    assert "70000" in str(raised) and str(HUGE * 4) in str(raised)
    assert peak < 1 << 20
    with pytest.raises(InputTooLarge):
        parse_raw_tensor(body, "float64", "10000,10000", None, max_elements=50_000_000)


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_is_parsed_off_the_request_with_bounded_parts():
    ctype = "multipart/form-data; boundary=b0und"
    limits = UploadLimits(max_body_bytes=1 << 20, max_tensor_elements=1000)
    body = _multipart([("note", None, b"hello"), ("file", "a.jpg", b"\xff\xd8 image bytes")])
    payload = decode_upload(body, {"content-type": ctype}, limits)
    assert payload.data == b"\xff\xd8 image bytes"  # type: ignore[union-attr]
    with pytest.raises(BadRequest, match="'file' field"):
        multipart_file(_multipart([("other", "a.jpg", b"x")]), ctype, 1 << 20)
    with pytest.raises(BadRequest, match="'file' field"):
        multipart_file(_multipart([("file", None, b"not a file")]), ctype, 1 << 20)
    many = _multipart([(f"f{i}", None, b"x") for i in range(MAX_PARTS + 1)])
    with pytest.raises(BadRequest, match="parts"):
        multipart_file(many, ctype, 1 << 20)
    with pytest.raises(PayloadTooLarge):
        multipart_file(_multipart([("file", "a.jpg", b"x" * 2000)]), ctype, 1000)
    with pytest.raises(BadRequest, match="boundary"):
        multipart_file(body, "multipart/form-data", 1 << 20)
    with pytest.raises(BadRequest, match="malformed"):
        multipart_file(b"--b0und\r\nno headers end", ctype, 1 << 20)
    with pytest.raises(HttpError) as err:
        decode_upload(b"x", {"content-type": "text/plain"}, limits)
    assert err.value.status_code == 415
