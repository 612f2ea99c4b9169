"""The inference routes' direct path (services/http/lane.py) answers as FastAPI's routes do."""

from __future__ import annotations

import re

import pytest
from fastapi import APIRouter
from starlette.responses import Response

from services.http.lane import InferenceLane, LaneRoute
from tests.conftest import Gateway


async def _noop(*_: object) -> Response:
    return Response()


def test_a_lane_route_must_have_its_fastapi_twin():
    router = APIRouter()
    router.add_api_route("/a/{x}", _noop, methods=["POST"])
    InferenceLane(_noop, [LaneRoute("/a/{x}", _noop)], [router])
    with pytest.raises(ValueError, match=re.escape("/b/{x}")):
        InferenceLane(_noop, [LaneRoute("/b/{x}", _noop)], [router])


def test_query_errors_name_the_parameter_and_other_methods_go_to_fastapi(
    gateway: Gateway, effnet_id: str
):
    c = gateway.client
    for query, name in (
        ("top_k=abc", "top_k"),
        ("threshold=2", "threshold"),
        ("timeout=0", "timeout"),
    ):
        r = c.post(
            f"/api/models/{effnet_id}/predict?{query}",
            content=b"\xff\xd8",
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code == 422, r.text
        assert r.json()["success"] is False and name in r.json()["message"]
    r = c.get("/api/inference/execute")
    assert r.status_code == 405
    r = c.post(
        f"/v2/models/{effnet_id}/infer", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "error" in r.json()  # the V2 error shape, from the lane
    metrics = c.get("/metrics").text
    assert 'endpoint="/api/models/{model_id}/predict"' in metrics
    assert 'endpoint="/v2/models/{model}/infer"' in metrics
