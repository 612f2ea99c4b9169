"""One inference request, from a decoded payload to predictions with per-stage timings.

The path: identify the model (session cache, or the model index if it is not in memory) ->
license gate -> prediction cache lookup (a hit returns here: no decode, no inference) ->
resolve (reload if it was evicted) -> preprocess (worker pool) -> ``session.run`` (inference
pool, with deadline) -> postprocess -> prediction cache store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from postprocessing import Options, PostprocessingError
from preprocessing import (
    ImagePayload,
    InputTooLarge,
    Payload,
    Prepared,
    PreprocessingError,
    TensorPayload,
    tensor_feeds,
)
from preprocessing.tensor import numpy_dtype
from registry.index import ModelIndex
from registry.metadata import ModelMetadata, TensorSpec
from services.errors import ApiError, GatewayTimeout, ModelNotFound, NotFound
from services.licensing import Caller, LicenseGate
from services.loader import ModelLoader
from services.metrics import STAGES
from services.observability import note_model, note_stages
from services.prediction_cache import CacheStatus, PredictionCache
from services.runtime import RunTimeout
from services.session_cache import LoadedModel, SessionCache
from services.v2_codec import datatype_for, datatype_of, protocol_shape

if TYPE_CHECKING:
    from services.metrics import Metrics

log = logging.getLogger("cidserve.inference")


@dataclass(slots=True)
class StageTimes:
    preprocessing_ms: float = 0.0
    inference_ms: float = 0.0
    postprocessing_ms: float = 0.0
    total_ms: float = 0.0
    # Waiting for a preprocess or inference worker (not in the reply; in metrics and logs).
    queue_ms: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            "preprocessing_time_ms": round(self.preprocessing_ms, 3),
            "inference_time_ms": round(self.inference_ms, 3),
            "postprocessing_time_ms": round(self.postprocessing_ms, 3),
            "total_time_ms": round(self.total_ms, 3),
        }


@dataclass(slots=True)
class InferenceResult:
    model_id: str
    predictions: list[dict[str, Any]]
    details: dict[str, Any]
    times: StageTimes
    cache: CacheStatus = "bypass"
    # None when a cache hit was served by a replica that does not hold the model in memory.
    model: LoadedModel | None = None


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
        predictions: PredictionCache | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cache = cache
        self.loader = loader
        self.index = index
        self.gate = gate
        self._pre_executor = preprocess_executor
        self.default_timeout_ms = default_timeout_ms
        self.reload_evicted = reload_evicted
        self.predictions = predictions
        self.metrics = metrics
        # Histogram children by model and stage, looked up once per model (labels() is the
        # expensive part of an observation).
        self._stage_hists: dict[str, dict[str, Any]] = {}

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
        model = self.cache.get(model_id)
        if model is not None:
            metadata_cid, token_id = model.metadata_cid, model.token_id
        else:
            entry = await self.index.get(model_id) if self.reload_evicted else None
            if entry is None:
                raise ModelNotFound(model_id)
            metadata_cid, token_id = entry.metadata_cid, entry.token_id
        note_model(model_id)
        # The gate comes first: a cached answer never reaches a caller who may not run it.
        await self.gate.authorize(caller, token_id)
        lookup = None
        if self.predictions is not None and (model is None or model.metadata.cache_predictions):
            lookup = await self.predictions.lookup(metadata_cid, payload, options)
            if lookup.status == "hit":
                assert lookup.predictions is not None and lookup.details is not None
                if model is not None:
                    model.requests += 1
                times = StageTimes(total_ms=(time.perf_counter() - t_start) * 1000)
                self._record(model_id, times, computed=False)
                return InferenceResult(
                    model_id, lookup.predictions, lookup.details, times, "hit", model
                )
        if model is None:
            log.info("reloading evicted model %s", model_id)
            model = (await self.loader.load(metadata_cid, token_id)).model
        times = StageTimes()
        try:
            async with asyncio.timeout(timeout_s):
                prepared, times.preprocessing_ms, times.queue_ms = await self._preprocess(
                    model, payload
                )
            t_run = time.perf_counter()
            remaining = timeout_s - (t_run - t_start)
            outputs, run_s = await model.runner.run(prepared.feeds, max(remaining, 0.001))
            # The rest of the wall time around session.run: waiting for an inference worker.
            times.queue_ms += max(time.perf_counter() - t_run - run_s, 0.0) * 1000
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
        status: CacheStatus = "bypass"
        if lookup is not None and lookup.key is not None and model.metadata.cache_predictions:
            assert self.predictions is not None
            status = lookup.status
            if lookup.status == "miss":
                await self.predictions.store_reply(lookup.key, result.predictions, result.details)
        times.total_ms = (time.perf_counter() - t_start) * 1000
        self._record(model_id, times, computed=True)
        return InferenceResult(model_id, result.predictions, result.details, times, status, model)

    def _record(self, model_id: str, times: StageTimes, *, computed: bool) -> None:
        """Stage histograms and the stage fields of the request's log line (microseconds).

        A reply from the prediction cache (``computed=False``) has only a ``total``."""
        if computed:
            stages = {
                "queue": times.queue_ms,
                "preprocess": times.preprocessing_ms,
                "inference": times.inference_ms,
                "postprocess": times.postprocessing_ms,
                "total": times.total_ms,
            }
        else:
            stages = {"total": times.total_ms}
        note_stages({f"{k}_ms": round(v, 3) for k, v in stages.items()})
        if self.metrics is not None:
            hists = self._stage_hists.get(model_id)
            if hists is None:
                hist = self.metrics.request_duration
                hists = {s: hist.labels(model_id, s) for s in STAGES}
                self._stage_hists[model_id] = hists
            for stage, ms in stages.items():
                hists[stage].observe(ms / 1000)

    async def _preprocess(
        self, model: LoadedModel, payload: Payload
    ) -> tuple[Prepared, float, float]:
        """Preprocess in the worker pool; returns the feeds, the work's and the wait's ms."""
        t_submit = time.perf_counter()

        def work() -> tuple[Prepared, float, float]:
            t0 = time.perf_counter()
            if isinstance(payload, TensorPayload):
                prepared = tensor_feeds(model.metadata, payload, self.loader.input_limits)
            else:
                prepared = model.preprocessor(payload)
            return prepared, (time.perf_counter() - t0) * 1000, (t0 - t_submit) * 1000

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pre_executor, work)

    # --- Open Inference Protocol (KServe V2): tensors in, tensors out --------------------------

    async def model_id_named(self, name: str, version: str | None = None) -> str:
        """The ``model_id`` a protocol model name stands for.

        ``name`` is a ``model_id`` itself, or a published model name; with ``version`` the
        model's metadata version must match. Among several models of one name, the most
        recently used one in the session cache wins, then the most recently loaded one in
        the index. Unknown: 404.
        """

        def fits(v: str) -> bool:
            return version is None or v == version

        loaded = self.cache.peek(name)
        entry = None if loaded is not None else await self.index.get(name)
        known_version = loaded.metadata.version if loaded else entry.version if entry else None
        if known_version is not None:
            if not fits(known_version):
                raise NotFound(
                    f"model {name!r} has no version {version!r}; its version is {known_version!r}",
                    model_id=name,
                )
            return name
        for model in reversed(self.cache.models()):
            if model.metadata.name == name and fits(model.metadata.version):
                return model.model_id
        named = [e for e in await self.index.entries() if e.name == name]
        entries = [e for e in named if fits(e.version)]
        if entries:
            return max(entries, key=lambda e: e.last_loaded_at).model_id
        if named:
            versions = ", ".join(sorted({repr(e.version) for e in named}))
            raise NotFound(f"model {name!r} has no version {version!r}; it has {versions}")
        raise ModelNotFound(name)

    async def infer_tensors(
        self,
        model_id: str,
        feeds: dict[str, np.ndarray],
        *,
        caller: Caller | None = None,
        timeout_ms: int | None = None,
    ) -> TensorRun:
        """Run the model on client tensors and return every output, unprocessed.

        Each model input must be fed once, with the model's dtype, rank and fixed dimensions;
        dynamic dimensions (the batch too) take any size. A ``BYTES`` tensor (an object array
        of ``bytes``) fed to the image input of a model with ``image`` preprocessing holds
        encoded images instead: see :meth:`infer_images`.
        """
        model = await self._authorized(model_id, caller)
        image_input = _image_input(model, feeds)
        if image_input is not None:
            images = [_image_bytes(image_input, x) for x in feeds[image_input].reshape(-1)]
            return await self._run_images(model, images, timeout_ms)
        limits = self.loader.input_limits

        def check() -> dict[str, np.ndarray]:
            return protocol_feeds(model.metadata, feeds, limits.max_tensor_elements)

        return await self._run_protocol(model, check, timeout_ms)

    async def infer_images(
        self,
        model_id: str,
        images: list[bytes],
        *,
        caller: Caller | None = None,
        timeout_ms: int | None = None,
    ) -> TensorRun:
        """Run the model's preprocessing on each encoded image, then one run on the batch.

        More than one image needs a model whose batch dimension is dynamic (or that size)."""
        model = await self._authorized(model_id, caller)
        return await self._run_images(model, images, timeout_ms)

    async def _authorized(self, model_id: str, caller: Caller | None) -> LoadedModel:
        """The model, once the license gate let ``caller`` through; an evicted model is
        reloaded only after the gate (a caller without a license causes no load)."""
        loaded = self.cache.peek(model_id)
        if loaded is not None:
            token_id = loaded.token_id
        else:
            entry = await self.index.get(model_id) if self.reload_evicted else None
            if entry is None:
                raise ModelNotFound(model_id)
            token_id = entry.token_id
        await self.gate.authorize(caller, token_id)
        return await self.resolve(model_id)

    async def top_classes(
        self, model: LoadedModel, output: str, values: np.ndarray, k: int
    ) -> list[list[tuple[float, int, str | None]]] | None:
        """The model's own classification of ``values`` (one output's batch), top ``k`` per row:
        ``(confidence, class index, label or None)``. None when ``output`` is not the output a
        classification model's postprocessing reads (then raw values are all there is)."""
        post = model.metadata.postprocessing
        if post.kind != "classification" or model.metadata.output_spec(post.output).name != output:
            return None
        if values.ndim == 0:
            return None

        def work() -> list[list[tuple[float, int, str | None]]]:
            rows = values.reshape(values.shape[0], -1) if values.ndim > 1 else values[None]
            out: list[list[tuple[float, int, str | None]]] = []
            for row in rows:
                result = model.postprocessor({output: row[None]}, {}, Options(top_k=k))
                out.append(
                    [
                        (
                            float(p["confidence"]),
                            int(p["class_id"]),
                            None if p["class"] == str(p["class_id"]) else str(p["class"]),
                        )
                        for p in result.predictions
                    ]
                )
            return out

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pre_executor, work)
        except PostprocessingError as exc:
            raise ApiError(f"model {model.model_id} gave unexpected outputs: {exc}") from exc

    async def _run_images(
        self, model: LoadedModel, images: list[bytes], timeout_ms: int | None
    ) -> TensorRun:
        metadata = model.metadata
        if metadata.preprocessing.kind != "image":
            raise PreprocessingError(
                f"model {model.model_id} has {metadata.preprocessing.kind} preprocessing; "
                "it does not take encoded images"
            )
        spec = metadata.input_spec(metadata.preprocessing.input)
        n = len(images)
        if n == 0:
            raise PreprocessingError(f"input {spec.name!r} holds no image")
        batch = spec.shape[0] if spec.shape else None
        if isinstance(batch, int) and batch != n:
            raise PreprocessingError(
                f"input {spec.name!r} takes {batch} image(s) per request; got {n}"
            )
        limit = self.loader.input_limits.max_tensor_elements

        def prepare() -> dict[str, np.ndarray]:
            arrays: list[np.ndarray] = []
            for data in images:
                arrays.append(model.preprocessor(ImagePayload(data)).feeds[spec.name])
                if arrays[0].size * n > limit:
                    raise InputTooLarge(
                        f"{n} images make {arrays[0].size * n} elements for input "
                        f"{spec.name!r}; the limit is {limit}"
                    )
            return {spec.name: arrays[0] if n == 1 else np.concatenate(arrays, axis=0)}

        return await self._run_protocol(model, prepare, timeout_ms)

    async def _run_protocol(
        self,
        model: LoadedModel,
        prepare: Callable[[], dict[str, np.ndarray]],
        timeout_ms: int | None,
    ) -> TensorRun:
        """``prepare`` in the preprocess pool, then the run, within the request's deadline."""
        t_start = time.perf_counter()
        timeout_s = (timeout_ms or self.default_timeout_ms) / 1000
        loop = asyncio.get_running_loop()
        note_model(model.model_id)
        times = StageTimes()

        def timed() -> tuple[dict[str, np.ndarray], float, float]:
            t0 = time.perf_counter()
            feeds = prepare()
            return feeds, (time.perf_counter() - t0) * 1000, (t0 - t_start) * 1000

        try:
            async with asyncio.timeout(timeout_s):
                feeds, times.preprocessing_ms, times.queue_ms = await loop.run_in_executor(
                    self._pre_executor, timed
                )
            t_run = time.perf_counter()
            remaining = timeout_s - (t_run - t_start)
            outputs, run_s = await model.runner.run(feeds, max(remaining, 0.001))
            times.queue_ms += max(time.perf_counter() - t_run - run_s, 0.0) * 1000
            times.inference_ms = run_s * 1000
        except (RunTimeout, TimeoutError):
            model.errors += 1
            raise GatewayTimeout(
                f"inference on {model.model_id} did not finish within {timeout_s * 1000:.0f} ms",
                model_id=model.model_id,
            ) from None
        except InvalidArgument as exc:  # shapes the model cannot combine (dynamic dims)
            model.errors += 1
            raise PreprocessingError(f"the model rejected the inputs: {exc}") from None
        except Exception:
            model.errors += 1
            raise
        model.requests += 1
        times.total_ms = (time.perf_counter() - t_start) * 1000
        self._record(model.model_id, times, computed=True)
        return TensorRun(model, outputs)


