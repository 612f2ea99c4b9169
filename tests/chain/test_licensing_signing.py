"""Signed requests without a chain: the canonical string, the authenticator's outcomes, the
settings of licensing, and the contract interface the service relies on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from services.chain import abi
from services.chain.auth import SignatureAuthenticator
from services.chain.client import LicenseeAuth, sign_url
from services.chain.signing import (
    canonical_string,
    covered_headers,
    recover_signer,
    sign_request,
)
from services.errors import DependencyUnavailable, SignatureRejected
from services.http.errors import describe
from services.settings import SettingsError, load_settings
from services.state.kv import KVUnavailable, MemoryKV
from services.state.redis_kv import RedisKV
from tests.harness import free_port
from tests.redis_support import REDIS_URL, delete_prefix, require_redis, unique_prefix

ALICE = Account.create()
MALLORY = Account.create()
TARGET = "/api/models/m-1/predict?top_k=3"
HOST = "gateway.example:8000"
SENT = {"Content-Type": "image/jpeg"}


@dataclass
class Req:
    """A request as the authenticator sees it (RequestView)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = field(default=b"")


def req(
    headers: dict[str, str],
    *,
    method="POST",
    path=TARGET,
    body=b"img",
    host: str | None = HOST,
    sent: dict[str, str] | None = None,
) -> Req:
    """The request a server receives: the signature headers plus the request's own."""
    own = dict(SENT if sent is None else sent)
    if host is not None:
        own["Host"] = host
    return Req(method, path, {k.lower(): v for k, v in (own | headers).items()}, body)


def signed(key=None, body: bytes = b"img", **kw) -> dict[str, str]:
    """Signature headers for the request :func:`req` builds by default."""
    kw.setdefault("host", HOST)
    kw.setdefault("headers", SENT)
    return sign_request(ALICE.key if key is None else key, "POST", TARGET, body, **kw)


def authenticate(auth: SignatureAuthenticator, request: Req):
    return asyncio.run(auth.authenticate(request))


def rejection(auth: SignatureAuthenticator, request: Req) -> SignatureRejected:
    with pytest.raises(SignatureRejected) as info:
        authenticate(auth, request)
    assert describe(info.value).status == 401
    return info.value


def reason(auth: SignatureAuthenticator, request: Req) -> str:
    return str(rejection(auth, request).extra["reason"])


def test_canonical_string_is_the_documented_lines():
    headers = {
        "Content-Type": " Application/X-Cidserve-Tensor ",
        "X-Tensor-Shape": " 1,8 ",
        "X-Tensor-Dtype": "float32",
        "X-Tensor-Layout": "nchw",
        "Accept": "application/json",
    }
    text = canonical_string(
        "post",
        "/a?b=1",
        host="Gateway.Example:8000",
        content_type=headers["Content-Type"],
        covered=covered_headers(headers),
        body_hash=hashlib.sha256(b"x").hexdigest(),
        timestamp=1700000000,
        nonce="n0nce-123",
        signer=ALICE.address,
    )
    assert text == "\n".join(
        [
            "cidserve-request-v2",
            "POST",
            "/a?b=1",
            "gateway.example:8000",
            "application/x-cidserve-tensor",
            "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
            "1700000000",
            "n0nce-123",
            ALICE.address.lower(),
            "inference-header-content-length:",
            "x-tensor-dtype:float32",
            "x-tensor-input:",
            "x-tensor-layout:nchw",
            "x-tensor-shape:1,8",
        ]
    )
    with pytest.raises(ValueError):
        canonical_string(
            "GET",
            "/a\nX-Injected: 1",
            host="h",
            content_type=None,
            covered=[],
            body_hash="",
            timestamp=1,
            nonce="n0nce-123",
            signer=ALICE.address,
        )
    for sent in ({"X-Tensor-Shape": "1\nX-Injected: 1"}, {"X-Tensor-Shape": "1\r2"}):
        with pytest.raises(ValueError, match="line break"):
            sign_request(ALICE.key, "POST", TARGET, host=HOST, headers=sent)
    with pytest.raises(ValueError, match="line break"):
        sign_request(ALICE.key, "POST", TARGET, host="a\nb")


