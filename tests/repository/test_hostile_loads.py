"""Loads of hostile models are bounded in time, memory and number (real models, real loads).

The models are a few hundred bytes each (tests/runtime/hostile_models.py): a warm-up that never
ends, a session that needs a gigabyte to build, sessions that hold 64 MiB. Each test takes
seconds.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.errors import Overloaded
from services.http.errors import describe
from services.repository.loader import ModelInvalid
from services.runtime.memory import rss_bytes
from services.wiring import Services
from tests.runtime.hostile_models import constant_of_shape_model, endless_loop_model

MIB = 1 << 20


@pytest.fixture(scope="module")
def hostile(
    unit_store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, PublishResult]:
    d = tmp_path_factory.mktemp("hostile")
    models = {
        "endless": endless_loop_model(d / "endless.onnx"),
        "huge": constant_of_shape_model(d / "huge.onnx", 1 << 28),  # 1 GiB while built
        "hold_a": constant_of_shape_model(d / "a.onnx", 16 * MIB, keep=True),  # 64 MiB held
        "hold_b": constant_of_shape_model(d / "b.onnx", 16 * MIB + 1, keep=True),
    }
    return {
        name: asyncio.run(publish_model(unit_store, path, name=name))
        for name, path in models.items()
    }


async def _executor_is_free(s: Services) -> None:
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    await asyncio.wait_for(loop.run_in_executor(s.loader.load_executor, time.sleep, 0), 1.0)
    assert time.monotonic() - t0 < 1.0
    assert s.loader.load_slots.busy == 0


@pytest.mark.parametrize("probe", [True, False], ids=["trial-build", "in-process"])
def test_an_endless_warm_up_is_terminated_at_its_deadline(
    run_with, hostile: dict[str, PublishResult], probe: bool
):
    async def main(s: Services) -> None:
        t0 = time.monotonic()
        with pytest.raises(ModelInvalid, match="CIDSERVE_WARMUP_TIMEOUT_MS") as exc:
            await s.loader.load(hostile["endless"].metadata_cid)
        took = time.monotonic() - t0
        assert took < 8, took  # 0.3 s deadline (+ the trial's interpreter start-up)
        assert "300 ms" in str(exc.value)
        assert describe(exc.value).status == 422
        await _executor_is_free(s)
        assert len(s.cache) == 0

    run_with(main, warmup_timeout_ms=300, session_probe=probe)


def test_a_session_that_needs_more_than_the_budget_is_refused(
    run_with, hostile: dict[str, PublishResult]
):
    async def main(s: Services) -> None:
        before = rss_bytes()
        with pytest.raises(ModelInvalid, match="CIDSERVE_MAX_SESSION_BYTES") as exc:
            await s.loader.load(hostile["huge"].metadata_cid)
        assert describe(exc.value).status == 422
        assert rss_bytes() - before < 100 * MIB  # the gigabyte was never ours
        # Known now: refused again without another trial.
        t0 = time.monotonic()
        with pytest.raises(ModelInvalid, match="CIDSERVE_MAX_SESSION_BYTES"):
            await s.loader.load(hostile["huge"].metadata_cid)
        assert time.monotonic() - t0 < 1 and s.loader.probe is not None
        assert s.loader.probe.trials == 1
        await _executor_is_free(s)

    run_with(main, max_session_bytes=256 * MIB)


def test_the_cache_bound_counts_what_each_session_really_holds(
    run_with, hostile: dict[str, PublishResult]
):
    async def main(s: Services) -> None:
        a = (await s.loader.load(hostile["hold_a"].metadata_cid)).model
        status = s.cache.status()
        assert a.size_bytes < 1000  # the file
        assert status["memory_bytes"][a.model_id] >= 64 * MIB  # the session
        assert status["total_bytes"] == status["memory_bytes"][a.model_id]
        b = (await s.loader.load(hostile["hold_b"].metadata_cid)).model
        # Two such models do not fit in 100 MiB: the least recently used one went.
        assert a.model_id not in s.cache and b.model_id in s.cache
        status = s.cache.status()
        assert status["total_bytes"] == status["memory_bytes"][b.model_id]

    run_with(main, max_cache_bytes=100 * MIB, max_models_in_memory=10)


def test_loads_beyond_the_cap_are_refused_with_503_and_retry_after(
    run_with, hostile: dict[str, PublishResult], linear: list[PublishResult]
):
    async def main(s: Services) -> None:
        endless = hostile["endless"].metadata_cid
        first = asyncio.ensure_future(s.loader.load(endless))
        joined = asyncio.ensure_future(s.loader.load(endless))  # same load: not counted twice
        await asyncio.sleep(0.2)
        with pytest.raises(Overloaded, match="CIDSERVE_MAX_CONCURRENT_LOADS") as exc:
            await s.loader.load(linear[0].metadata_cid)
        reply = describe(exc.value)
        assert reply.status == 503 and reply.headers["Retry-After"] == "1"
        for pending in (first, joined):
            with pytest.raises(ModelInvalid, match="warm-up"):
                await pending
        assert s.loader.loads_started == 1
        # The cap frees with the load: the next one goes through.
        await s.loader.load(linear[0].metadata_cid)

    run_with(main, max_concurrent_loads=1, warmup_timeout_ms=1000, session_probe=False)


def test_a_session_within_the_budget_loads_and_is_measured_once(
    run_with, linear: list[PublishResult], tmp_path: Path
):
    async def main(s: Services) -> None:
        model = (await s.loader.load(linear[0].metadata_cid)).model
        assert s.loader.probe is not None and s.loader.probe.trials == 1
        assert s.cache.status()["memory_bytes"][model.model_id] >= model.size_bytes
        await s.repository.unload(model.model_id)
        await s.loader.load(linear[0].metadata_cid)
        assert s.loader.probe.trials == 1  # the same file is not measured again

    run_with(main)
