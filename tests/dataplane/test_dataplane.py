"""The data plane on small real models: answers, license gate first, cache, reloads, deadlines."""

from __future__ import annotations

import numpy as np
import pytest

from postprocessing import Options
from preprocessing import PreprocessingError, TensorPayload
from registry.publish import PublishResult
from services.errors import (
    DependencyUnavailable,
    InferenceTimeout,
    ModelNotFound,
    NotLicensed,
    SignatureRequired,
)
from services.licensing import Caller
from services.wiring import Services
from tests.models import linear_weights
from tests.planes import Grants

X = np.arange(8, dtype=np.float32).reshape(1, 8) / 10


def expected_classes(seed: int, x: np.ndarray) -> list[int]:
    w, b = linear_weights(seed)
    logits = (x @ w + b)[0]
    return [int(i) for i in np.argsort(-logits, kind="stable")]


def test_execute_answers_what_the_model_computes(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        model_id = (await s.repository.load(linear[0].metadata_cid)).model.model_id
        result = await s.dataplane.execute(model_id, TensorPayload(X), Options(top_k=0))
        assert [p["class_id"] for p in result.predictions] == expected_classes(0, X)
        assert sum(p["confidence"] for p in result.predictions) == pytest.approx(1.0, abs=1e-5)
        assert result.cache == "miss"
        assert result.times.inference_ms > 0 and result.times.total_ms >= result.times.inference_ms
        again = await s.dataplane.execute(model_id, TensorPayload(X), Options(top_k=0))
        assert again.cache == "hit" and again.predictions == result.predictions
        # Another input is another entry: it runs.
        other = await s.dataplane.execute(model_id, TensorPayload(X + 1), Options(top_k=0))
        assert other.cache == "miss"
        assert [p["class_id"] for p in other.predictions] == expected_classes(0, X + 1)

    run_with(main)


def test_unknown_model_is_not_found(run_with):
    async def main(s: Services) -> None:
        with pytest.raises(ModelNotFound):
            await s.dataplane.execute("nope-00000000", TensorPayload(X), Options())
        with pytest.raises(ModelNotFound):
            await s.dataplane.infer("nope-00000000", {"x": X})

    run_with(main)


def test_the_gate_comes_before_any_work(run_with, linear: list[PublishResult]):
    """A licensed model: no caller -> SignatureRequired, a caller without a license ->
    NotLicensed; neither reloads an evicted model nor reaches the prediction cache."""
    grants = Grants({("0xalice", 7)})
    alice, mallory = Caller("0xalice"), Caller("0xmallory")

    async def main(s: Services) -> None:
        licensed = (await s.repository.load(linear[0].metadata_cid, token_id=7)).model.model_id
        first = await s.dataplane.execute(licensed, TensorPayload(X), Options(), caller=alice)
        assert first.cache == "miss"
        # Evict it: the next request would have to reload it.
        await s.repository.load(linear[1].metadata_cid)
        assert s.repository.peek(licensed) is None
        loads = s.loader.loads_started
        with pytest.raises(SignatureRequired):
            await s.dataplane.execute(licensed, TensorPayload(X), Options())
        with pytest.raises(NotLicensed):
            await s.dataplane.execute(licensed, TensorPayload(X), Options(), caller=mallory)
        with pytest.raises(NotLicensed):
            await s.dataplane.infer(licensed, {"x": X}, caller=mallory)
        assert s.loader.loads_started == loads, "a refused caller caused a load"
        # The licensee gets the cached answer without a reload, then a reload for a new input.
        hit = await s.dataplane.execute(licensed, TensorPayload(X), Options(), caller=alice)
        assert hit.cache == "hit" and s.loader.loads_started == loads
        fresh = await s.dataplane.execute(licensed, TensorPayload(X * 2), Options(), caller=alice)
        assert fresh.cache == "miss" and s.loader.loads_started == loads + 1

    run_with(main, licensing=grants, max_models_in_memory=1)


def test_evicted_model_reloads_and_answers_the_same(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        ids = [(await s.repository.load(p.metadata_cid)).model.model_id for p in linear]
        assert [m.model_id for m in s.repository.models()] == ids[-1:]
        result = await s.dataplane.execute(ids[0], TensorPayload(X), Options(top_k=0))
        assert [p["class_id"] for p in result.predictions] == expected_classes(0, X)
        assert s.repository.peek(ids[0]) is not None and s.repository.peek(ids[2]) is None
        with pytest.raises(DependencyUnavailable):
            s.dataplane.ready(ids[2])
        assert s.dataplane.ready(ids[0]).model_id == ids[0]

    run_with(main, max_models_in_memory=1, prediction_cache=False)


def test_infer_checks_tensors_against_the_model(run_with, linear: list[PublishResult]):
    async def main(s: Services) -> None:
        model_id = (await s.repository.load(linear[2].metadata_cid)).model.model_id
        batch = np.stack([X[0], X[0] + 1, X[0] * 3])
        run = await s.dataplane.infer(model_id, {"x": batch})
        w, b = linear_weights(2)
        np.testing.assert_allclose(run.outputs["y"], batch @ w + b, rtol=1e-5)
        with pytest.raises(PreprocessingError, match=r"'x'.*datatype INT64"):
            await s.dataplane.infer(model_id, {"x": batch.astype(np.int64)})
        with pytest.raises(PreprocessingError, match="dimension 1 is 3, not 8"):
            await s.dataplane.infer(model_id, {"x": batch[:, :3]})
        with pytest.raises(PreprocessingError, match="no input 'z'"):
            await s.dataplane.infer(model_id, {"x": batch, "z": batch})
        # The model's own classification of its output, top 2 per row.
        classes = await s.dataplane.top_classes(run.model, "y", run.outputs["y"], 2)
        assert classes is not None and len(classes) == 3
        assert [c[1] for c in classes[0]] == expected_classes(2, batch[:1])[:2]

    run_with(main)


def test_a_run_past_its_deadline_is_terminated(run_with, slow: PublishResult):
    async def main(s: Services) -> None:
        model_id = (await s.repository.load(slow.metadata_cid, warmup=False)).model.model_id
        x = np.ones((1, 1024), dtype=np.float32)
        with pytest.raises(InferenceTimeout, match="did not finish within 50 ms"):
            await s.dataplane.execute(model_id, TensorPayload(x), Options(), timeout_ms=50)
        assert s.repository.peek(model_id).errors == 1

    run_with(main, prediction_cache=False)