def test_signature_is_plain_personal_sign_over_the_canonical_string():
    headers = signed(timestamp=1700000000, nonce="abcdefgh")
    text = canonical_string(
        "POST",
        TARGET,
        host=HOST,
        content_type="image/jpeg",
        covered=covered_headers({}),
        body_hash=hashlib.sha256(b"img").hexdigest(),
        timestamp=1700000000,
        nonce="abcdefgh",
        signer=ALICE.address,
    )
    signature = bytes.fromhex(headers["X-Cidserve-Signature"][2:])
    assert recover_signer(text, signature) == ALICE.address
    assert headers["X-Cidserve-Address"] == ALICE.address
    assert headers["X-Cidserve-Version"] == "cidserve-request-v2"


def test_valid_signature_identifies_the_caller_once():
    auth = SignatureAuthenticator(MemoryKV(), skew_s=60)
    headers = signed()
    caller = authenticate(auth, req(headers))
    assert caller is not None and caller.address == ALICE.address
    assert reason(auth, req(headers)) == "replay"


def test_no_signature_headers_is_anonymous():
    auth = SignatureAuthenticator(MemoryKV(), skew_s=60)
    assert authenticate(auth, req({"content-type": "image/jpeg"})) is None


@pytest.mark.parametrize(
    "header",
    ["X-Cidserve-Address", "X-Cidserve-Timestamp", "X-Cidserve-Nonce", "X-Cidserve-Signature"],
)
def test_any_missing_header_is_401(header):
    headers = signed()
    del headers[header]
    assert reason(SignatureAuthenticator(MemoryKV()), req(headers)) == "missing"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Cidserve-Address", "0x1234"),
        ("X-Cidserve-Timestamp", "yesterday"),
        ("X-Cidserve-Nonce", "short"),
        ("X-Cidserve-Nonce", "has spaces in it"),
        ("X-Cidserve-Signature", "0x" + "zz" * 65),
        ("X-Cidserve-Signature", "0x" + "ab" * 64),
    ],
)
def test_malformed_header_is_401(header, value):
    headers = signed()
    headers[header] = value
    assert reason(SignatureAuthenticator(MemoryKV()), req(headers)) == "malformed"


def test_signature_binds_address_method_target_and_body():
    auth = SignatureAuthenticator(MemoryKV())
    # Mallory signs but claims to be Alice.
    forged = signed(MALLORY.key)
    forged["X-Cidserve-Address"] = ALICE.address
    assert reason(auth, req(forged)) == "forged"
    # Alice's signature, another body / query / path / method.
    for changed in (
        {"body": b"other image"},
        {"path": "/api/models/m-1/predict?top_k=1000"},
        {"path": "/api/models/m-2/predict?top_k=3"},
        {"method": "PUT"},
    ):
        assert reason(auth, req(signed(), **changed)) == "forged", changed
    # A signature of garbage that recovers to no key at all.
    headers = signed()
    headers["X-Cidserve-Signature"] = "0x" + "00" * 64 + "1b"
    assert reason(auth, req(headers)) == "forged"


TENSOR = {
    "Content-Type": "application/x-cidserve-tensor",
    "X-Tensor-Dtype": "float32",
    "X-Tensor-Shape": "1,8",
}


