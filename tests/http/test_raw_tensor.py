"""Raw tensor uploads (``application/x-cidserve-tensor``) through a running gateway."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Gateway

CT = "application/x-cidserve-tensor"


def _post(gateway: Gateway, model_id: str, body: bytes, **headers: str):
    hdrs = {"Content-Type": CT, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return gateway.client.post(f"/api/models/{model_id}/predict", content=body, headers=hdrs)


def test_raw_float32_tensor_gives_the_models_classification(
    gateway: Gateway, effnet_id: str, efficientnet_onnx: Path
) -> None:
    x = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32)
    r = _post(
        gateway, effnet_id, x.tobytes(), X_Tensor_Dtype="float32", X_Tensor_Shape="1,3,224,224"
    )
    assert r.status_code == 200, r.text
    got = [p["class_id"] for p in r.json()["predictions"]]
    logits = ort.InferenceSession(str(efficientnet_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0][0]
    assert got == [int(i) for i in np.argsort(-logits)[: len(got)]]
    # The batch dimension may be left out, and the input named.
    r2 = _post(
        gateway,
        effnet_id,
        x.tobytes(),
        X_Tensor_Dtype="float32",
        X_Tensor_Shape="3,224,224",
        X_Tensor_Input="input",
    )
    assert r2.status_code == 200, r2.text
    assert [p["class_id"] for p in r2.json()["predictions"]] == got


@pytest.mark.parametrize(
    ("headers", "body_len", "status", "needle"),
    [
        ({"X_Tensor_Shape": "1,3,224,224"}, 602112, 400, "X-Tensor-Dtype"),
        ({"X_Tensor_Dtype": "complex64", "X_Tensor_Shape": "1"}, 8, 400, "not supported"),
        ({"X_Tensor_Dtype": "float32"}, 4, 400, "X-Tensor-Shape"),
        ({"X_Tensor_Dtype": "float32", "X_Tensor_Shape": "1,-3"}, 4, 400, "X-Tensor-Shape"),
        ({"X_Tensor_Dtype": "float32", "X_Tensor_Shape": "1,3,224,224"}, 100, 400, "bytes"),
        ({"X_Tensor_Dtype": "uint8", "X_Tensor_Shape": "100000,100000"}, 16, 413, "limit"),
        ({"X_Tensor_Dtype": "float32", "X_Tensor_Shape": "1,3,10,10"}, 1200, 400, "dimension"),
    ],
)
def test_bad_raw_tensors_are_refused_with_a_reason(
    gateway: Gateway,
    effnet_id: str,
    headers: dict[str, str],
    body_len: int,
    status: int,
    needle: str,
) -> None:
    r = _post(gateway, effnet_id, b"\x00" * body_len, **headers)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and needle in body["message"]
