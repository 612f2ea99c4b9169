"""The model repository: which models exist here, under which ids, and loading them.

One place answers "which model is this request about": the session cache, else (for a model
evicted from memory, or loaded by another replica) the model index, else :class:`ModelNotFound`.
Loads go through the :class:`~services.repository.loader.ModelLoader` (single flight); unloads
take a model out of memory and out of the index. Protocol model names (a ``model_id``, or a
published name with an optional version) resolve here too, and so do catalogue references
(``NAME@latest``, ``NAME@VERSION``, ``NAME@LABEL``: :mod:`services.state.catalog`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from registry.identity import model_id_for
from registry.metadata import ModelMetadata, parse_metadata
from registry.store import ContentStore
from registry.unixfs import canonical_cid
from services.errors import InvalidRequest, ModelNotFound, VersionNotFound
from services.repository.loader import Authorize, LoadOutcome, ModelLoader
from services.repository.model import LoadedModel
from services.repository.session_cache import SessionCache
from services.state.catalog import LATEST, Catalog, CatalogEntry, parse_reference, version_key
from services.state.index import IndexEntry, ModelIndex

log = logging.getLogger("cidserve.repository")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A known model: in memory (``loaded``), or known from the index and reloadable."""

    model_id: str
    metadata_cid: str
    token_id: int | None
    loaded: LoadedModel | None
    # The warm-up choice of the model's last load, which a reload of an evicted model keeps.
    warmup: bool = True


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
        catalog: Catalog | None = None,
    ) -> None:
        self.catalog = catalog
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
        return await self._ref_of(entry)

    async def _ref_of(self, entry: IndexEntry) -> ModelRef:
        """A reference to an index entry whose token the chain decides: a shared index is not
        trusted to say a licensed model is open (it can only add a token the chain lacks,
        which refuses callers but never lets one around a license)."""
        try:
            cid = canonical_cid(entry.metadata_cid)
        except ValueError:
            raise ModelNotFound(entry.model_id) from None
        on_chain = await self.loader.licensing.token_of_content(cid)
        token = on_chain if on_chain is not None else entry.token_id
        return ModelRef(entry.model_id, cid, token, None, entry.warmup)

    async def materialize(self, ref: ModelRef) -> LoadedModel:
        """The model of ``ref`` in memory, reloading it (from verified content) if evicted,
        with or without a warm-up run as its last load chose."""
        if ref.loaded is not None:
            return ref.loaded
        log.info("reloading evicted model %s", ref.model_id)
        return (await self.loader.load(ref.metadata_cid, ref.token_id, ref.warmup)).model

    def peek(self, model_id: str) -> LoadedModel | None:
        """The model if it is in memory, without touching its recency."""
        return self.cache.peek(model_id)

    async def resolve_name(self, name: str, version: str | None = None) -> str:
        """The ``model_id`` a protocol model name stands for.

        ``name`` is a ``model_id`` itself, or a published model name the operator bound
        (an operator's load binds the loaded model's name; a licensee's load or anyone's
        publishing does not) or recorded in the catalogue; with ``version`` the model's
        metadata version must match, or a catalogue version or label of the name. Among
        several bindings of one name, the operator's latest wins; a name only catalogued
        resolves to its newest version. ``latest`` is the newest version (the catalogue's,
        else the newest bound by the operator's loads), not the most recently used.
        Unknown: :class:`ModelNotFound`; known in other versions: :class:`VersionNotFound`.
        """

        def fits(v: str) -> bool:
            return version is None or v == version

        loaded = self.cache.peek(name)
        entry = None if loaded is not None else await self.index.get(name)
        known_version = loaded.metadata.version if loaded else entry.version if entry else None
        if known_version is not None:
            if not fits(known_version) and version != LATEST:
                raise VersionNotFound(
                    f"model {name!r} has no version {version!r}; its version is {known_version!r}",
                    model_id=name,
                )
            return name
        named = [e for e in await self.index.entries() if e.name == name and e.bound_at is not None]
        entries = [e for e in named if fits(e.version)]
        if entries and version != LATEST:
            return max(entries, key=lambda e: e.bound_at or 0.0).model_id
        catalogued = await self._catalogued(name)
        if version == LATEST:
            # The newest version: the catalogue's, else the newest the operator's loads bound.
            if catalogued is not None and catalogued.versions:
                return self._catalogue_model_id(catalogued, LATEST)
            if named:
                newest = max(named, key=lambda e: version_key(e.version, e.bound_at or 0.0))
                return newest.model_id
            raise ModelNotFound(name)
        if catalogued is not None:
            return self._catalogue_model_id(catalogued, version or LATEST)
        if named:
            versions = ", ".join(sorted({repr(e.version) for e in named}))
            raise VersionNotFound(f"model {name!r} has no version {version!r}; it has {versions}")
        raise ModelNotFound(name)

    # -- the catalogue ---------------------------------------------------------------------

    async def _catalogued(self, name: str) -> CatalogEntry | None:
        return await self.catalog.get(name) if self.catalog is not None else None

    @staticmethod
    def _catalogue_model_id(entry: CatalogEntry, selector: str) -> str:
        hit = entry.resolve(selector)
        try:
            cid = canonical_cid(hit.metadata_cid)
        except ValueError:
            raise ModelNotFound(entry.name, f"{entry.name}@{hit.version}: no valid CID") from None
        return model_id_for(entry.name, cid)

    async def catalogue_entry(self, name: str) -> CatalogEntry:
        """The catalogue's entry for ``name``; not there: :class:`ModelNotFound` naming it."""
        entry = await self._catalogued(name)
        if entry is None:
            raise ModelNotFound(name, f"model {name!r} is not in the catalogue")
        return entry

    async def resolve_reference(self, reference: str) -> tuple[str, str]:
        """``NAME@latest|VERSION|LABEL`` -> (version, metadata CID) through the catalogue;
        an unknown name, version or label is a 404 naming it."""
        name, selector = parse_reference(reference)
        hit = (await self.catalogue_entry(name)).resolve(selector)
        return hit.version, hit.metadata_cid

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
        self,
        metadata_cid: str,
        token_id: int | None = None,
        warmup: bool = True,
        *,
        authorize: Authorize | None = None,
        bind_name: bool = False,
    ) -> LoadOutcome:
        """Load (or find loaded) the model that ``metadata_cid`` describes.

        ``authorize`` sees the token the load runs under before anything is fetched;
        ``bind_name`` (the operator's loads) makes the model's published name resolve to it.
        """
        outcome = await self.loader.load(metadata_cid, token_id, warmup, authorize=authorize)
        if bind_name:
            await self.index.bind_name(outcome.model.model_id)
        return outcome

    async def load_named(
        self,
        name: str,
        metadata_cid: str | None,
        token_id: int | None,
        warmup: bool,
        *,
        authorize: Authorize | None = None,
        bind_name: bool = False,
    ) -> LoadOutcome:
        """A load under a protocol model name: ``name`` must be the published name or the
        ``model_id`` of the metadata. Without a CID, a model loaded here before loads again,
        or a name of the catalogue loads its newest version."""
        if metadata_cid is None:
            try:
                model_id = await self.resolve_name(name)
            except ModelNotFound:
                raise InvalidRequest(
                    f"{name!r} was never loaded here: give its metadata CID in "
                    "parameters.metadataCid"
                ) from None
            try:
                ref = await self._known(model_id)
            except ModelNotFound:
                catalogued = await self._catalogued(name)
                if catalogued is None or not catalogued.versions:
                    raise
                # Never loaded here, but in the operator's catalogue: its newest version.
                ref = ModelRef(model_id, catalogued.resolve(LATEST).metadata_cid, token_id, None)
            return await self.load(
                ref.metadata_cid, ref.token_id, warmup, authorize=authorize, bind_name=bind_name
            )
        try:
            metadata_cid = canonical_cid(metadata_cid)
        except ValueError:
            raise InvalidRequest("parameters.metadataCid is not a CID") from None
        known = self.loader.find_by_cid(metadata_cid)
        metadata = known.metadata if known is not None else await self._read_metadata(metadata_cid)
        model_id = model_id_for(metadata.name, metadata_cid)
        if name not in (metadata.name, model_id):
            raise InvalidRequest(
                f"metadata {metadata_cid} describes model {metadata.name!r} (model_id "
                f"{model_id!r}); load it under one of those names, not {name!r}"
            )
        return await self.load(
            metadata_cid, token_id, warmup, authorize=authorize, bind_name=bind_name
        )

    async def _known(self, model_id: str) -> ModelRef:
        """Like :meth:`locate`, whether or not evicted models reload by themselves."""
        loaded = self.cache.peek(model_id)
        if loaded is not None:
            return ModelRef(model_id, loaded.metadata_cid, loaded.token_id, loaded)
        entry = await self.index.get(model_id)
        if entry is None:
            raise ModelNotFound(model_id)
        return await self._ref_of(entry)

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