@pytest.mark.parametrize(
    ("host", "sent"),
    [
        pytest.param("other.example:8000", TENSOR, id="host"),
        pytest.param("gateway.example:8001", TENSOR, id="host-port"),
        pytest.param(None, TENSOR, id="host-absent"),
        pytest.param(HOST, TENSOR | {"Content-Type": "image/jpeg"}, id="content-type"),
        pytest.param(HOST, {k: v for k, v in TENSOR.items() if k != "Content-Type"}, id="no-ct"),
        pytest.param(HOST, TENSOR | {"X-Tensor-Dtype": "uint8"}, id="dtype"),
        pytest.param(HOST, TENSOR | {"X-Tensor-Shape": "8"}, id="shape"),
        pytest.param(HOST, TENSOR | {"X-Tensor-Shape": "2,4"}, id="shape-2"),
        pytest.param(HOST, TENSOR | {"X-Tensor-Input": "x"}, id="input-added"),
        pytest.param(HOST, TENSOR | {"X-Tensor-Order": "fortran"}, id="other-x-tensor"),
        pytest.param(HOST, TENSOR | {"Inference-Header-Content-Length": "12"}, id="ihcl"),
        pytest.param(HOST, {"Content-Type": TENSOR["Content-Type"]}, id="tensor-headers-gone"),
    ],
)
def test_every_covered_header_and_the_host_are_bound(host, sent):
    auth = SignatureAuthenticator(MemoryKV())
    headers = signed(headers=TENSOR)
    rejected = rejection(auth, req(headers, host=host, sent=sent))
    assert rejected.extra["reason"] == "forged"
    assert "Host, Content-Type, X-Tensor-*" in str(rejected)
    # Untampered, the same signature passes (the nonce was not used by the refusals).
    assert authenticate(auth, req(headers, sent=TENSOR)) is not None


def test_normalised_parts_and_uncovered_headers_do_not_break_a_signature():
    auth = SignatureAuthenticator(MemoryKV())
    headers = signed(headers={"Content-Type": "Image/JPEG", "X-Tensor-Shape": "1,8"})
    sent = {
        "content-type": "  image/jpeg ",
        "x-tensor-shape": "1,8 ",
        "accept": "*/*",
        "user-agent": "curl/8",
        "content-length": "3",
    }
    assert authenticate(auth, req(headers, host="GATEWAY.example:8000", sent=sent)) is not None


def test_version_1_signatures_are_refused_naming_version_2():
    auth = SignatureAuthenticator(MemoryKV())
    ts, nonce = int(time.time()), "abcdefgh1"
    v1 = "\n".join(
        ["cidserve-request-v1", "POST", TARGET, hashlib.sha256(b"img").hexdigest(), str(ts), nonce]
    )
    signature = ALICE.sign_message(encode_defunct(text=v1)).signature
    old = {
        "X-Cidserve-Address": ALICE.address,
        "X-Cidserve-Timestamp": str(ts),
        "X-Cidserve-Nonce": nonce,
        "X-Cidserve-Signature": "0x" + bytes(signature).hex(),
    }
    rejected = rejection(auth, req(old))
    assert rejected.extra["reason"] == "version"
    assert "cidserve-request-v2" in str(rejected) and "X-Cidserve-Version" in str(rejected)
    for version in ("cidserve-request-v1", "cidserve-request-v3"):
        headers = signed() | {"X-Cidserve-Version": version}
        rejected = rejection(auth, req(headers))
        assert rejected.extra["reason"] == "version"
        assert "cidserve-request-v2" in str(rejected)


