"""The client's signatures, checked by the server's own ``SignatureAuthenticator`` over real
loopback requests: every request shape the client sends (JSON, raw images with a query,
tensor headers, percent-encoded paths, the V2 binary header) verifies, and a request changed
after signing does not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from cidserve_client import SignedRequestAuth
from cidserve_client import signing as client_signing
from eth_account import Account
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.chain import signing as server_signing
from services.chain.auth import SignatureAuthenticator
from services.errors import SignatureRejected
from services.http.deps import RequestView
from services.state.kv import MemoryKV
from tests.harness import ServerThread

KEY = "0x" + "11" * 32
ADDRESS = Account.from_key(KEY).address


def _verifier_app() -> FastAPI:
    """Any method, any path: the caller the server's authenticator proves, or its 401 text."""
    auth = SignatureAuthenticator(MemoryKV())
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def verify(request: Request) -> JSONResponse:
        view = RequestView(request, await request.body())
        try:
            caller = await auth.authenticate(view)
        except SignatureRejected as exc:
            return JSONResponse({"error": str(exc)}, status_code=401)
        return JSONResponse({"address": None if caller is None else caller.address})

    return app


@pytest.fixture(scope="module")
def verifier() -> Iterator[str]:
    with ServerThread(_verifier_app()) as srv:
        yield srv.url


REQUESTS = [
    ("GET", "/api/models", {}, b""),
    ("POST", "/api/inference/execute", {"content-type": "application/json"}, b'{"a":1}'),
    (
        "POST",
        "/api/models/m-1/predict?top_k=3&threshold=0.5",
        {"content-type": "image/jpeg"},
        b"\xff\xd8\xff" + bytes(range(256)) * 40,
    ),
    ("POST", "/api/models/a%2Fb%20c/predict", {"content-type": "application/octet-stream"}, b"x"),
    (
        "POST",
        "/api/models/t/predict",
        {
            "content-type": "application/x-cidserve-tensor",
            "X-Tensor-Dtype": "float32",
            "X-Tensor-Shape": "1,8",
            "X-Tensor-Extra": "yes",
        },
        bytes(32),
    ),
    (
        "POST",
        "/v2/models/m/infer",
        {
            "content-type": "application/octet-stream",
            "Inference-Header-Content-Length": "2",
        },
        b"{}" + bytes(16),
    ),
    ("DELETE", "/api/models/m-1", {}, b""),
]


@pytest.mark.parametrize(
    ("method", "target", "headers", "body"), REQUESTS, ids=[f"{m} {t}" for m, t, _, _ in REQUESTS]
)
def test_the_servers_authenticator_proves_the_clients_signature(
    verifier, method, target, headers, body
):
    with httpx.Client(base_url=verifier, auth=SignedRequestAuth(KEY), timeout=10) as http:
        r = http.request(method, target, headers=headers, content=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"address": ADDRESS}


def test_the_async_flow_signs_large_bodies_in_a_thread_and_they_verify(verifier):
    body = bytes(range(256)) * (client_signing.THREAD_SIGN_BYTES // 256 + 7)

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(
            base_url=verifier, auth=SignedRequestAuth(KEY), timeout=10
        ) as http:
            small = await http.post("/small", content=b"x", headers={"content-type": "text/x"})
            assert small.json() == {"address": ADDRESS}
            return await http.post("/big", content=body, headers={"content-type": "image/png"})

    r = asyncio.run(send())
    assert r.json() == {"address": ADDRESS}


def test_a_request_changed_after_signing_is_refused(verifier):
    auth = SignedRequestAuth(KEY)
    with httpx.Client(base_url=verifier, timeout=10) as http:
        request = http.build_request(
            "POST",
            "/api/models/m/predict?top_k=3",
            content=b"img",
            headers={"content-type": "image/jpeg"},
        )
        signed = auth.headers_for(request)
        for change in (
            {"url": "/api/models/m/predict?top_k=4"},
            {"content": b"img2"},
            {"headers": {"content-type": "image/png"}},
        ):
            kwargs = {
                "url": "/api/models/m/predict?top_k=3",
                "content": b"img",
                "headers": {"content-type": "image/jpeg"},
                **change,
            }
            kwargs["headers"] = {**kwargs["headers"], **signed}
            r = http.post(**kwargs)
            assert r.status_code == 401, (change, r.text)
            assert "does not match" in r.json()["error"]


def test_canonical_string_is_the_servers():
    parts = {
        "host": " 127.0.0.1:8000 ",
        "content_type": " Image/JPEG ",
        "covered": server_signing.covered_headers({"X-Tensor-Dtype": " float32 ", "a": "b"}),
        "body_hash": server_signing.body_sha256(b"body"),
        "timestamp": 1_700_000_000,
        "nonce": "abcdef0123",
        "signer": ADDRESS,
    }
    assert (
        client_signing.covered_headers({"X-Tensor-Dtype": " float32 ", "a": "b"})
        == parts["covered"]
    )
    assert client_signing.canonical_string("post", "/p?q=1", **parts) == (
        server_signing.canonical_string("post", "/p?q=1", **parts)
    )
    for bad in ("/p\nx", "/p\rx"):
        with pytest.raises(ValueError):
            client_signing.canonical_string("POST", bad, **parts)


def test_a_bad_key_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as info:
        SignedRequestAuth("0xnot-a-key-deadbeef")
    assert "deadbeef" not in str(info.value)
    assert repr(SignedRequestAuth(KEY)) == f"SignedRequestAuth(address={ADDRESS})"
