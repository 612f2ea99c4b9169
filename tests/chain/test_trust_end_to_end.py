"""A licensed model stays licensed, whatever anyone sends (real anvil chain, real contract).

One gateway with an operator token (``CIDSERVE_ADMIN_TOKEN``) serves models whose tokens live
on chain. Each test is one way around a license that an outsider could try: loading the same
content without a token, in another CID spelling, under another token, racing a licensed load,
unloading, squatting a model's name, or driving the control plane from a browser.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from multiformats import CID

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.chain.signing import sign_request
from services.http.app import create_app
from services.wiring import build_services
from tests.anvil import LicenseChain, chain_gateway, license_chain
from tests.conftest import Gateway, make_settings
from tests.harness import ServerThread
from tests.models import linear_model

ADMIN = "operator-secret-for-tests"
BEARER = {"authorization": f"Bearer {ADMIN}"}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LicenseChain]:
    with license_chain(tmp_path_factory.mktemp("anvil")) as running:
        yield running


def _publish(store: LocalContentStore, workdir: Path, seed: int, name: str) -> PublishResult:
    path = linear_model(workdir / f"trust{seed}.onnx", seed=seed)
    return asyncio.run(publish_model(store, path, name=name))


@pytest.fixture(scope="module")
def models(
    store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, PublishResult]:
    """``victim`` and ``squatter`` share a published name; ``fresh`` and ``other`` are
    licensed too; ``open`` has no token."""
    work = tmp_path_factory.mktemp("trust")
    return {
        "victim": _publish(store, work, 41, "trusted-classifier"),
        "squatter": _publish(store, work, 42, "trusted-classifier"),
        "fresh": _publish(store, work, 43, "fresh-model"),
        "other": _publish(store, work, 44, "other-model"),
        "open": _publish(store, work, 45, "open-model"),
        "race": _publish(store, work, 46, "race-model"),
    }


@pytest.fixture(scope="module")
def people(chain: LicenseChain) -> dict[str, LocalAccount]:
    return {
        "licensee": Account.create(),
        "outsider": Account.create(),
        "squatter": chain.anvil.funded_account(),
    }


@pytest.fixture(scope="module")
def tokens(
    chain: LicenseChain, models: dict[str, PublishResult], people: dict[str, LocalAccount]
) -> dict[str, int]:
    publisher = chain.client()
    out = {k: int(publisher.mint(models[k].metadata_cid).value) for k in ("victim", "fresh")}
    out["other"] = int(publisher.mint(models["other"].metadata_cid).value)
    out["race"] = int(publisher.mint(models["race"].metadata_cid).value)
    # The squatter publishes a model under the victim's name and licenses itself.
    squatter = chain.client(people["squatter"])
    out["squatter"] = int(squatter.mint(models["squatter"].metadata_cid).value)
    far = chain.anvil.chain_time() + 86_400
    for key in ("victim", "fresh", "race"):
        publisher.grant(out[key], people["licensee"].address, far)
    squatter.grant(out["squatter"], people["squatter"].address, far)
    return out


@pytest.fixture(scope="module")
def gw(
    workdir: Path, store: LocalContentStore, chain: LicenseChain, tokens: dict[str, int]
) -> Iterator[Gateway]:
    with chain_gateway(
        workdir / "trust-gw", store, chain, admin_token=ADMIN, prediction_cache=True
    ) as gateway:
        yield gateway


# -- helpers -----------------------------------------------------------------------------------


def _host(gw: Gateway) -> str:
    return httpx.URL(gw.url).netloc.decode()


def post(
    gw: Gateway,
    path: str,
    payload: dict[str, Any],
    account: LocalAccount | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST ``payload`` as JSON, signed by ``account`` when given."""
    body = json.dumps(payload).encode()
    sent = {"content-type": "application/json", **(headers or {})}
    if account is not None:
        sent |= sign_request(account.key, "POST", path, body, host=_host(gw), headers=sent)
    return gw.client.post(path, content=body, headers=sent)