def test_url_helper_and_httpx_auth_sign_what_httpx_sends():
    auth = SignatureAuthenticator(MemoryKV())
    url = "http://Gateway.Example:8000/api/models/m%201/predict?top_k=3&q=a%20b"
    headers = sign_url(ALICE.key, "post", url, TENSOR, b"\x00" * 32)
    request = req(
        headers,
        path="/api/models/m%201/predict?top_k=3&q=a%20b",
        host="gateway.example:8000",
        sent=TENSOR,
        body=b"\x00" * 32,
    )
    assert authenticate(auth, request) is not None
    # The scheme's default port is not part of the Host header httpx (and curl) send.
    headers = sign_url(ALICE.key, "GET", "https://gateway.example:443/v2/health/ready")
    request = req(
        headers, method="GET", path="/v2/health/ready", host="gateway.example", sent={}, body=b""
    )
    assert authenticate(auth, request) is not None
    with pytest.raises(ValueError, match="absolute"):
        sign_url(ALICE.key, "GET", "/v2/health/ready")

    # The httpx auth flow signs the request after httpx has added Host and Content-Type.
    built = httpx.Request("POST", "http://127.0.0.1:8123/api/inference/execute", json={"a": 1})
    flow = LicenseeAuth(ALICE.key).auth_flow(built)
    sent = next(flow)
    view = Req(
        "POST",
        "/api/inference/execute",
        {k.lower(): v for k, v in sent.headers.items()},
        sent.content,
    )
    assert sent.headers["host"] == "127.0.0.1:8123"
    assert authenticate(auth, view) is not None


def test_timestamp_outside_the_skew_is_401_both_ways():
    auth = SignatureAuthenticator(MemoryKV(), skew_s=30)
    now = int(time.time())
    for ts in (now - 120, now + 120):
        headers = signed(timestamp=ts)
        assert reason(auth, req(headers)) == "stale"
    inside = signed(timestamp=now - 20)
    assert authenticate(auth, req(inside)) is not None


def test_forged_requests_do_not_burn_nonces():
    auth = SignatureAuthenticator(MemoryKV())
    forged = signed(MALLORY.key, nonce="shared-nonce-1")
    forged["X-Cidserve-Address"] = ALICE.address
    reason(auth, req(forged))
    genuine = signed(nonce="shared-nonce-1")
    assert authenticate(auth, req(genuine)) is not None


def test_nonce_store_down_fails_closed_with_503():
    # A real Redis client pointed at a port where nothing listens.
    kv = RedisKV(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=200, backoff_ms=50)
    auth = SignatureAuthenticator(kv)
    headers = signed()
    with pytest.raises(DependencyUnavailable) as info:
        authenticate(auth, req(headers))
    reply = describe(info.value)
    assert reply.status == 503
    assert "Retry-After" in reply.headers


def test_a_redis_slower_than_the_cache_bound_still_records_the_nonce(tmp_path):
    """Redis stalls for 150 ms: a cache call (5 ms bound) gives up, but the replay store, which
    fails closed, waits out the stall and the licensee's signed request is accepted."""
    from tests.redis_support import RedisServer

    async def run(server: RedisServer) -> tuple[str, object]:
        kv = RedisKV(server.url, prefix="t:", timeout_ms=5, backoff_ms=50)
        try:
            assert await kv.connect()
            server.pause()
            threading.Timer(0.15, server.resume).start()
            try:
                await kv.get("anything")
                cache = "answered"
            except KVUnavailable as exc:
                cache = str(exc)
            auth = SignatureAuthenticator(kv, skew_s=60, store_timeout_s=2.0)
            return cache, await auth.authenticate(req(signed()))
        finally:
            await kv.aclose()

    with RedisServer(tmp_path) as server:
        cache, caller = asyncio.run(run(server))
    assert "no answer within 5 ms" in cache
    assert caller is not None and caller.address == ALICE.address  # type: ignore[attr-defined]


def test_replay_to_another_replica_is_refused_through_shared_redis():
    require_redis()
    prefix = unique_prefix("nonce")

    async def run() -> tuple[object, str]:
        first = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=2000)
        second = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=2000)
        try:
            headers = signed()
            ok = await SignatureAuthenticator(first, skew_s=30).authenticate(req(headers))
            try:
                await SignatureAuthenticator(second, skew_s=30).authenticate(req(headers))
            except SignatureRejected as exc:
                return ok, str(exc.extra["reason"])
            return ok, "accepted"
        finally:
            await first.aclose()
            await second.aclose()

    try:
        caller, outcome = asyncio.run(run())
    finally:
        delete_prefix(REDIS_URL, prefix)
    assert caller is not None
    assert outcome == "replay"


