"""The model repository: which models exist here, under which ids, and loading them.

One place answers "which model is this request about": the session cache, else (for a model
evicted from memory, or loaded by another replica) the model index, else :class:`ModelNotFound`.
Loads go through the :class:`~services.repository.loader.ModelLoader` (single flight); unloads
take a model out of memory and out of the index. Protocol model names (a ``model_id``, or a
published name with an optional version) resolve here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from registry.identity import model_id_for
from registry.metadata import ModelMetadata, parse_metadata
from registry.store import ContentStore
from services.errors import InvalidRequest, ModelNotFound, VersionNotFound
from services.repository.loader import LoadOutcome, ModelLoader
from services.repository.model import LoadedModel
from services.repository.session_cache import SessionCache
from services.state.index import IndexEntry, ModelIndex

log = logging.getLogger("cidserve.repository")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A known model: in memory (``loaded``), or known from the index and reloadable."""

    model_id: str
    metadata_cid: str
    token_id: int | None
    loaded: LoadedModel | None


class ModelRepository:
    """Models by id: locate, load, reload, unload, list (see the module docstring)."""

    def __init__(
        self,
        *,
        store: ContentStore,
        cache: SessionCache,
        loader: ModelLoader,
        index: ModelIndex,
        reload_evicted: bool,
        max_metadata_bytes: int,
    ) -> None:
        self.store = store
        self.cache = cache
        self.loader = loader
        self.index = index
        self.reload_evicted = reload_evicted
        self.max_metadata_bytes = max_metadata_bytes

    # -- finding a model -------------------------------------------------------------------

    async def locate(self, model_id: str) -> ModelRef:
        """The model in memory (marked recently used), else its index entry when evicted
        models may reload; unknown: :class:`ModelNotFound`. Nothing is loaded here."""
        model = self.cache.get(model_id)
        if model is not None:
            return ModelRef(model_id, model.metadata_cid, model.token_id, model)
        entry = await self.index.get(model_id) if self.reload_evicted else None
        if entry is None:
            raise ModelNotFound(model_id)
        return ModelRef(model_id, entry.metadata_cid, entry.token_id, None)

    async def materialize(self, ref: ModelRef) -> LoadedModel:
        """The model of ``ref`` in memory, reloading it (from verified content) if evicted."""
        if ref.loaded is not None:
            return ref.loaded
        log.info("reloading evicted model %s", ref.model_id)
        return (await self.loader.load(ref.metadata_cid, ref.token_id)).model

    def peek(self, model_id: str) -> LoadedModel | None:
        """The model if it is in memory, without touching its recency."""
        return self.cache.peek(model_id)

    async def resolve_name(self, name: str, version: str | None = None) -> str:
        """The ``model_id`` a protocol model name stands for.

        ``name`` is a ``model_id`` itself, or a published model name; with ``version`` the
        model's metadata version must match. Among several models of one name, the most
        recently used one in memory wins, then the most recently loaded one in the index.
        Unknown: :class:`ModelNotFound`; known in other versions: :class:`VersionNotFound`.
        """

        def fits(v: str) -> bool:
            return version is None or v == version

        loaded = self.cache.peek(name)
        entry = None if loaded is not None else await self.index.get(name)
        known_version = loaded.metadata.version if loaded else entry.version if entry else None
        if known_version is not None:
            if not fits(known_version):
                raise VersionNotFound(
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
            raise VersionNotFound(f"model {name!r} has no version {version!r}; it has {versions}")
        raise ModelNotFound(name)

    async def metadata_of(self, model_id: str) -> ModelMetadata:
        """A known model's metadata: from memory, or (evicted) read again from the store."""
        loaded = self.cache.peek(model_id)
        if loaded is not None:
            return loaded.metadata
        entry = await self.index.get(model_id)
        if entry is None:
            raise ModelNotFound(model_id)
        return await self._read_metadata(entry.metadata_cid)

    async def _read_metadata(self, metadata_cid: str) -> ModelMetadata:
        limit = self.max_metadata_bytes
        return parse_metadata(await self.store.get_bytes(metadata_cid, limit), limit)

    # -- loading and unloading -------------------------------------------------------------

    async def load(
        self, metadata_cid: str, token_id: int | None = None, warmup: bool = True
    ) -> LoadOutcome:
        """Load (or find loaded) the model that ``metadata_cid`` describes."""
        return await self.loader.load(metadata_cid, token_id, warmup)

    async def load_named(
        self, name: str, metadata_cid: str | None, token_id: int | None, warmup: bool
    ) -> LoadOutcome:
        """A load under a protocol model name: ``name`` must be the published name or the
        ``model_id`` of the metadata. Without a CID, a model loaded here before loads again."""
        if metadata_cid is None:
            try:
                model_id = await self.resolve_name(name)
            except ModelNotFound:
                raise InvalidRequest(
                    f"{name!r} was never loaded here: give its metadata CID in "
                    "parameters.metadataCid"
                ) from None
            ref = await self._known(model_id)
            return await self.loader.load(ref.metadata_cid, ref.token_id, warmup)
        known = self.loader.find_by_cid(metadata_cid)
        metadata = known.metadata if known is not None else await self._read_metadata(metadata_cid)
        model_id = model_id_for(metadata.name, metadata_cid)
        if name not in (metadata.name, model_id):
            raise InvalidRequest(
                f"metadata {metadata_cid} describes model {metadata.name!r} (model_id "
                f"{model_id!r}); load it under one of those names, not {name!r}"
            )
        return await self.loader.load(metadata_cid, token_id, warmup)

    async def _known(self, model_id: str) -> ModelRef:
        """Like :meth:`locate`, whether or not evicted models reload by themselves."""
        loaded = self.cache.peek(model_id)
        if loaded is not None:
            return ModelRef(model_id, loaded.metadata_cid, loaded.token_id, loaded)
        entry = await self.index.get(model_id)
        if entry is None:
            raise ModelNotFound(model_id)
        return ModelRef(model_id, entry.metadata_cid, entry.token_id, None)

    async def unload(self, model_id: str) -> LoadedModel | None:
        """Out of memory and out of the index (it does not reload by itself); the model that
        was in memory, or None."""
        model = self.cache.remove(model_id)
        await self.index.forget(model_id)
        return model

    # -- listing ---------------------------------------------------------------------------

    def models(self) -> list[LoadedModel]:
        """Models in memory, least recently used first."""
        return self.cache.models()

    async def entries(self) -> list[IndexEntry]:
        """Every model loaded here (or, on a shared index, in the fleet) and not unloaded."""
        return await self.index.entries()

    def cache_status(self) -> dict[str, Any]:
        """The ``cacheStatus`` object of the API."""
        return self.cache.status()
