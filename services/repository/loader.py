"""Model loading: metadata CID -> verified files -> ONNX Runtime session -> session cache.

One load of a metadata CID at a time: concurrent requests for the same CID share one load
(single flight). The blocking parts (session creation, signature check, warm-up) run in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import postprocessing
import preprocessing
from registry.files import sha256_file
from registry.identity import model_id_for
from registry.metadata import MetadataError, ModelMetadata, parse_labels, parse_metadata
from registry.store import ContentIntegrityError, ContentStore
from services.licensing import LicenseBackend
from services.observability.context import note_model
from services.repository.model import LoadedModel
from services.repository.session_cache import SessionCache
from services.runtime.batching import BatchPolicy
from services.runtime.options import SessionConfig
from services.runtime.runner import ModelRunner
from services.runtime.session import check_signature, create_session, warmup_feeds
from services.state.index import ModelIndex

if TYPE_CHECKING:
    from services.observability.metrics import Metrics

log = logging.getLogger("cidserve.loader")


class ModelInvalid(ValueError):
    """The published model cannot be served as its metadata describes it (422)."""


@dataclass(frozen=True, slots=True)
class LoadLimits:
    max_metadata_bytes: int
    max_labels_bytes: int
    max_model_bytes: int


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    model: LoadedModel
    status: Literal["loaded", "already_loaded"]
    load_time_ms: float
    fallback_reason: str | None = None


class ModelLoader:
    """Loads models into the :class:`SessionCache`; see the module docstring."""

    def __init__(
        self,
        *,
        store: ContentStore,
        cache: SessionCache,
        index: ModelIndex,
        licensing: LicenseBackend,
        session_config: SessionConfig,
        inference_executor: Executor,
        load_limits: LoadLimits,
        input_limits: preprocessing.Limits,
        metrics: Metrics | None = None,
        batching: BatchPolicy | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.index = index
        self.licensing = licensing
        self.session_config = session_config
        self.inference_executor = inference_executor
        self.load_limits = load_limits
        self.input_limits = input_limits
        self._inflight: dict[str, asyncio.Future[LoadOutcome]] = {}
        self.loads_started = 0
        self.metrics = metrics
        self.batching = batching

    def find_by_cid(self, metadata_cid: str) -> LoadedModel | None:
        return next((m for m in self.cache.models() if m.metadata_cid == metadata_cid), None)

    async def load(
        self, metadata_cid: str, token_id: int | None = None, warmup: bool = True
    ) -> LoadOutcome:
        """Load (or find loaded) the model that ``metadata_cid`` describes."""
        if token_id is not None:
            await self.licensing.check_token_metadata(token_id, metadata_cid)
        loaded = self.find_by_cid(metadata_cid)
        if loaded is not None and loaded.token_id == token_id:
            self.cache.get(loaded.model_id)
            self._observe_load("memory", 0.0)
            note_model(loaded.model_id)
            return LoadOutcome(loaded, "already_loaded", 0.0)
        pending = self._inflight.get(metadata_cid)
        if pending is None:
            pending = asyncio.ensure_future(self._load(metadata_cid, token_id, warmup))
            self._inflight[metadata_cid] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(metadata_cid, None))
        # Shield: a client that disconnects must not cancel a load others are waiting for.
        outcome = await asyncio.shield(pending)
        note_model(outcome.model.model_id)
        return outcome

    def _observe_load(self, source: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.model_load_duration.labels(source).observe(seconds)

    async def _source(self, cid: str) -> str:
        """Where the model bytes of this load come from: ``local`` (the embedded store),
        ``disk_cache`` (a remote store's local copy) or the remote store's name (``ipfs``)."""
        if self.store.name == "local":
            return "local"
        try:
            cached = await self.store.has(cid)
        except Exception:  # a store that cannot tell is fetched from
            cached = False
        return "disk_cache" if cached else self.store.name

    async def _load(self, metadata_cid: str, token_id: int | None, warmup: bool) -> LoadOutcome:
        self.loads_started += 1
        t0 = time.perf_counter()
        limits = self.load_limits
        raw = await self.store.get_bytes(metadata_cid, limits.max_metadata_bytes)
        metadata = parse_metadata(raw, limits.max_metadata_bytes)
        # The kinds' own options, checked by their plug-ins (errors name the field).
        preprocessing.validate_options(metadata.preprocessing)
        postprocessing.validate_options(metadata.postprocessing)
        labels = await self._labels(metadata)
        if metadata.model.size > limits.max_model_bytes:
            raise ModelInvalid(
                f"model is {metadata.model.size} bytes; the limit is {limits.max_model_bytes} "
                "(CIDSERVE_MAX_MODEL_BYTES)"
            )
        source = await self._source(metadata.model.cid)
        path = await self.store.get_path(metadata.model.cid, limits.max_model_bytes)
        model_id = model_id_for(metadata.name, metadata_cid)
        model, fallback = await asyncio.to_thread(
            self._build, model_id, metadata_cid, token_id, metadata, labels, path, warmup, t0
        )
        self._observe_load(source, model.load_time_ms / 1000)
        evicted = self.cache.put(model)
        for old in evicted:
            log.info("evicted %s from the session cache (LRU)", old.model_id)
        await self.index.record_load(
            model_id=model_id,
            metadata_cid=metadata_cid,
            name=metadata.name,
            version=metadata.version,
            token_id=token_id,
            load_ms=model.load_time_ms,
            source=source,
        )
        log.info(
            "loaded %s (%s %s) from %s in %.1f ms on %s%s",
            model_id,
            metadata.name,
            metadata.version,
            metadata_cid,
            model.load_time_ms,
            model.provider,
            "" if token_id is not None else "; open (no tokenId)",
        )
        return LoadOutcome(model, "loaded", model.load_time_ms, fallback)

    async def _labels(self, metadata: ModelMetadata) -> list[str] | None:
        post = metadata.postprocessing
        labels = getattr(post, "labels", None)
        labels_cid = getattr(post, "labels_cid", None)
        if labels_cid is not None:
            raw = await self.store.get_bytes(labels_cid, self.load_limits.max_labels_bytes)
            try:
                labels = parse_labels(raw)
            except UnicodeDecodeError:
                raise MetadataError(f"labels {labels_cid} are not UTF-8 text") from None
        return labels

    def _build(
        self,
        model_id: str,
        metadata_cid: str,
        token_id: int | None,
        metadata: ModelMetadata,
        labels: list[str] | None,
        path: Path,
        warmup: bool,
        t0: float,
    ) -> tuple[LoadedModel, str | None]:
        """Blocking part of a load (worker thread)."""
        size = path.stat().st_size
        if size != metadata.model.size:
            raise ModelInvalid(
                f"model {metadata.model.cid} is {size} bytes; metadata says {metadata.model.size}"
            )
        digest = sha256_file(path)
        if digest != metadata.model.sha256:
            raise ContentIntegrityError(
                f"model {metadata.model.cid} has sha256 {digest}; metadata says "
                f"{metadata.model.sha256}",
                metadata.model.cid,
            )
        try:
            session, provider, fallback = create_session(path, self.session_config, sha256=digest)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelInvalid(
                f"ONNX Runtime cannot load model {metadata.model.cid}: {exc}"
            ) from exc
        if fallback:
            log.warning("%s: %s; running on CPU", model_id, fallback)
        try:
            check_signature(session, metadata)
            pre = preprocessing.create(metadata, self.input_limits)
            post = postprocessing.create(metadata, labels)
        except ValueError as exc:
            raise ModelInvalid(f"model {model_id}: {exc}") from exc
        runner = ModelRunner(
            session,
            self.inference_executor,
            batching=self.batching,
            model_id=model_id,
            metrics=self.metrics,
        )
        if warmup:
            try:
                runner.run_blocking(warmup_feeds(session, pre.warmup_shapes()))
            except Exception as exc:
                raise ModelInvalid(f"model {model_id} failed its warm-up run: {exc}") from exc
        model = LoadedModel(
            model_id=model_id,
            metadata_cid=metadata_cid,
            token_id=token_id,
            metadata=metadata,
            session=session,
            runner=runner,
            preprocessor=pre,
            postprocessor=post,
            size_bytes=size,
            provider=provider,
            load_time_ms=(time.perf_counter() - t0) * 1000,
        )
        return model, fallback