def test_contract_artifact_has_every_function_the_service_calls():
    artifact = abi.load_artifact()
    assert abi.check_artifact(artifact) == []
    revert = (
        abi.selector("NotTokenOwner(uint256,address)")
        + bytes(31)
        + b"\x07"
        + bytes(12)
        + b"\x11" * 20
    )
    assert artifact.explain_revert(revert).startswith("NotTokenOwner(7, 0x1111")


def test_licensing_settings_are_validated_and_secrets_never_echoed(monkeypatch):
    monkeypatch.setenv("AVALANCHE_RPC_URL", "http://127.0.0.1:9650/ext/bc/C/rpc")
    monkeypatch.setenv("CIDSERVE_LICENSE_CONTRACT", "0x5fbdb2315678afecb367f032d93f642f64180aa3")
    settings = load_settings()
    assert settings.licensing_enabled
    assert settings.chain_rpc_url == "http://127.0.0.1:9650/ext/bc/C/rpc"

    monkeypatch.setenv("CIDSERVE_LICENSE_CONTRACT", "0x5FBdb2315678afecb367f032d93F642f64180aa3")
    with pytest.raises(SettingsError, match="CIDSERVE_LICENSE_CONTRACT"):
        load_settings()  # mixed case with a wrong EIP-55 checksum
    monkeypatch.setenv("CIDSERVE_LICENSE_CONTRACT", "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    monkeypatch.setenv("AVALANCHE_RPC_URL", "ftp://example")
    with pytest.raises(SettingsError, match="AVALANCHE_RPC_URL"):
        load_settings()
    monkeypatch.delenv("AVALANCHE_RPC_URL")
    with pytest.raises(SettingsError, match="needs CIDSERVE_CHAIN_RPC_URL"):
        load_settings()

    monkeypatch.delenv("CIDSERVE_LICENSE_CONTRACT")
    secret = "0x" + "ab" * 31 + "zz"
    monkeypatch.setenv("CIDSERVE_PRIVATE_KEY", secret)
    with pytest.raises(SettingsError, match="CIDSERVE_PRIVATE_KEY") as info:
        load_settings()
    assert "ab" * 31 not in str(info.value)
    monkeypatch.setenv("CIDSERVE_PRIVATE_KEY", "0x" + "ab" * 32)
    settings = load_settings()
    assert "ab" * 32 not in repr(settings)
    assert not settings.licensing_enabled


def test_cli_key_comes_from_a_keystore_file(tmp_path, monkeypatch):
    from services.chain.keys import KeyConfigError, load_account

    keystore = tmp_path / "key.json"
    keystore.write_text(
        json.dumps(Account.encrypt(ALICE.key, "correct horse", kdf="pbkdf2", iterations=1000))
    )
    monkeypatch.setenv("CIDSERVE_KEYSTORE", str(keystore))
    monkeypatch.setenv("CIDSERVE_KEYSTORE_PASSWORD", "correct horse")
    assert load_account(load_settings()).address == ALICE.address

    monkeypatch.setenv("CIDSERVE_KEYSTORE_PASSWORD", "battery staple")
    with pytest.raises(KeyConfigError, match="CIDSERVE_KEYSTORE_PASSWORD") as info:
        load_account(load_settings())
    assert "battery" not in str(info.value)

    monkeypatch.delenv("CIDSERVE_KEYSTORE_PASSWORD")
    with pytest.raises(KeyConfigError, match="set CIDSERVE_KEYSTORE_PASSWORD"):
        load_account(load_settings())
    monkeypatch.setenv("CIDSERVE_KEYSTORE", str(tmp_path / "missing.json"))
    with pytest.raises(SettingsError, match="CIDSERVE_KEYSTORE"):
        load_settings()
