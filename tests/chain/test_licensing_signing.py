"""Signed requests without a chain: the canonical string, the authenticator's outcomes, the
settings of licensing, and the contract interface the service relies on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field

import pytest
from eth_account import Account

from services.chain import abi
from services.chain.auth import SignatureAuthenticator
from services.chain.signing import canonical_string, recover_signer, sign_request
from services.errors import DependencyUnavailable, SignatureRejected
from services.http.errors import describe
from services.settings import SettingsError, load_settings
from services.state.kv import MemoryKV
from services.state.redis_kv import RedisKV
from tests.harness import free_port
from tests.redis_support import REDIS_URL, delete_prefix, require_redis, unique_prefix

ALICE = Account.create()
MALLORY = Account.create()
TARGET = "/api/models/m-1/predict?top_k=3"


@dataclass
class Req:
    """A request as the authenticator sees it (RequestView)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = field(default=b"")


def req(headers: dict[str, str], *, method="POST", path=TARGET, body=b"img") -> Req:
    return Req(method, path, {k.lower(): v for k, v in headers.items()}, body)


def authenticate(auth: SignatureAuthenticator, request: Req):
    return asyncio.run(auth.authenticate(request))


def reason(auth: SignatureAuthenticator, request: Req) -> str:
    with pytest.raises(SignatureRejected) as info:
        authenticate(auth, request)
    assert describe(info.value).status == 401
    return str(info.value.extra["reason"])


def test_canonical_string_is_the_documented_six_lines():
    text = canonical_string(
        "post", "/a?b=1", hashlib.sha256(b"x").hexdigest(), 1700000000, "n0nce-123"
    )
    assert text == (
        "cidserve-request-v1\nPOST\n/a?b=1\n"
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\n1700000000\nn0nce-123"
    )
    with pytest.raises(ValueError):
        canonical_string("GET", "/a\nX-Injected: 1", "", 1, "n0nce-123")


def test_signature_is_plain_personal_sign_over_the_canonical_string():
    headers = sign_request(
        ALICE.key, "POST", TARGET, b"img", timestamp=1700000000, nonce="abcdefgh"
    )
    text = canonical_string(
        "POST", TARGET, hashlib.sha256(b"img").hexdigest(), 1700000000, "abcdefgh"
    )
    signature = bytes.fromhex(headers["X-Cidserve-Signature"][2:])
    assert recover_signer(text, signature) == ALICE.address
    assert headers["X-Cidserve-Address"] == ALICE.address


def test_valid_signature_identifies_the_caller_once():
    auth = SignatureAuthenticator(MemoryKV(), skew_s=60)
    headers = sign_request(ALICE.key, "POST", TARGET, b"img")
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
    headers = sign_request(ALICE.key, "POST", TARGET, b"img")
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
    headers = sign_request(ALICE.key, "POST", TARGET, b"img")
    headers[header] = value
    assert reason(SignatureAuthenticator(MemoryKV()), req(headers)) == "malformed"


def test_signature_binds_address_method_target_and_body():
    auth = SignatureAuthenticator(MemoryKV())
    # Mallory signs but claims to be Alice.
    forged = sign_request(MALLORY.key, "POST", TARGET, b"img")
    forged["X-Cidserve-Address"] = ALICE.address
    assert reason(auth, req(forged)) == "forged"
    # Alice's signature, another body / query / path / method.
    for changed in (
        {"body": b"other image"},
        {"path": "/api/models/m-1/predict?top_k=1000"},
        {"path": "/api/models/m-2/predict?top_k=3"},
        {"method": "PUT"},
    ):
        headers = sign_request(ALICE.key, "POST", TARGET, b"img")
        assert reason(auth, req(headers, **changed)) == "forged", changed
    # A signature of garbage that recovers to no key at all.
    headers = sign_request(ALICE.key, "POST", TARGET, b"img")
    headers["X-Cidserve-Signature"] = "0x" + "00" * 64 + "1b"
    assert reason(auth, req(headers)) == "forged"


def test_timestamp_outside_the_skew_is_401_both_ways():
    auth = SignatureAuthenticator(MemoryKV(), skew_s=30)
    now = int(time.time())
    for ts in (now - 120, now + 120):
        headers = sign_request(ALICE.key, "POST", TARGET, b"img", timestamp=ts)
        assert reason(auth, req(headers)) == "stale"
    inside = sign_request(ALICE.key, "POST", TARGET, b"img", timestamp=now - 20)
    assert authenticate(auth, req(inside)) is not None


def test_forged_requests_do_not_burn_nonces():
    auth = SignatureAuthenticator(MemoryKV())
    forged = sign_request(MALLORY.key, "POST", TARGET, b"img", nonce="shared-nonce-1")
    forged["X-Cidserve-Address"] = ALICE.address
    reason(auth, req(forged))
    genuine = sign_request(ALICE.key, "POST", TARGET, b"img", nonce="shared-nonce-1")
    assert authenticate(auth, req(genuine)) is not None


def test_nonce_store_down_fails_closed_with_503():
    # A real Redis client pointed at a port where nothing listens.
    kv = RedisKV(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=200, backoff_ms=50)
    auth = SignatureAuthenticator(kv)
    headers = sign_request(ALICE.key, "POST", TARGET, b"img")
    with pytest.raises(DependencyUnavailable) as info:
        authenticate(auth, req(headers))
    reply = describe(info.value)
    assert reply.status == 503
    assert "Retry-After" in reply.headers


def test_replay_to_another_replica_is_refused_through_shared_redis():
    require_redis()
    prefix = unique_prefix("nonce")

    async def run() -> tuple[object, str]:
        first = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=2000)
        second = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=2000)
        try:
            headers = sign_request(ALICE.key, "POST", TARGET, b"img")
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
