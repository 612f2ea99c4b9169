"""The model repository on small real models: single-flight loads, names, evictions, unloads."""

from __future__ import annotations

import asyncio

import pytest

from registry.identity import model_id_for
from registry.publish import PublishResult
from services.errors import InvalidRequest, ModelNotFound, VersionNotFound
from services.wiring import Services


def test_concurrent_loads_of_one_cid_load_once(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        outcomes = await asyncio.gather(
            *(s.repository.load(linear[0].metadata_cid) for _ in range(8))
        )
        assert s.loader.loads_started == 1
        assert len({id(o.model) for o in outcomes}) == 1
        assert outcomes[0].model.model_id == model_id_for("lin-0", linear[0].metadata_cid)
        again = await s.repository.load(linear[0].metadata_cid)
        assert again.status == "already_loaded" and s.loader.loads_started == 1

    run_with(main)


def test_names_resolve_to_model_ids(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        model_id = (await s.repository.load(linear[1].metadata_cid)).model.model_id
        assert await s.repository.resolve_name(model_id) == model_id
        # A load that does not bind the name (a licensee's) leaves the name unresolved.
        with pytest.raises(ModelNotFound):
            await s.repository.resolve_name("lin-1")
        await s.repository.load(linear[1].metadata_cid, bind_name=True)  # the operator's
        assert await s.repository.resolve_name("lin-1") == model_id
        assert await s.repository.resolve_name("lin-1", "1.0.0") == model_id
        with pytest.raises(VersionNotFound, match="has no version '9'"):
            await s.repository.resolve_name("lin-1", "9")
        with pytest.raises(ModelNotFound):
            await s.repository.resolve_name("lin-7")

    run_with(main)


def test_evicted_models_stay_known_and_reload(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        first = (await s.repository.load(linear[0].metadata_cid)).model.model_id
        await s.repository.load(linear[1].metadata_cid)
        ref = await s.repository.locate(first)
        assert ref.loaded is None and ref.metadata_cid == linear[0].metadata_cid
        assert (await s.repository.metadata_of(first)).name == "lin-0"
        model = await s.repository.materialize(ref)
        assert model.model_id == first and s.repository.peek(first) is model
        assert s.loader.loads_started == 3

    run_with(main, max_models_in_memory=1)


def test_evicted_models_do_not_reload_when_that_is_off(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        first = (await s.repository.load(linear[0].metadata_cid)).model.model_id
        await s.repository.load(linear[1].metadata_cid)
        with pytest.raises(ModelNotFound):
            await s.repository.locate(first)

    run_with(main, max_models_in_memory=1, reload_evicted=False)


def test_unload_forgets_the_model(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        model_id = (await s.repository.load(linear[2].metadata_cid)).model.model_id
        assert [e.model_id for e in await s.repository.entries()] == [model_id]
        removed = await s.repository.unload(model_id)
        assert removed is not None and removed.model_id == model_id
        assert s.repository.models() == [] and await s.repository.entries() == []
        with pytest.raises(ModelNotFound):
            await s.repository.locate(model_id)

    run_with(main)


def test_named_loads_check_the_name_against_the_metadata(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        cid = linear[0].metadata_cid
        with pytest.raises(InvalidRequest, match="describes model 'lin-0'"):
            await s.repository.load_named("lin-1", cid, None, True)
        with pytest.raises(InvalidRequest, match="never loaded here"):
            await s.repository.load_named("lin-0", None, None, True)
        outcome = await s.repository.load_named("lin-0", cid, None, True)
        await s.repository.unload(outcome.model.model_id)
        with pytest.raises(InvalidRequest):
            await s.repository.load_named(outcome.model.model_id, None, None, True)
        loaded = await s.repository.load_named(outcome.model.model_id, cid, None, False)
        assert loaded.model.model_id == model_id_for("lin-0", cid)

    run_with(main)