def operator_load(gw: Gateway, cid: str, token_id: int | None = None) -> httpx.Response:
    payload: dict[str, Any] = {"metadataCid": cid, "warmup": False}
    if token_id is not None:
        payload["tokenId"] = token_id
    return post(gw, "/api/models/load", payload, headers=BEARER)


def execute(gw: Gateway, model_id: str, account: LocalAccount | None = None) -> httpx.Response:
    payload = {"model_id": model_id, "input_data": {"format": "tensor", "content": [[0.25] * 8]}}
    return post(gw, "/api/inference/execute", payload, account)


def v2_infer(gw: Gateway, name: str, account: LocalAccount | None = None) -> httpx.Response:
    payload = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.25] * 8}]}
    return post(gw, f"/v2/models/{name}/infer", payload, account)


def spellings(cid: str) -> list[str]:
    """The same CID in other multibases (and CIDv0 where the codec allows it)."""
    parsed = CID.decode(cid)
    out = [str(parsed.set(base="base58btc")), str(parsed.set(base="base36")), cid.upper()]
    if parsed.codec.name == "dag-pb":
        out.append(str(parsed.set(version=0)))
    return out


# -- the attacks -------------------------------------------------------------------------------


def test_content_with_a_token_is_licensed_even_when_the_load_names_none(
    gw: Gateway, models: dict[str, PublishResult], tokens: dict[str, int], people
) -> None:
    r = operator_load(gw, models["victim"].metadata_cid)  # no tokenId: the chain decides
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    assert gw.client.get(f"/api/models/{model_id}").json()["tokenId"] == tokens["victim"]
    assert execute(gw, model_id).status_code == 401
    assert execute(gw, model_id, people["outsider"]).status_code == 403
    assert execute(gw, model_id, people["licensee"]).status_code == 200
    # The licensee's reply is now in the prediction cache: an unsigned caller still gets 401.
    assert execute(gw, model_id).status_code == 401
    assert v2_infer(gw, model_id).status_code == 401


def test_anonymous_load_of_licensed_content_is_refused_and_changes_nothing(
    gw: Gateway, models: dict[str, PublishResult], tokens: dict[str, int]
) -> None:
    cid = models["victim"].metadata_cid
    model_id = operator_load(gw, cid).json()["model_id"]
    r = post(gw, "/api/models/load", {"metadataCid": cid})
    assert r.status_code == 401
    assert r.json()["success"] is False
    # Even the operator's open load leaves the licensed model licensed.
    again = operator_load(gw, cid)
    assert again.status_code == 200
    assert again.json()["model_id"] == model_id
    assert execute(gw, model_id).status_code == 401
    entry = next(
        e for e in gw.client.get("/api/models").json()["index"] if e["model_id"] == model_id
    )
    assert entry["token_id"] == tokens["victim"]


def test_every_spelling_of_a_cid_is_the_same_licensed_model(
    gw: Gateway, models: dict[str, PublishResult], tokens: dict[str, int]
) -> None:
    cid = models["victim"].metadata_cid
    model_id = operator_load(gw, cid).json()["model_id"]
    for spelling in spellings(cid):
        r = operator_load(gw, spelling)
        assert r.status_code == 200, (spelling, r.text)
        assert r.json()["model_id"] == model_id, spelling
        assert r.json()["status"] == "already_loaded", spelling
    assert execute(gw, model_id).status_code == 401


def test_content_cannot_get_a_second_token_in_any_spelling(
    chain: LicenseChain, models: dict[str, PublishResult], tokens: dict[str, int], people
) -> None:
    squatter = chain.client(people["squatter"])
    cid = models["victim"].metadata_cid
    for spelling in [cid, *spellings(cid)]:
        with pytest.raises(Exception):  # noqa: B017 - a revert, whatever the client calls it
            squatter.mint(spelling)


