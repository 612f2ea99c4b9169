"""Model loading: metadata CID -> verified files -> ONNX Runtime session -> session cache.

A CID is one model whatever its spelling (canonical CIDv1 base32 inside), and the chain, not
the request, decides its token. One load of a (CID, token) at a time: concurrent requests for
it share one load (single flight). The blocking parts (session creation, signature check,
warm-up) run in the dedicated load executor, never on the event loop nor on the default
executor. A load is bounded: at most ``CIDSERVE_MAX_CONCURRENT_LOADS`` at once (one more is
refused with 503), a trial build in a child process under the memory budget first
(``services.runtime.probe``), and the warm-up run under a deadline
(``CIDSERVE_WARMUP_TIMEOUT_MS``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import postprocessing
import preprocessing
from registry.files import sha256_file
from registry.identity import model_id_for
from registry.metadata import MetadataError, ModelMetadata, parse_labels, parse_metadata
from registry.redact import strip_paths
from registry.store import ContentIntegrityError, ContentStore, InvalidCid
from registry.unixfs import canonical_cid
from services.errors import DependencyUnavailable, TokenConflict
from services.licensing import LicenseBackend
from services.observability.context import note_model
from services.observability.tracing import set_attributes, span
from services.repository.loading import LoadBoard
from services.repository.model import LoadedModel
from services.repository.session_cache import SessionCache
from services.runtime.admission import Slots
from services.runtime.batching import BatchPolicy
from services.runtime.errors import (
    ProbeFailed,
    ProviderUnavailable,
    SessionTooLarge,
    WarmupTimeout,
)
from services.runtime.memory import rss_bytes
from services.runtime.occupancy import Occupancy
from services.runtime.options import SessionConfig
from services.runtime.probe import SessionProbe
from services.runtime.runner import ModelRunner
from services.runtime.session import (
    check_signature,
    create_alone_session,
    create_session,
    warm_up,
    warmup_feeds,
)
from services.state.index import ModelIndex

if TYPE_CHECKING:
    from services.observability.metrics import Metrics

log = logging.getLogger("cidserve.loader")

Authorize = Callable[[int | None], Awaitable[None]]
"""Sees the token a load runs under, before anything is fetched; raises to refuse."""


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
        load_executor: Executor | None = None,
        load_slots: Slots | None = None,
        probe: SessionProbe | None = None,
        warmup_timeout_s: float = 5.0,
        occupancy: Occupancy | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.index = index
        self.licensing = licensing
        self.session_config = session_config
        self.inference_executor = inference_executor
        # What decides between a model's shared and alone sessions (runtime/occupancy.py).
        self.occupancy = occupancy or Occupancy()
        self.load_limits = load_limits
        self.input_limits = input_limits
        self._inflight: dict[tuple[str, int | None], asyncio.Future[LoadOutcome]] = {}
        self.loads_started = 0
        self.metrics = metrics
        self.batching = batching
        # Session builds and warm-ups: their own bounded pool, never the default executor.
        self.load_slots = load_slots or Slots(
            2, what="model loads", setting="CIDSERVE_MAX_CONCURRENT_LOADS"
        )
        self.load_executor = load_executor or ThreadPoolExecutor(
            self.load_slots.limit, thread_name_prefix="load"
        )
        self.probe = probe
        self.warmup_timeout_s = warmup_timeout_s
        # Loads under way (GET /api/models "loading"), with the bytes a remote store fetches.
        self.loading = LoadBoard()
        add_fetch_listener = getattr(store, "add_fetch_listener", None)
        if add_fetch_listener is not None:
            add_fetch_listener(self.loading.received)

    def find_by_cid(self, metadata_cid: str) -> LoadedModel | None:
        """The model in memory that a CID (in any spelling) describes, if any."""
        try:
            cid = canonical_cid(metadata_cid)
        except ValueError:
            return None
        return next((m for m in self.cache.models() if m.metadata_cid == cid), None)

    async def resolve_token(self, metadata_cid: str, claimed: int | None) -> int | None:
        """The token a load of ``metadata_cid`` (canonical) runs under: the chain decides.

        Content with a token on chain is licensed under it whether or not the request names
        one; a request naming another token gets :class:`TokenConflict`. Content without a
        token on chain: a named token must exist and name this CID (``TokenNotFound`` /
        ``TokenMismatch``); without a chain it is only recorded.
        """
        with span("license.token_of_content", metadata_cid=metadata_cid) as traced:
            on_chain = await self.licensing.token_of_content(metadata_cid)
            set_attributes(traced, token_id=on_chain)
        if on_chain is not None:
            if claimed is not None and claimed != on_chain:
                raise TokenConflict(
                    f"metadata {metadata_cid} is licensed under token {on_chain} on chain, "
                    f"not token {claimed}",
                    token_id=on_chain,
                    requested_token_id=claimed,
                )
            return on_chain
        if claimed is not None:
            await self.licensing.check_token_metadata(claimed, metadata_cid)
        return claimed

    async def load(
        self,
        metadata_cid: str,
        token_id: int | None = None,
        warmup: bool = True,
        *,
        authorize: Authorize | None = None,
    ) -> LoadOutcome:
        """Load (or find loaded) the model that ``metadata_cid`` describes.

        The CID is canonicalised first (one model whatever its spelling) and the token
        resolved against the chain (:meth:`resolve_token`); ``authorize`` (when given) sees
        that token before anything is fetched. Concurrent loads of the same (CID, token)
        share one load; a model in memory under a token is never replaced by an open load.
        """
        try:
            cid = canonical_cid(metadata_cid)
        except ValueError:
            shown = metadata_cid if len(metadata_cid) <= 100 else metadata_cid[:100] + "..."
            raise InvalidCid(f"metadataCid {shown!r} is not a CID", shown) from None
        token = await self.resolve_token(cid, token_id)
        if authorize is not None:
            await authorize(token)
        loaded = self.find_by_cid(cid)
        if loaded is not None and (loaded.token_id == token or token is None):
            # Same model, or an open request for a model held under a token: the licensed
            # model stays (the gate decides who may run it).
            self.cache.get(loaded.model_id)
            self._observe_load("memory", 0.0)
            note_model(loaded.model_id)
            return LoadOutcome(loaded, "already_loaded", 0.0)
        key = (cid, token)
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(cid, token, warmup))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
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
        """One load (joined by every waiter of its single flight), within the load cap."""
        with (
            self.load_slots.take(),
            span("model.load", metadata_cid=metadata_cid, token_id=token_id) as traced,
            self.loading.track(metadata_cid, token_id),
        ):
            outcome = await self._load_admitted(metadata_cid, token_id, warmup)
            set_attributes(traced, model_id=outcome.model.model_id)
            return outcome

    async def _load_admitted(
        self, metadata_cid: str, token_id: int | None, warmup: bool
    ) -> LoadOutcome:
        self.loads_started += 1
        t0 = time.perf_counter()
        limits = self.load_limits
        with span("model.fetch_metadata", cid=metadata_cid, store=self.store.name) as traced:
            raw = await self.store.get_bytes(metadata_cid, limits.max_metadata_bytes)
            set_attributes(traced, bytes=len(raw))
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
        self.loading.fetching_model((metadata_cid, token_id), metadata.name, metadata.model.size)
        # Never more than the metadata declares: a DAG that says more is refused from its root.
        with span(
            "model.fetch",
            cid=metadata.model.cid,
            store=self.store.name,
            source=source,
            bytes=metadata.model.size,
        ):
            path = await self.store.get_path(metadata.model.cid, metadata.model.size)
        self.loading.advance((metadata_cid, token_id), "building")
        model_id = model_id_for(metadata.name, metadata_cid)
        with span("model.build", model_id=model_id, warmup=warmup) as traced:
            model, fallback, memory = await asyncio.get_running_loop().run_in_executor(
                self.load_executor,
                self._build,
                model_id,
                metadata_cid,
                token_id,
                metadata,
                labels,
                path,
                warmup,
                t0,
            )
            set_attributes(traced, provider=model.provider, memory_bytes=memory)
        self._observe_load(source, model.load_time_ms / 1000)
        evicted = self.cache.put(model, memory)
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
            warmup=warmup,
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
    ) -> tuple[LoadedModel, str | None, int]:
        """Blocking part of a load (load executor); also returns the bytes the model took."""
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
        measured: int | None = None
        if self.probe is not None:
            try:
                shapes = preprocessing.create(metadata, self.input_limits).warmup_shapes()
                measured = self.probe.measure(path, digest, shapes).resident_bytes
            except ValueError as exc:
                raise ModelInvalid(f"model {model_id}: {exc}") from exc
            except SessionTooLarge as exc:
                raise ModelInvalid(f"model {metadata.model.cid} is refused: {exc}") from exc
            except WarmupTimeout as exc:
                raise ModelInvalid(f"model {model_id} failed its warm-up run: {exc}") from exc
            except ProbeFailed as exc:
                raise ModelInvalid(
                    f"ONNX Runtime cannot load model {metadata.model.cid}: {strip_paths(str(exc))}"
                ) from exc
        rss_before = rss_bytes()
        try:
            session, provider, fallback = create_session(path, self.session_config, sha256=digest)
            alone = create_alone_session(path, self.session_config, provider, sha256=digest)
        except ProviderUnavailable as exc:
            raise DependencyUnavailable(str(exc)) from exc
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelInvalid(
                f"ONNX Runtime cannot load model {metadata.model.cid}: {strip_paths(str(exc))}"
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
            alone_session=alone,
            occupancy=self.occupancy,
            batching=self.batching,
            cross_request_batching=(
                self.batching is not None and self.batching.trusts(metadata_cid)
            ),
            model_id=model_id,
            metrics=self.metrics,
        )
        if warmup:
            self.loading.advance((metadata_cid, token_id), "warming up")
            feeds = warmup_feeds(session, pre.warmup_shapes())
            try:
                warm_up(session, feeds, self.warmup_timeout_s)
            except Exception as exc:
                raise ModelInvalid(f"model {model_id} failed its warm-up run: {exc}") from exc
            if alone is not None:
                try:
                    warm_up(alone, feeds, self.warmup_timeout_s)
                except Exception as exc:  # the graph passed above: run on the shared one only
                    log.warning("%s: no alone session (its warm-up failed: %s)", model_id, exc)
                    runner.alone_session = alone = None
        if measured is None:  # no trial build: the growth of this process, as well as it shows
            measured = rss_bytes() - rss_before
        else:  # the trial build measured one session
            measured *= runner.sessions
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
        return model, fallback, max(measured, size)
