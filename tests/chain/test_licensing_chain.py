"""Licensed models on a real chain: anvil + the ModelLicense contract + gateways over HTTP.

Each gateway is built with ``build_services`` + ``create_app`` from settings that name the
chain (RPC URL, contract, chain id) and runs under uvicorn on a free port. Callers sign their
requests with :func:`services.chain.client.sign_url`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from registry.unixfs import canonical_cid, cid_of_bytes
from services.chain import abi
from services.chain.backend import ChainConfigError, ChainLicenseBackend
from services.chain.client import LicenseeAuth, sign_url
from services.chain.deploy import ContentAlreadyMinted
from services.chain.rpc import JsonRpcClient
from services.errors import DependencyUnavailable, UntrustedToken
from services.licensing import NoLicensing
from services.settings import SettingsError, load_settings
from services.state.kv import MemoryKV
from services.wiring import build_services
from tests.anvil import LicenseChain, chain_gateway, cid_spellings, license_chain
from tests.conftest import CAT_LABELS, Gateway, make_settings
from tests.harness import free_port
from tests.models import linear_model

NO_LICENSE = {
    "success": False,
    "error": "No valid license",
    "message": "You need an active license to use this model",
}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LicenseChain]:
    with license_chain(tmp_path_factory.mktemp("anvil")) as running:
        yield running


@pytest.fixture(scope="module")
def long_cache(workdir, store, chain) -> Iterator[Gateway]:
    """Licenses cached for 5 minutes (expiry still bounds them)."""
    with chain_gateway(
        workdir,
        store,
        chain,
        chain_timeout_s=1.0,
        license_cache_ttl_s=300,
        license_negative_cache_ttl_s=0.2,
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def short_cache(workdir, store, chain) -> Iterator[Gateway]:
    with chain_gateway(
        workdir, store, chain, license_cache_ttl_s=2.5, license_negative_cache_ttl_s=0.2
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def linear(store: LocalContentStore, tmp_path_factory) -> list[PublishResult]:
    """Three small published models (predictions do not matter where they are used)."""
    out = []
    for seed in (11, 12, 13):
        path = linear_model(tmp_path_factory.mktemp("lin") / f"lin{seed}.onnx", seed=seed)
        out.append(asyncio.run(publish_model(store, path, name=f"lic-linear-{seed}")))
    return out


@pytest.fixture(scope="module")
def linear_token(chain: LicenseChain, linear: list[PublishResult]) -> int:
    return int(chain.client().mint(linear[0].metadata_cid).value)


@pytest.fixture(scope="module")
def efficientnet_token(chain: LicenseChain, efficientnet: PublishResult) -> int:
    """The one token of the EfficientNet content on this chain."""
    return int(chain.client().mint(efficientnet.metadata_cid).value)


def load(gw: Gateway, metadata_cid: str, token_id: int | None = None) -> httpx.Response:
    body: dict[str, object] = {"metadataCid": metadata_cid, "warmup": False}
    if token_id is not None:
        body["tokenId"] = token_id
    return gw.client.post("/api/models/load", json=body)


def loaded_id(gw: Gateway, metadata_cid: str, token_id: int | None = None) -> str:
    r = load(gw, metadata_cid, token_id)
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


def execute(gw: Gateway, account: LocalAccount | None, model_id: str, **sign_kw) -> httpx.Response:
    body = json.dumps(
        {"model_id": model_id, "input_data": {"format": "tensor", "content": [[0.5] * 8]}}
    ).encode()
    headers = {"content-type": "application/json"}
    if account is not None:
        url = gw.url + "/api/inference/execute"
        headers |= sign_url(account.key, "POST", url, headers, body, **sign_kw)
    return gw.client.post("/api/inference/execute", content=body, headers=headers)


def wait_for_status(fn, status: int, timeout: float) -> tuple[httpx.Response, float]:
    """Call ``fn`` until it answers ``status``; returns the answer and the seconds it took."""
    t0 = time.monotonic()
    while True:
        r = fn()
        if r.status_code == status or time.monotonic() - t0 > timeout:
            return r, time.monotonic() - t0
        time.sleep(0.1)


def grant(chain: LicenseChain, token_id: int, user: LocalAccount, seconds: int) -> int:
    expires_at = chain.anvil.chain_time() + seconds
    chain.client().grant(token_id, user.address, expires_at)
    return expires_at


# -- tests -------------------------------------------------------------------------------------


def test_licensed_caller_gets_correct_predictions_and_others_get_403(
    chain, long_cache, efficientnet: PublishResult, efficientnet_token: int, photos
):
    token = efficientnet_token
    model_id = loaded_id(long_cache, efficientnet.metadata_cid, token)
    licensee = chain.anvil.funded_account()
    stranger = chain.anvil.funded_account()
    grant(chain, token, licensee, 3600)

    target = f"/api/models/{model_id}/predict?top_k=3"

    def predict(account: LocalAccount, photo: str) -> httpx.Response:
        body = photos[photo]
        headers = {"content-type": "image/jpeg"}
        headers |= sign_url(account.key, "POST", long_cache.url + target, headers, body)
        return long_cache.client.post(target, content=body, headers=headers)

    r = predict(licensee, "chelsea")
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["class"] in CAT_LABELS
    r = predict(licensee, "coffee")
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["class"] == "espresso"

    r = predict(stranger, "chelsea")
    assert r.status_code == 403
    assert r.json() == NO_LICENSE

    # The token's owner (the publisher) holds a license without a grant.
    assert predict(chain.publisher, "coffee").status_code == 200

    # Unsigned: 401, and the reply says how to sign.
    r = long_cache.client.post(
        target, content=photos["chelsea"], headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 401
    assert "sign" in r.json()["message"]


def test_forged_replayed_stale_and_incomplete_signatures_are_401(
    chain, long_cache, linear, linear_token
):
    model_id = loaded_id(long_cache, linear[0].metadata_cid, linear_token)
    user = chain.anvil.funded_account()
    grant(chain, linear_token, user, 3600)
    body = json.dumps(
        {"model_id": model_id, "input_data": {"format": "tensor", "content": [[0.5] * 8]}}
    ).encode()

    def post(headers: dict[str, str], content: bytes = body) -> httpx.Response:
        return long_cache.client.post(
            "/api/inference/execute",
            content=content,
            headers={"content-type": "application/json"} | headers,
        )

    url = long_cache.url + "/api/inference/execute"
    json_ct = {"content-type": "application/json"}
    good = sign_url(user.key, "POST", url, json_ct, body)
    assert post(good).status_code == 200
    replay = post(good)
    assert replay.status_code == 401
    assert "used before" in replay.json()["message"]

    # Another key signs; the headers claim the licensee's address.
    forged = sign_url(chain.anvil.funded_account().key, "POST", url, json_ct, body)
    forged["X-Cidserve-Address"] = user.address
    assert post(forged).status_code == 401

    # The licensee's signature, another body (another input).
    other = body.replace(b"0.5", b"0.7")
    r = post(sign_url(user.key, "POST", url, json_ct, body), content=other)
    assert r.status_code == 401

    stale = sign_url(user.key, "POST", url, json_ct, body, timestamp=int(time.time()) - 3600)
    r = post(stale)
    assert r.status_code == 401
    assert "server clock" in r.json()["message"]

    partial = sign_url(user.key, "POST", url, json_ct, body)
    del partial["X-Cidserve-Nonce"]
    r = post(partial)
    assert r.status_code == 401
    assert "X-Cidserve-Nonce" in r.json()["message"]
    assert post({}).status_code == 401


def test_query_string_is_part_of_the_signature(
    chain, long_cache, efficientnet, efficientnet_token, photos
):
    token = efficientnet_token
    model_id = loaded_id(long_cache, efficientnet.metadata_cid, token)
    signed_for = f"/api/models/{model_id}/predict?top_k=1"
    jpeg = {"content-type": "image/jpeg"}
    headers = jpeg | sign_url(
        chain.publisher.key, "POST", long_cache.url + signed_for, jpeg, photos["coffee"]
    )
    r = long_cache.client.post(
        f"/api/models/{model_id}/predict?top_k=5", content=photos["coffee"], headers=headers
    )
    assert r.status_code == 401
    headers = jpeg | sign_url(
        chain.publisher.key, "POST", long_cache.url + signed_for, jpeg, photos["coffee"]
    )
    r = long_cache.client.post(signed_for, content=photos["coffee"], headers=headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1


def test_expired_license_is_refused_although_the_cache_ttl_is_long(
    chain, long_cache, linear, linear_token
):
    model_id = loaded_id(long_cache, linear[0].metadata_cid, linear_token)
    user = chain.anvil.funded_account()
    grant(chain, linear_token, user, 60)
    assert execute(long_cache, user, model_id).status_code == 200  # now cached (TTL 300 s)

    chain.anvil.advance(120)  # the chain's clock passes the expiry
    r, waited = wait_for_status(lambda: execute(long_cache, user, model_id), 403, timeout=30)
    assert r.status_code == 403, r.text
    assert r.json() == NO_LICENSE
    assert waited < 30  # far below the 300 s cache TTL


def test_revoked_license_is_refused_once_the_cache_ttl_passes(
    chain, short_cache, linear, linear_token
):
    model_id = loaded_id(short_cache, linear[0].metadata_cid, linear_token)
    user = chain.anvil.funded_account()
    grant(chain, linear_token, user, 3600)
    registry = short_cache.services.metrics.registry

    def cached_hits() -> float:
        value = registry.get_sample_value(
            "cidserve_license_checks_total", {"result": "cached_valid"}
        )
        return value or 0.0

    before = cached_hits()
    assert execute(short_cache, user, model_id).status_code == 200
    assert execute(short_cache, user, model_id).status_code == 200
    assert cached_hits() > before  # the second answer came from the cache

    chain.client().revoke(linear_token, user.address)
    r, waited = wait_for_status(lambda: execute(short_cache, user, model_id), 403, timeout=15)
    assert r.status_code == 403, r.text
    assert r.json() == NO_LICENSE
    assert waited <= 2.5 + 2.0  # the TTL (2.5 s) and some slack

    # A grant after a refusal is seen once the short negative cache entry lapses.
    grant(chain, linear_token, user, 3600)
    r, _ = wait_for_status(lambda: execute(short_cache, user, model_id), 200, timeout=10)
    assert r.status_code == 200


def test_token_naming_another_cid_is_refused_at_load(chain, long_cache, linear, linear_token):
    # linear_token names linear[0]; loading linear[1] under it is refused.
    r = load(long_cache, linear[1].metadata_cid, linear_token)
    assert r.status_code == 409, r.text
    message = r.json()["message"]
    assert linear[0].metadata_cid in message and linear[1].metadata_cid in message
    listed = long_cache.client.get("/api/models").text
    assert linear[1].metadata_cid not in listed

    r = load(long_cache, linear[1].metadata_cid, 10_000)
    assert r.status_code == 404
    assert "does not exist" in r.json()["message"]


def test_models_without_a_token_stay_open(chain, long_cache, linear):
    model_id = loaded_id(long_cache, linear[2].metadata_cid)
    assert execute(long_cache, None, model_id).status_code == 200
    health = long_cache.client.get("/health").json()["licensing"]
    assert health["status"] == "ok"
    assert health["contract"] == chain.contract
    assert "without a tokenId are open" in health["open_models"]


def test_chain_down_is_503_then_200_when_it_returns(workdir, store, chain, linear, linear_token):
    user = chain.anvil.funded_account()
    grant(chain, linear_token, user, 3600)
    with (
        chain_gateway(workdir, store, chain, license_cache_ttl_s=0) as closed,
        chain_gateway(
            workdir, store, chain, license_cache_ttl_s=0, license_fail_open=True
        ) as open_,
    ):
        closed_id = loaded_id(closed, linear[0].metadata_cid, linear_token)
        open_id = loaded_id(open_, linear[0].metadata_cid, linear_token)
        assert execute(closed, user, closed_id).status_code == 200
        stranger = chain.anvil.funded_account()
        open_model = loaded_id(closed, linear[2].metadata_cid)

        chain.anvil.stop()
        try:
            r = execute(closed, user, closed_id)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"]
            assert "cannot be checked" in r.json()["message"]
            assert closed.client.get("/health/ready").status_code == 503
            # Configured to fail open: served (and logged), even for a caller without a license.
            assert execute(open_, stranger, open_id).status_code == 200
            # Loads under a token cannot be checked either: 503, never a silent load.
            assert load(closed, linear[1].metadata_cid, linear_token).status_code == 503
            # Nor can the token of content being loaded: 503 (the chain decides what is licensed).
            r = load(closed, linear[1].metadata_cid)
            assert r.status_code == 503 and r.headers["retry-after"]
            # An open model already loaded does not depend on the chain.
            assert execute(closed, None, open_model).status_code == 200
        finally:
            chain.anvil.start()  # same port, same state

        r, _ = wait_for_status(lambda: execute(closed, user, closed_id), 200, timeout=15)
        assert r.status_code == 200, r.text
        assert execute(closed, stranger, closed_id).status_code == 403


def test_start_up_refuses_the_wrong_chain_id(workdir, store, chain):
    settings = make_settings(
        workdir, chain_rpc_url=chain.anvil.url, license_contract=chain.contract, chain_id=43114
    )
    services = build_services(settings, store=store)

    async def start() -> None:
        try:
            for task in services.startup_tasks:
                await task(services)
        finally:
            await services.aclose()

    with pytest.raises(ChainConfigError, match="43114"):
        asyncio.run(start())


def test_rpc_client_reports_unreachable_and_non_rpc_endpoints(gateway: Gateway):
    from services.chain.rpc import JsonRpcClient, RpcUnavailable, redact_url
    from tests.harness import free_port

    async def call(url: str) -> str:
        client = JsonRpcClient(url, timeout_s=1.0)
        try:
            await client.chain_id()
        except RpcUnavailable as exc:
            return str(exc)
        finally:
            await client.aclose()
        return "answered"

    nobody = f"http://127.0.0.1:{free_port()}/v3/secret-api-key"
    message = asyncio.run(call(nobody))
    assert message != "answered"
    assert "secret-api-key" not in message  # URLs are shown without path and query
    assert redact_url(nobody) == nobody.split("/v3")[0]
    # An HTTP server that is not a JSON-RPC node (the gateway itself).
    assert asyncio.run(call(gateway.url + "/health/live")) != "answered"


def test_signature_binds_host_content_type_and_tensor_headers_over_http(
    chain, long_cache, linear, linear_token
):
    """A raw tensor request signed with cidserve-request-v2: every header that says how the
    body is read, and the host it was aimed at, are bound to the signature."""
    model_id = loaded_id(long_cache, linear[0].metadata_cid, linear_token)
    user = chain.anvil.funded_account()
    grant(chain, linear_token, user, 3600)
    path = f"/api/models/{model_id}/predict"
    url = long_cache.url + path
    body = b"\x00\x00\x00\x3f" * 8  # eight float32 0.5
    sent = {
        "Content-Type": "application/x-cidserve-tensor",
        "X-Tensor-Dtype": "float32",
        "X-Tensor-Shape": "1,8",
    }

    def post(headers, *, signed_as=None, content=body):
        signature = sign_url(user.key, "POST", url, signed_as or sent, body)
        return long_cache.client.post(path, content=content, headers=[*headers, *signature.items()])

    r = post(list(sent.items()))
    assert r.status_code == 200, r.text

    tampered = {
        "host": [*sent.items(), ("Host", "other-gateway.example")],
        "content-type": [*(sent | {"Content-Type": "application/octet-stream"}).items()],
        "dtype": [*(sent | {"X-Tensor-Dtype": "int32"}).items()],
        "shape": [*(sent | {"X-Tensor-Shape": "8"}).items()],
        "input": [*sent.items(), ("X-Tensor-Input", "x")],
        "other x-tensor": [*sent.items(), ("X-Tensor-Layout", "nhwc")],
        "v2 header length": [*sent.items(), ("Inference-Header-Content-Length", "4")],
        "shape sent twice": [("X-Tensor-Shape", "2,4"), *sent.items()],
    }
    for what, headers in tampered.items():
        r = post(headers)
        assert r.status_code == 401, (what, r.text)
        assert r.json()["reason"] == "forged", what
    r = post(list(sent.items()), content=body[:-4] + b"\x00\x00\x80\x3f")
    assert r.status_code == 401 and r.json()["reason"] == "forged"

    # A cidserve-request-v1 client (no X-Cidserve-Version) is told which version to use.
    signature = sign_url(user.key, "POST", url, sent, body)
    del signature["X-Cidserve-Version"]
    r = long_cache.client.post(path, content=body, headers=sent | signature)
    assert r.status_code == 401
    assert r.json()["reason"] == "version"
    assert "cidserve-request-v2" in r.json()["message"]

    # httpx signing each request itself: fresh nonces, the Host and Content-Type it sends.
    with httpx.Client(base_url=long_cache.url, auth=LicenseeAuth(user.key), timeout=60) as client:
        for _ in range(2):
            r = client.post(path, content=body, headers=sent)
            assert r.status_code == 200, r.text


# -- one token per content ---------------------------------------------------------------------


def content_backend(url: str, chain: LicenseChain, cache: MemoryKV, **kw) -> ChainLicenseBackend:
    return ChainLicenseBackend(
        JsonRpcClient(url, timeout_s=1.0),
        chain.contract,
        MemoryKV(),
        content_cache=cache,
        expected_chain_id=31337,
        negative_ttl_s=0.2,
        artifact=abi.load_artifact(),
        **kw,
    )


def test_content_is_minted_once_whatever_the_spelling(chain):
    cid = cid_of_bytes(b"one token per content: minted once")
    token = int(chain.client().mint(cid).value)
    stranger = chain.anvil.funded_account()
    other_client = chain.client(stranger)

    for how, spelling in cid_spellings(cid).items():
        with pytest.raises(ContentAlreadyMinted) as refused:
            other_client.mint(spelling)
        assert refused.value.token_id == token, how
        assert refused.value.minter == chain.publisher.address, how
        assert f"already has token {token}" in str(refused.value), how

    # The contract itself takes only the canonical spelling, whoever sends it.
    non_canonical = abi.selector("NonCanonicalCid(string)").hex()
    for how in ("v0", "base58btc", "upper-case"):
        call = abi.MINT.encode(stranger.address, cid_spellings(cid)[how])
        with pytest.raises(RuntimeError, match=non_canonical):
            chain.anvil.rpc(
                "eth_call",
                {"from": stranger.address, "to": chain.contract, "data": "0x" + call.hex()},
                "latest",
            )
    assert other_client.contract().functions.balanceOf(stranger.address).call() == 0
    assert other_client.content_token(cid_spellings(cid)["v0"]) == (token, chain.publisher.address)


def test_token_of_content_for_every_spelling_cached_and_failing_closed(chain):
    cid = cid_of_bytes(b"one token per content: looked up")
    later = cid_of_bytes(b"one token per content: minted later")
    token = int(chain.client().mint(cid).value)
    kv = MemoryKV()

    async def scenario() -> None:
        live = content_backend(chain.anvil.url, chain, kv)
        dead = content_backend(f"http://127.0.0.1:{free_port()}", chain, kv)
        try:
            for how, spelling in cid_spellings(cid).items():
                assert await live.token_of_content(canonical_cid(spelling)) == token, how
            assert await live.token_of_content(later) is None

            # The same process cache, the chain gone: a token is answered from the cache; content
            # without a token is asked again once its short negative entry lapses, and fails
            # closed, as does content never looked up.
            assert await dead.token_of_content(cid) == token
            await asyncio.sleep(0.3)
            with pytest.raises(DependencyUnavailable) as down:
                await dead.token_of_content(later)
            assert down.value.retry_after_s > 0
            with pytest.raises(DependencyUnavailable):
                await dead.token_of_content(cid_of_bytes(b"never looked up"))

            # A mint is seen once the negative entry lapses.
            minted = await asyncio.to_thread(chain.client().mint, later)
            await asyncio.sleep(0.3)
            assert await live.token_of_content(later) == int(minted.value)
        finally:
            await live.aclose()
            await dead.aclose()

    asyncio.run(scenario())


def test_tokens_of_untrusted_minters_are_refused(workdir, store, chain):
    stranger = chain.anvil.funded_account()
    theirs = cid_of_bytes(b"one token per content: minted by a stranger")
    ours = cid_of_bytes(b"one token per content: minted by the publisher for a stranger")
    their_token = int(chain.client(stranger).mint(theirs).value)
    # Minted by the publisher, owned by the stranger: the minter is what is trusted.
    our_token = int(chain.client().mint(ours, to=stranger.address).value)

    settings = make_settings(
        workdir,
        chain_rpc_url=chain.anvil.url,
        license_contract=chain.contract,
        chain_id=31337,
        trusted_minters=f" {chain.publisher.address.lower()} ,",
    )
    services = build_services(settings, store=store)

    async def scenario() -> None:
        try:
            backend = services.licensing
            assert await backend.token_of_content(ours) == our_token
            with pytest.raises(UntrustedToken) as refused:
                await backend.token_of_content(theirs)
            message = str(refused.value)
            assert f"token {their_token}" in message and stranger.address in message
            assert refused.value.extra["minter"] == stranger.address
            assert (await backend.health())["trusted_minters"] == [chain.publisher.address.lower()]
            # Without the setting any minter's token is the content's token.
            anyone = content_backend(chain.anvil.url, chain, MemoryKV())
            try:
                assert await anyone.token_of_content(theirs) == their_token
            finally:
                await anyone.aclose()
        finally:
            await services.aclose()

    asyncio.run(scenario())


def test_without_a_chain_no_content_has_a_token():
    cid = cid_of_bytes(b"one token per content: no chain")
    assert asyncio.run(NoLicensing().token_of_content(cid)) is None


def test_trusted_minters_are_checked_at_start_up(workdir):
    chain_settings = {
        "chain_rpc_url": "http://127.0.0.1:8545",
        "license_contract": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
    }
    with pytest.raises(SettingsError, match=r"CIDSERVE_TRUSTED_MINTERS.*entry 2 is not an address"):
        load_settings(trusted_minters="0x" + "ab" * 20 + ",0xnope", **chain_settings)
    with pytest.raises(SettingsError, match=r"CIDSERVE_TRUSTED_MINTERS.*CIDSERVE_LICENSE_CONTRACT"):
        load_settings(trusted_minters="0x" + "ab" * 20)
    assert load_settings(trusted_minters=" , ", **chain_settings).trusted_minters == frozenset()