def test_a_request_naming_another_token_gets_409(
    gw: Gateway, models: dict[str, PublishResult], tokens: dict[str, int]
) -> None:
    r = operator_load(gw, models["victim"].metadata_cid, tokens["other"])
    assert r.status_code == 409, r.text
    assert str(tokens["victim"]) in r.json()["message"]


def test_a_licensee_may_load_its_model_and_nobody_else_may(
    gw: Gateway, models: dict[str, PublishResult], tokens: dict[str, int], people
) -> None:
    payload = {"metadataCid": models["fresh"].metadata_cid, "tokenId": tokens["fresh"]}
    assert post(gw, "/api/models/load", payload).status_code == 401
    assert post(gw, "/api/models/load", payload, people["outsider"]).status_code == 403
    r = post(gw, "/api/models/load", payload, people["licensee"])
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    assert execute(gw, model_id, people["licensee"]).status_code == 200
    # Naming no token changes nothing: the chain's token is the one checked.
    bare = {"metadataCid": models["fresh"].metadata_cid}
    assert post(gw, "/api/models/load", bare, people["outsider"]).status_code == 403


def test_content_without_a_token_is_loaded_only_by_the_operator(
    gw: Gateway, models: dict[str, PublishResult], people
) -> None:
    payload = {"metadataCid": models["open"].metadata_cid, "warmup": False}
    assert post(gw, "/api/models/load", payload).status_code == 401
    assert post(gw, "/api/models/load", payload, people["licensee"]).status_code == 403
    r = operator_load(gw, models["open"].metadata_cid)
    assert r.status_code == 200
    assert execute(gw, r.json()["model_id"]).status_code == 200  # open content runs openly


def test_an_open_load_racing_a_licensed_one_yields_the_licensed_model(
    gw: Gateway, models: dict[str, PublishResult], tokens: dict[str, int]
) -> None:
    cid = models["race"].metadata_cid

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            bodies = [
                {"metadataCid": cid},
                {"metadataCid": cid, "tokenId": tokens["race"]},
                {"metadataCid": spellings(cid)[0]},
            ]
            return list(
                await asyncio.gather(
                    *(client.post("/api/models/load", json=b, headers=BEARER) for b in bodies)
                )
            )

    replies = asyncio.run(race())
    assert [r.status_code for r in replies] == [200, 200, 200]
    ids = {r.json()["model_id"] for r in replies}
    assert len(ids) == 1
    (model_id,) = ids
    assert gw.client.get(f"/api/models/{model_id}").json()["tokenId"] == tokens["race"]
    assert execute(gw, model_id).status_code == 401


def test_the_control_plane_needs_the_operator_token(
    gw: Gateway, models: dict[str, PublishResult]
) -> None:
    model_id = operator_load(gw, models["victim"].metadata_cid).json()["model_id"]
    for method, path, payload in (
        ("DELETE", f"/api/models/{model_id}", None),
        ("POST", f"/v2/repository/models/{model_id}/unload", {}),
        ("POST", f"/v2/repository/models/{model_id}/load", {}),
        ("POST", "/v2/repository/index", {}),
    ):
        r = gw.client.request(method, path, json=payload)
        assert r.status_code == 401, (path, r.text)
        assert "CIDSERVE_ADMIN_TOKEN" in r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = gw.client.request(method, path, json=payload, headers={"authorization": "Bearer x"})
        assert wrong.status_code == 401, path
    assert gw.client.get(f"/api/models/{model_id}").status_code == 200  # still there
    assert gw.client.post("/v2/repository/index", json={}, headers=BEARER).status_code == 200
    assert gw.client.delete(f"/api/models/{model_id}", headers=BEARER).status_code == 200


