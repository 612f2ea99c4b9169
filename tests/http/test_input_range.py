"""Numbers a model cannot take or cannot answer for are the caller's error (4xx), never a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from registry.local_store import LocalContentStore
from registry.publish import publish_model
from tests.conftest import Gateway
from tests.models import linear_model


@pytest.fixture(scope="module")
def linear_id(gateway: Gateway, store: LocalContentStore, tmp_path_factory) -> str:
    path = linear_model(Path(tmp_path_factory.mktemp("range")) / "r.onnx", seed=31)
    pub = asyncio.run(publish_model(store, path, name="range-linear"))
    r = gateway.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


def _execute(gateway: Gateway, model_id: str, content: object):
    return gateway.client.post(
        "/api/inference/execute",
        json={"model_id": model_id, "input_data": {"format": "tensor", "content": content}},
    )


def test_values_beyond_the_input_dtype_are_a_400(gateway: Gateway, linear_id: str) -> None:
    r = _execute(gateway, linear_id, [[1e300] * 8])
    assert r.status_code == 400, r.text
    assert "out of the range of float32" in r.json()["message"]


def test_an_input_the_model_overflows_on_is_a_422(gateway: Gateway, linear_id: str) -> None:
    r = _execute(gateway, linear_id, [[3e38] * 8])
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "Input out of range"
    assert "NaN or infinity" in body["message"]
    assert _execute(gateway, linear_id, [[0.5] * 8]).status_code == 200  # the model still serves
