"""One inference request, from a decoded payload to predictions with per-stage timings.

The path: resolve the model (session cache, or reload if it was evicted) -> license gate ->
preprocess (worker pool) -> ``session.run`` (inference pool, with deadline) -> postprocess.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from postprocessing import Options, PostprocessingError
from preprocessing import Payload, Prepared, TensorPayload, tensor_feeds
from registry.index import ModelIndex
from services.errors import ApiError, GatewayTimeout, ModelNotFound
from services.licensing import Caller, LicenseGate
from services.loader import ModelLoader
from services.runtime import RunTimeout
from services.session_cache import LoadedModel, SessionCache

log = logging.getLogger("cidserve.inference")


@dataclass(slots=True)
class StageTimes:
    preprocessing_ms: float = 0.0
    inference_ms: float = 0.0
    postprocessing_ms: float = 0.0
    total_ms: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            "preprocessing_time_ms": round(self.preprocessing_ms, 3),
            "inference_time_ms": round(self.inference_ms, 3),
            "postprocessing_time_ms": round(self.postprocessing_ms, 3),
            "total_time_ms": round(self.total_ms, 3),
        }


@dataclass(slots=True)
class InferenceResult:
    model: LoadedModel
    predictions: list[dict[str, Any]]
    details: dict[str, Any]
    times: StageTimes


class InferenceService:
    """Runs requests against loaded models; see the module docstring."""

    def __init__(
        self,
        *,
        cache: SessionCache,
        loader: ModelLoader,
        index: ModelIndex,
        gate: LicenseGate,
        preprocess_executor: Executor,
        default_timeout_ms: int,
        reload_evicted: bool,
    ) -> None:
        self.cache = cache
        self.loader = loader
        self.index = index
        self.gate = gate
        self._pre_executor = preprocess_executor
        self.default_timeout_ms = default_timeout_ms
        self.reload_evicted = reload_evicted

    async def resolve(self, model_id: str) -> LoadedModel:
        """The loaded model; an evicted one is reloaded (from local content) if allowed."""
        model = self.cache.get(model_id)
        if model is not None:
            return model
        entry = await self.index.get(model_id) if self.reload_evicted else None
        if entry is None:
            raise ModelNotFound(model_id)
        log.info("reloading evicted model %s", model_id)
        return (await self.loader.load(entry.metadata_cid, entry.token_id)).model

    async def execute(
        self,
        model_id: str,
        payload: Payload,
        options: Options,
        *,
        caller: Caller | None = None,
        timeout_ms: int | None = None,
    ) -> InferenceResult:
        t_start = time.perf_counter()
        timeout_s = (timeout_ms or self.default_timeout_ms) / 1000
        model = await self.resolve(model_id)
        await self.gate.authorize(caller, model.token_id)
        times = StageTimes()
        try:
            async with asyncio.timeout(timeout_s):
                prepared, times.preprocessing_ms = await self._preprocess(model, payload)
            remaining = timeout_s - (time.perf_counter() - t_start)
            outputs, run_s = await model.runner.run(prepared.feeds, max(remaining, 0.001))
            times.inference_ms = run_s * 1000
            t_post = time.perf_counter()
            result = model.postprocessor(outputs, prepared.context, options)
            times.postprocessing_ms = (time.perf_counter() - t_post) * 1000
        except (RunTimeout, TimeoutError):
            model.errors += 1
            raise GatewayTimeout(
                f"inference on {model_id} did not finish within {timeout_s * 1000:.0f} ms",
                model_id=model_id,
            ) from None
        except PostprocessingError as exc:
            model.errors += 1
            raise ApiError(f"model {model_id} gave unexpected outputs: {exc}") from exc
        except Exception:
            model.errors += 1
            raise
        model.requests += 1
        times.total_ms = (time.perf_counter() - t_start) * 1000
        return InferenceResult(model, result.predictions, result.details, times)

    async def _preprocess(self, model: LoadedModel, payload: Payload) -> tuple[Prepared, float]:
        def work() -> tuple[Prepared, float]:
            t0 = time.perf_counter()
            if isinstance(payload, TensorPayload):
                prepared = tensor_feeds(model.metadata, payload, self.loader.input_limits)
            else:
                prepared = model.preprocessor(payload)
            return prepared, (time.perf_counter() - t0) * 1000

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pre_executor, work)
