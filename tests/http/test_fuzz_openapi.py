"""Every operation of the OpenAPI document fuzzed with schemathesis against a real server on
loopback: valid and invalid requests built from the document, with the operator's bearer, a
small model loaded. No reply may be a 5xx other than a documented 503/504, every status must
be declared for its operation, and every reply must match the schema, content type and
headers declared for it. Bounded: a fixed seed, a few dozen examples per operation, no
shrinking."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.http.routes import health, inference, metrics, models, v2, v2_repository
from tests.http.test_openapi import BEARER, Served, serve_linear

# Examples per operation (positive and negative together); FUZZ_EXAMPLES=400 for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Every operation the app serves (its OpenAPI document is built from these routers).
OPERATIONS = sorted(
    (method, route.path)
    for module in (models, inference, health, metrics, v2, v2_repository)
    for route in module.router.routes
    for method in getattr(route, "methods", ())
)
# Routes whose requests are pointed at the loaded model for most examples, so the fuzzer gets
# past "model not found" into the body decoders.
MODEL_PATHS = ("/api/models/{model_id}/predict", "/v2/models/{model}")
VERSION = "1.0.0"  # what tests.models' models are published as


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_linear(tmp_path_factory.mktemp("fuzz")) as served:
        yield served


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server: Served) -> Any:
    config = SchemathesisConfig.from_dict(
        {
            "base-url": fuzz_server.url,
            "request-timeout": 30,
            "checks": {
                "not_a_server_error": {"expected-statuses": ["2XX", "3XX", "4XX", "503", "504"]}
            },
        }
    )
    return schemathesis.openapi.from_dict(fuzz_server.doc, config=config)


def _most(case: Any) -> bool:
    """True for three cases in four (a stable choice: the generated case alone decides)."""
    key = repr((case.path_parameters, case.query, case.body)).encode()
    return zlib.crc32(key) % 4 != 0


def _aim(case: Any, model_id: str) -> None:
    """Point most requests of the inference routes at the loaded model."""
    template = case.operation.path
    if template.startswith(MODEL_PATHS) and case.path_parameters and _most(case):
        for name in ("model_id", "model"):
            if name in case.path_parameters:
                case.path_parameters[name] = model_id
        if "version" in case.path_parameters:
            case.path_parameters["version"] = VERSION
    if template == "/api/inference/execute" and isinstance(case.body, dict) and _most(case):
        case.body["model_id"] = model_id


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_replies_as_documented(
    method: str, path: str, fuzz_server: Served, fuzz_schema: Any
) -> None:
    operation = fuzz_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=cases)
    def fuzz(case: Any) -> None:
        _aim(case, fuzz_server.model_id)
        case.call_and_validate(headers=BEARER, checks=CHECKS, timeout=30)

    fuzz()
