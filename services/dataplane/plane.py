"""The data plane: one request, from an admitted input to an answer with per-stage timings.

Every request crosses the same steps, in one place (:meth:`DataPlane.admit` then
:meth:`DataPlane._run`):

1. find the model (:meth:`ModelRepository.locate`: in memory, else known from the index);
2. authorize the caller against the model's token (:class:`LicenseGate`), before any work;
   the caller's payload is decoded only after this step (:meth:`DataPlane.admit` returns an
   :class:`Admitted`; the HTTP layer then calls :meth:`DataPlane.execute_admitted` with a
   :class:`Deferred` payload, or :meth:`DataPlane.infer_admitted`; ``execute`` and ``infer``
   do both steps);
3. ``execute`` only: look the reply up in the prediction cache (the payload decoded first; a
   hit returns here: no load, no inference);
4. reload the model if it was evicted;
5. one job in the inference pool (:meth:`ModelRunner.call`, under the request's deadline):
   decode the payload, prepare the feeds (the model's preprocessor, a raw tensor's checks, or
   the Open Inference Protocol's tensor checks), ``session.run``, and for ``execute`` the
   postprocessing; a model trusted to batch across requests prepares in the preprocess pool
   and queues its feeds in its batcher instead;
6. ``execute``: store the reply in the prediction cache; ``infer``: the raw outputs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from postprocessing import NonFiniteOutput, Options, PostprocessingError
from postprocessing import Result as PostResult
from preprocessing import (
    Limits,
    Payload,
    PreprocessingError,
    TensorPayload,
    TensorsPayload,
    tensor_feeds,
)
from services.dataplane.admission import Admission, AdmissionPolicy
from services.dataplane.prediction_cache import CacheStatus, Lookup, PredictionCache
from services.dataplane.protocol import (
    Classes,
    Feeds,
    encoded_images,
    image_batch,
    model_classes,
    protocol_feeds,
)
from services.dataplane.timing import StageRecorder, StageTimes
from services.errors import (
    DependencyUnavailable,
    InferenceTimeout,
    InputOutOfRange,
    ModelOutputError,
)
from services.licensing import Caller, LicenseGate
from services.observability.context import note_model
from services.observability.tracing import record_span, set_attributes, span, tracing_active
from services.repository.model import LoadedModel
from services.repository.repository import ModelRef, ModelRepository
from services.runtime.errors import RunTimeout
from services.runtime.runner import Run

T = TypeVar("T")
R = TypeVar("R")
# Bodies up to this size are parsed or encoded on the event loop (tens of microseconds).
INLINE_BYTES = 64 << 10
Prepare = Callable[[], tuple[Feeds, dict[str, Any]]]
"""Makes a request's feeds (and the context its postprocessing needs); runs in a worker."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """A payload not decoded yet: ``decode()`` runs in the worker that runs the request (one
    hand-off from the event loop for decode, preprocessing, run and postprocessing), or in
    the preprocess pool when the payload is needed first (a prediction-cache lookup)."""

    decode: Callable[[], Payload]
    # The bytes ``decode`` works on: a small payload needed early is decoded on the loop.
    size: int | None = None


_STAGES = ("preprocess", "run", "postprocess")


def _record_stages(model: LoadedModel, stamps: list[int], error: Exception | None) -> None:
    """The spans of the stages a worker ran (from its clock readings ``stamps``); after an
    ``error``, the stage it ended is the last one, marked as failed."""
    if error is not None and stamps:
        stamps = [*stamps, time.time_ns()]
    for i, name in enumerate(_STAGES[: len(stamps) - 1]):
        failed = error if error is not None and i == len(stamps) - 2 else None
        attrs = {"provider": model.provider} if name == "run" else {}
        record_span(name, stamps[i], stamps[i + 1], error=failed, model_id=model.model_id, **attrs)


def _decoded(payload: Payload | Deferred) -> Payload:
    return payload.decode() if isinstance(payload, Deferred) else payload


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request the data plane lets through: the model is known and the caller may run it.

    Nothing of the payload has been decoded yet; ``started`` (``time.perf_counter``) is when
    admission began, the start of the request's stage timings."""

    ref: ModelRef
    started: float

    @property
    def model_id(self) -> str:
        return self.ref.model_id


@dataclass(slots=True)
class InferenceResult:
    """An ``execute`` answer: predictions, details, timings and the prediction-cache status."""

    model_id: str
    predictions: list[dict[str, Any]]
    details: dict[str, Any]
    times: StageTimes
    cache: CacheStatus = "bypass"
    # None when a cache hit was served by a replica that does not hold the model in memory.
    model: LoadedModel | None = None