def test_a_published_name_resolves_only_to_the_operators_choice(
    gw: Gateway, models: dict[str, PublishResult], tokens: dict[str, int], people
) -> None:
    victim_id = operator_load(gw, models["victim"].metadata_cid).json()["model_id"]
    # The squatter loads its own licensed model of the same name, and uses it last.
    payload = {"metadataCid": models["squatter"].metadata_cid, "warmup": False}
    r = post(gw, "/api/models/load", payload, people["squatter"])
    assert r.status_code == 200, r.text
    squatter_id = r.json()["model_id"]
    assert squatter_id != victim_id
    assert execute(gw, squatter_id, people["squatter"]).status_code == 200
    # The name still names the operator's model: the squatter has no license for it.
    assert v2_infer(gw, "trusted-classifier", people["squatter"]).status_code == 403
    reply = v2_infer(gw, "trusted-classifier", people["licensee"])
    assert reply.status_code == 200, reply.text
    assert reply.json()["model_name"] == victim_id


def test_browsers_cannot_post_text_plain_to_json_routes(
    gw: Gateway, models: dict[str, PublishResult]
) -> None:
    body = json.dumps({"metadataCid": models["open"].metadata_cid})
    for path in ("/api/models/load", "/v2/repository/index", "/api/inference/execute"):
        r = gw.client.post(path, content=body, headers={"content-type": "text/plain", **BEARER})
        assert r.status_code == 415, (path, r.text)
    r = gw.client.options(
        "/api/models/load",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers


def test_a_shared_index_cannot_make_a_licensed_model_open(
    workdir: Path,
    store: LocalContentStore,
    chain: LicenseChain,
    models: dict[str, PublishResult],
    tokens: dict[str, int],
    people,
) -> None:
    """Replica A loads a licensed model; Redis (not trusted) is then edited to say the model
    has no token; replica B, asked for the model it never loaded, still checks the license."""
    import redis

    from tests.redis_support import REDIS_URL, delete_prefix, require_redis, unique_prefix

    require_redis()
    prefix = unique_prefix("trust")
    settings = make_settings(
        workdir / "trust-fleet",
        chain_rpc_url=chain.anvil.url,
        license_contract=chain.contract,
        chain_id=31337,
        admin_token=ADMIN,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        prediction_cache=False,
    )
    try:
        with (
            ServerThread(create_app(settings, build_services(settings, store=store))) as a_srv,
            ServerThread(create_app(settings, build_services(settings, store=store))) as b_srv,
            httpx.Client(base_url=a_srv.url, timeout=60) as a_client,
            httpx.Client(base_url=b_srv.url, timeout=60) as b_client,
        ):
            a = Gateway(a_srv.url, None, a_client)  # type: ignore[arg-type]
            b = Gateway(b_srv.url, None, b_client)  # type: ignore[arg-type]
            model_id = operator_load(a, models["victim"].metadata_cid).json()["model_id"]
            r = redis.Redis.from_url(REDIS_URL)
            keys = [k for k in r.scan_iter(f"{prefix}*index:model:{model_id}")]
            assert keys, "the index entry is in Redis"
            for key in keys:
                r.hset(key, "token_id", "")  # a hostile edit: "no token"
            assert execute(b, model_id).status_code == 401
            assert execute(b, model_id, people["outsider"]).status_code == 403
            assert execute(b, model_id, people["licensee"]).status_code == 200
    finally:
        delete_prefix(REDIS_URL, prefix)


def test_an_over_long_identity_cid_is_a_400(gw: Gateway) -> None:
    from multiformats import multihash

    inline = CID("base32", 1, "raw", multihash.digest(b"x" * 4000, "identity"))
    for cid in (str(inline), str(inline)[:150]):
        r = operator_load(gw, cid)
        assert r.status_code == 400, r.text
        assert len(r.text) < 2000  # the reply does not echo kilobytes back
    r = gw.client.post(
        "/v2/repository/models/x/load",
        json={"parameters": {"metadataCid": str(inline)}},
        headers=BEARER,
    )
    assert r.status_code == 400, r.text
