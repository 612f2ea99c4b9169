"""Licensed models through the client on a real chain (anvil + the license contract): the
client signs with the licensee's key and the gateway's authenticator and license gate let it
load and run the model, sync and async; a stranger's signed request is 403, an unsigned one
401, a token naming other content 409, each as its typed error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from cidserve_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    InferInput,
    InputData,
    PermissionDeniedError,
)

from tests.anvil import LicenseChain, license_chain
from tests.client.support import (
    ADMIN,
    X,
    chain_settings,
    expected_y,
    publish_linear,
    serve,
)
from tests.conftest import CAT_LABELS

SEED = 31


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Iterator[LicenseChain]:
    with license_chain(tmp_path_factory.mktemp("client-anvil")) as running:
        yield running


@pytest.fixture(scope="module")
def licensed(workdir, store, chain) -> Iterator[str]:
    """A gateway on the chain whose control plane needs the operator's token."""
    with serve(workdir, store, **chain_settings(chain)) as url:
        yield url


@pytest.fixture(scope="module")
def linear(store, tmp_path_factory):
    return publish_linear(store, tmp_path_factory.mktemp("client-lic"), SEED)


@pytest.fixture(scope="module")
def other(store, tmp_path_factory):
    return publish_linear(store, tmp_path_factory.mktemp("client-lic"), SEED + 1)


@pytest.fixture(scope="module")
def tokens(chain, linear, efficientnet) -> dict[str, int]:
    return {
        "linear": int(chain.client().mint(linear.metadata_cid).value),
        "efficientnet": int(chain.client().mint(efficientnet.metadata_cid).value),
    }


@pytest.fixture(scope="module")
def licensee(chain, tokens):
    user = chain.anvil.funded_account()
    expires = chain.anvil.chain_time() + 3600
    for token in tokens.values():
        chain.client().grant(token, user.address, expires)
    return user


def test_a_licensee_loads_and_runs_with_signed_requests(
    licensed, chain, linear, efficientnet, tokens, licensee, photos
):
    with Client(licensed, private_key=licensee.key, timeout=120) as client:
        assert client.address == licensee.address
        # A signed load: no operator token, the license decides.
        loaded = client.load(linear.metadata_cid, token_id=tokens["linear"], warmup=False)
        assert loaded.model_id == linear.model_id
        listed = {m.model_id: m for m in client.models().models}
        assert listed[linear.model_id].token_id == tokens["linear"]
        assert listed[linear.model_id].licensed

        result = client.execute(linear.model_id, InputData.tensor([X]), {"top_k": 1})
        assert result.top is not None
        assert result.top.class_id == int(np.argmax(expected_y(SEED)))
        v2 = client.infer(
            linear.model_id, [InferInput(name="x", datatype="FP32", shape=[1, 8], data=X)]
        )
        np.testing.assert_allclose(v2.output("y").data, expected_y(SEED).ravel(), rtol=1e-5)

        # The query (top_k) is part of what is signed.
        effnet = client.load(efficientnet.metadata_cid, token_id=tokens["efficientnet"])
        cat = client.predict(effnet.model_id, photos["chelsea"], top_k=3)
        assert len(cat.predictions) == 3
        assert cat.top is not None and cat.top.label in CAT_LABELS


def test_the_async_client_signs_each_request_anew(
    licensed, linear, efficientnet, tokens, licensee, photos
):
    async def scenario() -> None:
        async with AsyncClient(licensed, private_key=licensee.key, timeout=120) as client:
            model_id = (await client.load(linear.metadata_cid, token_id=tokens["linear"])).model_id
            effnet = await client.load(efficientnet.metadata_cid, token_id=tokens["efficientnet"])
            inputs = [[X[(i + j) % 8] for j in range(8)] for i in range(5)]
            results = await asyncio.gather(
                *(client.execute(model_id, InputData.tensor([x])) for x in inputs),
                client.predict(effnet.model_id, photos["coffee"], top_k=1),
            )
            for x, res in zip(inputs, results[:-1], strict=True):
                assert res.top is not None
                assert res.top.class_id == int(np.argmax(expected_y(SEED, x)))
            assert results[-1].top is not None and results[-1].top.label == "espresso"

    asyncio.run(scenario())


def test_strangers_unsigned_callers_and_wrong_tokens_get_typed_errors(
    licensed, chain, linear, other, tokens, licensee
):
    with Client(licensed, admin_token=ADMIN) as operator:
        model_id = operator.load(linear.metadata_cid, token_id=tokens["linear"]).model_id
        # The operator's token loads; it does not license a run.
        with pytest.raises(AuthenticationError) as info:
            operator.execute(model_id, InputData.tensor([X]))
        assert info.value.status == 401
        assert "sign" in info.value.message
        with pytest.raises(ConflictError) as conflict:
            operator.load(other.metadata_cid, token_id=tokens["linear"])
        assert conflict.value.status == 409
        assert other.metadata_cid in conflict.value.message

    stranger = chain.anvil.funded_account()
    with Client(licensed, private_key=stranger.key) as client:
        with pytest.raises(PermissionDeniedError) as denied:
            client.execute(model_id, InputData.tensor([X]))
        assert denied.value.status == 403
        assert denied.value.title == "No valid license"
        assert "license" in denied.value.message
        with pytest.raises(PermissionDeniedError):
            client.infer(model_id, [InferInput(name="x", datatype="FP32", shape=[1, 8], data=X)])
        with pytest.raises(PermissionDeniedError):
            client.load(linear.metadata_cid, token_id=tokens["linear"])