@dataclass(slots=True)
class TensorRun:
    """An ``infer`` answer: the model that ran and its outputs by name, unprocessed."""

    model: LoadedModel
    outputs: dict[str, np.ndarray]


class DataPlane:
    """Runs requests against the repository's models; see the module docstring."""

    def __init__(
        self,
        *,
        repository: ModelRepository,
        gate: LicenseGate,
        preprocess_executor: Executor,
        default_timeout_ms: int,
        input_limits: Limits,
        predictions: PredictionCache | None = None,
        recorder: StageRecorder | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.repository = repository
        self.gate = gate
        self._pre_executor = preprocess_executor
        self.default_timeout_ms = default_timeout_ms
        self.input_limits = input_limits
        self.predictions = predictions
        self.recorder = recorder or StageRecorder(None)
        # Bounded queue per model (dataplane/admission.py); unbounded when none is given.
        self.admission = admission or Admission(AdmissionPolicy())

    # -- the two request kinds -------------------------------------------------------------

    async def execute(
        self,
        model_id: str,
        payload: Payload | Deferred,
        options: Options,
        *,
        caller: Caller | None = None,
        timeout_ms: int | None = None,
    ) -> InferenceResult:
        """An input (image, tensor, tensors, features) through the model's pre- and
        postprocessing."""
        admitted = await self.admit(model_id, caller)
        return await self.execute_admitted(admitted, payload, options, timeout_ms=timeout_ms)

    async def execute_admitted(
        self,
        admitted: Admitted,
        payload: Payload | Deferred,
        options: Options,
        *,
        timeout_ms: int | None = None,
    ) -> InferenceResult:
        """:meth:`execute` for a request :meth:`admit` let through. A :class:`Deferred`
        payload is decoded in the worker that runs the request, unless the prediction cache
        needs it first."""
        t_start = admitted.started
        ref = admitted.ref
        model_id = ref.model_id
        lookup: Lookup | None = None
        if self._caches(ref):
            if isinstance(payload, Deferred):
                payload = await self.offload(payload.decode, size=payload.size)
            lookup = await self._lookup(ref, payload, options)
        if lookup is not None and lookup.status == "hit":
            assert lookup.predictions is not None and lookup.details is not None
            if ref.loaded is not None:
                ref.loaded.requests += 1
            times = StageTimes(total_ms=(time.perf_counter() - t_start) * 1000)
            self.recorder.record(model_id, times, computed=False)
            return InferenceResult(
                model_id, lookup.predictions, lookup.details, times, "hit", ref.loaded
            )
        model = await self.repository.materialize(ref)

        def prepare() -> tuple[Feeds, dict[str, Any]]:
            decoded = _decoded(payload)
            if isinstance(decoded, TensorPayload | TensorsPayload):
                prepared = tensor_feeds(model.metadata, decoded, self.input_limits)
            else:
                prepared = model.preprocessor(decoded)
            return prepared.feeds, prepared.context

        def finish(outputs: dict[str, np.ndarray], context: dict[str, Any]) -> PostResult:
            return model.postprocessor(outputs, context, options)

        try:
            result, times = await self._run(model, prepare, finish, timeout_ms, t_start)
        except NonFiniteOutput as exc:
            raise InputOutOfRange(
                f"model {model_id} computes NaN or infinity for this input ({exc}): the input is "
                "outside the range the model handles",
                model_id=model_id,
            ) from exc
        except PostprocessingError as exc:
            model.errors += 1
            raise ModelOutputError(f"model {model_id} gave unexpected outputs: {exc}") from exc
        status: CacheStatus = "bypass"
        if lookup is not None and lookup.key is not None and model.metadata.cache_predictions:
            assert self.predictions is not None
            status = lookup.status
            if lookup.status == "miss":
                with span("cache.store", model_id=model_id):
                    await self.predictions.store_reply(
                        lookup.key, result.predictions, result.details
                    )
        times.total_ms = (time.perf_counter() - t_start) * 1000
        self.recorder.record(model_id, times, computed=True)
        return InferenceResult(model_id, result.predictions, result.details, times, status, model)

    async def infer(
        self,
        model_id: str,
        feeds: Feeds,
        *,
        caller: Caller | None = None,
        timeout_ms: int | None = None,
    ) -> TensorRun:
        """Client tensors in, every output out, unprocessed (the Open Inference Protocol).

        Each model input must be fed once, with the model's dtype, rank and fixed dimensions;
        dynamic dimensions (the batch too) take any size. A ``BYTES`` tensor fed to the input
        a model takes encoded images on holds encoded images: each goes through the model's
        preprocessing and the results run as one batch."""
        admitted = await self.admit(model_id, caller)
        return await self.infer_admitted(admitted, feeds, timeout_ms=timeout_ms)

    async def infer_admitted(
        self, admitted: Admitted, feeds: Feeds, *, timeout_ms: int | None = None
    ) -> TensorRun:
        """:meth:`infer` for a request :meth:`admit` let through."""
        t_start = admitted.started
        model = await self.repository.materialize(admitted.ref)
        limit = self.input_limits.max_tensor_elements

        def prepare() -> tuple[Feeds, dict[str, Any]]:
            images = encoded_images(model, feeds)
            if images is not None:
                return image_batch(model, images, limit)(), {}
            return protocol_feeds(model.metadata, feeds, limit), {}

        def finish(outputs: dict[str, np.ndarray], _: dict[str, Any]) -> dict[str, np.ndarray]:
            return outputs

        outputs, times = await self._run(model, prepare, finish, timeout_ms, t_start)
        times.total_ms = (time.perf_counter() - t_start) * 1000
        self.recorder.record(model.model_id, times, computed=True)
        return TensorRun(model, outputs)

    async def top_classes(
        self, model: LoadedModel, output: str, values: np.ndarray, k: int
    ) -> Classes | None:
        """The model's own top ``k`` classes of one output's rows (None: it does not classify
        that output); in the preprocess pool."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._pre_executor, model_classes, model, output, values, k
            )
        except PostprocessingError as exc:
            raise ModelOutputError(
                f"model {model.model_id} gave unexpected outputs: {exc}"
            ) from exc

    def ready(self, model_id: str) -> LoadedModel:
        """The model when it is in memory and can answer now; an evicted one is not ready."""
        model = self.repository.peek(model_id)
        if model is None:
            raise DependencyUnavailable(
                f"model {model_id!r} is not in memory (evicted); load it again, or send it a "
                "request to reload it"
            )
        return model

    # -- the shared steps ------------------------------------------------------------------

    async def admit(
        self, model_id: str, caller: Caller | None, *, timeout_ms: int | None = None
    ) -> Admitted:
        """Find the model and let the license gate decide, before any work (a caller without
        a license causes no load, no decode and no cache lookup): the first step of every
        request. ``ModelNotFound`` for an unknown model; the gate's errors for a caller who
        may not run it; :class:`Overloaded` when the model's queue would refuse the request
        now (before its body is decoded)."""
        started = time.perf_counter()
        ref = await self.repository.locate(model_id)
        note_model(model_id)
        await self.gate.authorize(caller, ref.token_id)
        self.admission.check(ref.model_id, (timeout_ms or self.default_timeout_ms) / 1000)
        return Admitted(ref, started)

    async def offload(self, fn: Callable[..., T], *args: Any, size: int | None = None) -> T:
        """``fn(*args)`` in the preprocess pool: decoding and parsing of request bodies, which
        must not run on the event loop. With ``size`` (the bytes ``fn`` works on) at most
        :data:`INLINE_BYTES`, it runs here instead: parsing a few kilobytes takes less than
        handing them to a worker thread and back."""
        if size is not None and size <= INLINE_BYTES:
            return fn(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pre_executor, fn, *args)

    async def _lookup(self, ref: ModelRef, payload: Payload, options: Options) -> Lookup:
        assert self.predictions is not None
        with span("cache.lookup", model_id=ref.model_id) as traced:
            lookup = await self.predictions.lookup(ref.metadata_cid, payload, options)
            set_attributes(traced, cache_status=lookup.status)
            return lookup

    def _caches(self, ref: ModelRef) -> bool:
        """Whether this model's replies go through the prediction cache."""
        if self.predictions is None or not self.predictions.enabled:
            return False
        return ref.loaded is None or ref.loaded.metadata.cache_predictions

    # -- admission: one slot of the model's bounded queue around the work (admission.py) --

    async def _run(
        self,
        model: LoadedModel,
        prepare: Prepare,
        finish: Callable[[dict[str, np.ndarray], dict[str, Any]], R],
        timeout_ms: int | None,
        t_start: float,
    ) -> tuple[R, StageTimes]:
        """:meth:`_run_admitted` in one of the model's slots; a full queue refuses with 503
        before any decoding or run, and the slot is given back however the run ends."""
        deadline_s = (timeout_ms or self.default_timeout_ms) / 1000
        async with self.admission.slot(model.model_id, deadline_s):
            return await self._run_admitted(model, prepare, finish, timeout_ms, t_start)

    # -- end of admission ------------------------------------------------------------------

    async def _run_admitted(
        self,
        model: LoadedModel,
        prepare: Prepare,
        finish: Callable[[dict[str, np.ndarray], dict[str, Any]], R],
        timeout_ms: int | None,
        t_start: float,
    ) -> tuple[R, StageTimes]:
        """``prepare``, the run and ``finish`` within the request's deadline; returns what
        ``finish`` made of the outputs and the stage times so far.

        One job in the inference pool does all three (:meth:`ModelRunner.call`), except for a
        model that batches across requests: its feeds are prepared in the preprocess pool,
        then queued with other requests' (:mod:`services.runtime.batching`)."""
        timeout_s = (timeout_ms or self.default_timeout_ms) / 1000
        times = StageTimes()
        try:
            if model.runner.batcher is not None:
                result = await self._batched(model, prepare, finish, timeout_s, t_start, times)
            else:
                result = await self._one_job(model, prepare, finish, timeout_s, t_start, times)
        except (RunTimeout, TimeoutError):
            model.errors += 1
            raise InferenceTimeout(
                f"inference on {model.model_id} did not finish within {timeout_s * 1000:.0f} ms",
                model_id=model.model_id,
            ) from None
        except InvalidArgument as exc:  # shapes the model cannot combine (dynamic dims)
            model.errors += 1
            raise PreprocessingError(f"the model rejected the inputs: {exc}") from None
        except (NonFiniteOutput, PostprocessingError):
            raise  # the caller decides what these say about the model
        except Exception:
            model.errors += 1
            raise
        model.requests += 1
        return result, times

    async def _one_job(
        self,
        model: LoadedModel,
        prepare: Prepare,
        finish: Callable[[dict[str, np.ndarray], dict[str, Any]], R],
        timeout_s: float,
        t_start: float,
        times: StageTimes,
    ) -> R:
        """Decode, preprocess, run and postprocess in one inference worker (their spans are
        recorded afterwards from the worker's clock readings)."""
        t_submit = time.perf_counter()
        stamps: list[int] = []  # time.time_ns() at each stage boundary, for the spans
        traced = tracing_active()

        def work(run: Run) -> R:
            t0 = time.perf_counter()
            if traced:
                stamps.append(time.time_ns())
            times.queue_ms = (t0 - t_submit) * 1000
            feeds, context = prepare()
            t1 = time.perf_counter()
            if traced:
                stamps.append(time.time_ns())
            times.preprocessing_ms = (t1 - t0) * 1000
            outputs = run(feeds)
            t2 = time.perf_counter()
            if traced:
                stamps.append(time.time_ns())
            done = finish(outputs, context)
            times.postprocessing_ms = (time.perf_counter() - t2) * 1000
            if traced:
                stamps.append(time.time_ns())
            return done

        remaining = timeout_s - (t_submit - t_start)
        try:
            result, run_s = await model.runner.call(work, max(remaining, 0.001))
        except Exception as exc:
            if traced:
                _record_stages(model, stamps, exc)
            raise
        times.inference_ms = run_s * 1000
        if traced:
            _record_stages(model, stamps, None)
        return result

    async def _batched(
        self,
        model: LoadedModel,
        prepare: Prepare,
        finish: Callable[[dict[str, np.ndarray], dict[str, Any]], R],
        timeout_s: float,
        t_start: float,
        times: StageTimes,
    ) -> R:
        """Feeds prepared in the preprocess pool, the run through the model's batcher (or
        alone when the feeds cannot batch), ``finish`` on the event loop."""
        loop = asyncio.get_running_loop()
        t_submit = time.perf_counter()

        def timed() -> tuple[Feeds, dict[str, Any], float, float]:
            t0 = time.perf_counter()
            feeds, context = prepare()
            return feeds, context, (time.perf_counter() - t0) * 1000, (t0 - t_submit) * 1000

        model_id = model.model_id
        async with asyncio.timeout(timeout_s):
            with span("preprocess", model_id=model_id):
                (
                    feeds,
                    context,
                    times.preprocessing_ms,
                    times.queue_ms,
                ) = await loop.run_in_executor(self._pre_executor, timed)
        t_run = time.perf_counter()
        remaining = timeout_s - (t_run - t_start)
        with span("run", model_id=model_id, provider=model.provider):
            outputs, run_s = await model.runner.run(feeds, max(remaining, 0.001))
        # The rest of the wall time around session.run: waiting for an inference worker.
        times.queue_ms += max(time.perf_counter() - t_run - run_s, 0.0) * 1000
        times.inference_ms = run_s * 1000
        t_post = time.perf_counter()
        with span("postprocess", model_id=model_id):
            done = finish(outputs, context)
        times.postprocessing_ms = (time.perf_counter() - t_post) * 1000
        return done
