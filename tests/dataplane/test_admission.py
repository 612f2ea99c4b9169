"""Admission control: a model's bounded queue refuses with 503 + Retry-After before any work,
and gives every slot back however its request ends."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from postprocessing import Options
from preprocessing import PreprocessingError, TensorPayload
from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.dataplane.admission import Admission, AdmissionPolicy
from services.errors import InferenceTimeout, Overloaded
from services.wiring import Services
from tests.models import slow_model

SLOW_X = np.ones((1, 1024), dtype=np.float32)
X = np.arange(8, dtype=np.float32).reshape(1, 8) / 10


@pytest.fixture(scope="module")
def slow(unit_store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory) -> PublishResult:
    """A model whose run takes a few hundred ms: long enough to hold a slot while the test
    looks at the queue."""
    path = slow_model(tmp_path_factory.mktemp("admission") / "slowish.onnx", depth=120)
    return asyncio.run(publish_model(unit_store, path, name="slowish"))


class Clock:
    """A clock the test moves by hand: the admission's estimate is about time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_queue_refuses_at_once_and_the_admitted_requests_finish(
    run_with, slow: PublishResult
):
    async def main(s: Services) -> None:
        model_id = (await s.repository.load(slow.metadata_cid, warmup=False)).model.model_id
        opts = Options(top_k=1)
        tasks = [
            asyncio.create_task(s.dataplane.execute(model_id, TensorPayload(SLOW_X + i), opts))
            for i in range(2)
        ]
        await asyncio.sleep(0.05)
        assert s.dataplane.admission.depth(model_id) == 2
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Overloaded) as refused:
            await s.dataplane.execute(model_id, TensorPayload(SLOW_X + 9), opts)
        assert loop.time() - t0 < 0.2  # refused without waiting for the queue
        assert refused.value.extra["reason"] == "queue_full"
        assert refused.value.retry_after_s >= 1
        # Refused at admission, before the route decodes the body: admit() alone refuses.
        with pytest.raises(Overloaded):
            await s.dataplane.admit(model_id, None)
        assert "CIDSERVE_MAX_QUEUE_PER_MODEL" in refused.value.message
        results = await asyncio.gather(*tasks)
        assert all(r.predictions for r in results)
        assert s.dataplane.admission.depth(model_id) == 0
        # Room again: the next request runs.
        again = await s.dataplane.execute(model_id, TensorPayload(SLOW_X + 5), opts)
        assert again.predictions
        shed = s.metrics.requests_shed.labels("queue_full")._value.get()
        assert shed == 2  # the execute and the bare admit

    run_with(main, max_queue_per_model=2, inference_workers=1, prediction_cache=False)


def test_slots_come_back_after_timeouts_cancellations_and_errors(run_with, slow: PublishResult):
    async def main(s: Services) -> None:
        model_id = (await s.repository.load(slow.metadata_cid, warmup=False)).model.model_id
        with pytest.raises(InferenceTimeout):
            await s.dataplane.execute(model_id, TensorPayload(SLOW_X), Options(), timeout_ms=30)
        assert s.dataplane.admission.depth(model_id) == 0
        task = asyncio.create_task(s.dataplane.execute(model_id, TensorPayload(SLOW_X), Options()))
        await asyncio.sleep(0.05)
        assert s.dataplane.admission.depth(model_id) == 1
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        assert s.dataplane.admission.depth(model_id) == 0
        with pytest.raises(PreprocessingError):
            await s.dataplane.execute(
                model_id, TensorPayload(np.ones((1, 3), np.float32)), Options()
            )
        assert s.dataplane.admission.depth(model_id) == 0

    run_with(main, max_queue_per_model=1, inference_workers=1, prediction_cache=False)


def test_the_queue_delay_bound_uses_the_models_recent_pace_and_sets_retry_after():
    clock = Clock()
    admission = Admission(AdmissionPolicy(max_queue_delay_ms=2500), clock=clock)

    async def main() -> None:
        # One request at a time, 1 s each: the model clears one request a second.
        for _ in range(3):
            async with admission.slot("m"):
                clock.now += 1.0
        assert admission.backlog_s("m") == pytest.approx(0.0)
        held = [admission.slot("m") for _ in range(3)]
        for cm in held[:2]:
            await cm.__aenter__()
        assert admission.backlog_s("m") == pytest.approx(2.0)
        await held[2].__aenter__()  # 2 s of work ahead: under 2.5 s, admitted
        with pytest.raises(Overloaded) as refused:  # 3 s ahead: over the bound
            async with admission.slot("m"):
                pass
        assert refused.value.extra["reason"] == "queue_delay"
        assert refused.value.retry_after_s == 3
        for cm in held:
            clock.now += 1.0
            await cm.__aexit__(None, None, None)
        assert admission.depth("m") == 0
        async with admission.slot("m"):  # drained: admitted again
            pass

    asyncio.run(main())


def test_a_model_without_a_history_is_bounded_by_count_only():
    admission = Admission(AdmissionPolicy(max_queue_per_model=0, max_queue_delay_ms=1))

    async def main() -> None:
        held = [admission.slot("new") for _ in range(50)]
        for cm in held:
            await cm.__aenter__()
        assert admission.depth("new") == 50 and admission.backlog_s("new") is None
        for cm in held:
            await cm.__aexit__(None, None, None)

    asyncio.run(main())


def test_queues_are_per_model(run_with, linear: list[PublishResult], slow: PublishResult):
    async def main(s: Services) -> None:
        slow_id = (await s.repository.load(slow.metadata_cid, warmup=False)).model.model_id
        lin_id = (await s.repository.load(linear[0].metadata_cid)).model.model_id
        busy = asyncio.create_task(s.dataplane.execute(slow_id, TensorPayload(SLOW_X), Options()))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await s.dataplane.execute(slow_id, TensorPayload(SLOW_X + 1), Options())
        # Another model's queue is its own.
        result = await s.dataplane.execute(lin_id, TensorPayload(X), Options())
        assert result.predictions
        await busy

    run_with(main, max_queue_per_model=1, inference_workers=2, prediction_cache=False)


def test_a_request_that_would_outwait_its_own_timeout_is_refused_now():
    clock = Clock()
    admission = Admission(AdmissionPolicy(), clock=clock)

    async def main() -> None:
        async with admission.slot("m"):
            clock.now += 0.5  # the model clears a request every 0.5 s
        held = [admission.slot("m") for _ in range(4)]
        for cm in held:
            await cm.__aenter__()
        # 2 s of work ahead: a request with a 1 s deadline would only time out (504).
        with pytest.raises(Overloaded) as refused:
            async with admission.slot("m", deadline_s=1.0):
                pass
        assert refused.value.extra["reason"] == "queue_delay"
        assert "timeout" in refused.value.message
        assert refused.value.retry_after_s == 2
        async with admission.slot("m", deadline_s=30.0):  # a patient request waits its turn
            pass
        for cm in held:
            await cm.__aexit__(None, None, None)

    asyncio.run(main())