@dataclass(slots=True)
class TensorRun:
    """A protocol-level run: the model that ran and its outputs by name."""

    model: LoadedModel
    outputs: dict[str, np.ndarray]


def _image_input(model: LoadedModel, feeds: dict[str, np.ndarray]) -> str | None:
    """The input name when ``feeds`` is one BYTES tensor for an image model's image input."""
    metadata = model.metadata
    if metadata.preprocessing.kind != "image" or len(feeds) != 1:
        return None
    spec = metadata.input_spec(metadata.preprocessing.input)
    arr = feeds.get(spec.name)
    if arr is None or arr.dtype != object or spec.dtype == "string":
        return None
    return spec.name


def _image_bytes(name: str, item: object) -> bytes:
    if not isinstance(item, bytes):
        raise PreprocessingError(f"input {name!r}: every element must hold an encoded image")
    return item


def protocol_feeds(
    metadata: ModelMetadata, feeds: dict[str, np.ndarray], max_elements: int
) -> dict[str, np.ndarray]:
    """Check client tensors against the model's inputs, as the Open Inference Protocol does.

    Every input exactly once; the datatype exactly the model's (strings: UTF-8 bytes, fed
    as ``str``); the rank and every fixed dimension as declared; dynamic dimensions, the
    batch included, any size. Errors name the input."""
    specs = {t.name: t for t in metadata.inputs}
    names = ", ".join(repr(n) for n in specs)
    for name in feeds:
        if name not in specs:
            raise PreprocessingError(f"model has no input {name!r}; its inputs are {names}")
    for name in specs:
        if name not in feeds:
            raise PreprocessingError(f"input {name!r} is missing; the model's inputs are {names}")
    out: dict[str, np.ndarray] = {}
    for name, arr in feeds.items():
        spec = specs[name]
        got = datatype_of(arr)
        if arr.size > max_elements:
            raise InputTooLarge(
                f"input {name!r} has {arr.size} elements; the limit is {max_elements}"
            )
        if got != datatype_for(spec.dtype):
            raise _mismatch(spec, arr, f"datatype {got} does not match")
        if arr.ndim != len(spec.shape):
            raise _mismatch(spec, arr, f"rank {arr.ndim} does not match")
        for axis, (dim, size) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise _mismatch(spec, arr, f"dimension {axis} is {size}, not {dim}")
        if spec.dtype == "string":
            out[name] = _as_text(name, arr)
        else:
            out[name] = np.ascontiguousarray(arr, dtype=numpy_dtype(spec.dtype))
    return out


def _mismatch(spec: TensorSpec, arr: np.ndarray, reason: str) -> PreprocessingError:
    return PreprocessingError(
        f"input {spec.name!r}: {reason}; the model expects {datatype_for(spec.dtype)} "
        f"{protocol_shape(spec.shape)}, got {datatype_of(arr)} {list(arr.shape)}"
    )


def _as_text(name: str, arr: np.ndarray) -> np.ndarray:
    text = np.empty(arr.shape, dtype=object)
    flat = text.reshape(-1)
    for i, item in enumerate(arr.reshape(-1)):
        try:
            flat[i] = item.decode() if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError:
            raise PreprocessingError(f"input {name!r}: element {i} is not UTF-8 text") from None
    return text
