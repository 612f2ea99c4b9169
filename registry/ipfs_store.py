"""A content store backed by an IPFS node, which it does not trust.

Reads go through the node's Kubo RPC API (``CIDSERVE_IPFS_API_URL``; Kubo, or js-ipfs which
implements the same API) or, without one, an HTTP path gateway (``CIDSERVE_IPFS_GATEWAY_URL``).
Every byte handed out has been proven to be the content its CID names, and is kept in an
on-disk blob cache (``registry.blob_cache``) so it is fetched once. :class:`IpfsContentStore`
is the facade; the work is done by:

* ``registry.ipfs_client``: the transport (one ``httpx.AsyncClient`` with keep-alive
  connections and a bounded pool, timeouts, retries with exponential backoff, the node's errors
  as the store's, a small thread pool for blocking work: parsing, hashing, file writes);
* ``registry.ipfs_fetch``: the verified fetch through the RPC API (root by ``block/get``, then
  raw leaves checked in the ``cat`` stream, or any layout block by block from a ``dag/export``
  CAR; a broken stream goes on where it stopped);
* ``registry.ipfs_gateway``: the verified fetch through a gateway (the file's CID recomputed);
* ``registry.ipfs_add``: ``put_*``, ``/api/v0/add`` + pin, the node's CID checked.

A fetch writes into a pending blob of the cache, which becomes a cache entry only once every
block has matched; on any error it is deleted. Nothing unverified is cached or returned: a
mismatch raises ``ContentIntegrityError`` naming the CID (and the block). Concurrent requests
for one CID share one fetch; at most ``max_concurrent_fetches`` fetches run at once (one more is
refused at once with :class:`FetchesBusy`, 503 + ``Retry-After``), and each reserves the most it
may write against the blob cache's disk bound while it runs.

Errors: the node unreachable (after retries with exponential backoff) -> ``ContentUnavailable``
(503 + ``Retry-After``); a CID the node cannot find within the find timeout ->
``ContentNotFound`` (404); a node that stays silent longer than the read timeout, or a
transfer longer than the fetch timeout -> ``ContentTimeout`` (504).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from multiformats import CID

from registry.blob_cache import BlobCache
from registry.dag_blocks import DagError, parse_cid
from registry.ipfs_add import ProgressFactory, add_bytes, add_file, add_stream
from registry.ipfs_client import Deadline, IpfsClient, IpfsConfig
from registry.ipfs_fetch import fetch_api
from registry.ipfs_gateway import fetch_gateway
from registry.store import ContentStoreError, ContentUnavailable, InvalidCid
from registry.unixfs import canonical_cid

__all__ = ["FetchesBusy", "IpfsConfig", "IpfsContentStore"]

log = logging.getLogger("cidserve.ipfs")


class FetchesBusy(ContentUnavailable):
    """As many fetches as allowed are under way (``CIDSERVE_MAX_CONCURRENT_FETCHES``)."""


class IpfsContentStore:
    """``ContentStore`` over an IPFS node, verified, with an on-disk cache (module docstring)."""

    name = "ipfs"
    remote = True

    def __init__(
        self,
        config: IpfsConfig,
        cache: BlobCache,
        *,
        progress: ProgressFactory | None = None,
        max_concurrent_fetches: int | None = None,
    ) -> None:
        self.config = config
        self.max_concurrent_fetches = max_concurrent_fetches
        self.fetching = 0
        self.cache = cache
        self.progress = progress
        self._client = IpfsClient(config, self._received)
        self.api = self._client.api
        self.gateway = self._client.gateway
        self._inflight: dict[tuple[str, int], asyncio.Future[Path]] = {}
        self._listeners: list[Callable[[int], None]] = []
        self.bytes_fetched = 0
        self.fetches = 0

    # -- wiring --------------------------------------------------------------------------------

    def add_fetch_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(n)`` for every ``n`` bytes received from IPFS (verified or not)."""
        self._listeners.append(listener)

    def _received(self, n: int) -> None:
        self.bytes_fetched += n
        for listener in self._listeners:
            listener(n)

    # -- CIDs ----------------------------------------------------------------------------------

    @staticmethod
    def _canonical(cid: str) -> str:
        """Validate ``cid`` (raw or dag-pb; sha2-256 or identity) and return it as CIDv1 base32."""
        try:
            canonical = canonical_cid(cid)
            parse_cid(bytes(CID.decode(canonical)))
        except (ValueError, DagError) as exc:
            raise InvalidCid(str(exc), cid=cid if isinstance(cid, str) else None) from None
        return canonical

    # -- reads ---------------------------------------------------------------------------------

    async def has(self, cid: str) -> bool:
        """Whether the blob cache holds ``cid`` (nothing is fetched)."""
        return await self._client.thread(self.cache.contains, self._canonical(cid))

    async def get_path(self, cid: str, max_size: int) -> Path:
        """A local path holding the verified content of ``cid`` (from the cache, or fetched)."""
        canonical = self._canonical(cid)
        path = await self._client.thread(self.cache.lookup, canonical, max_size)
        if path is not None:
            return path
        return await self._fetch_once(cid, canonical, max_size)

    async def get_bytes(self, cid: str, max_size: int) -> bytes:
        """The verified content of ``cid`` (from the cache, or fetched)."""
        canonical = self._canonical(cid)
        for _ in range(2):
            data = await self._client.thread(self.cache.read_bytes, canonical, max_size)
            if data is not None:
                return data
            await self._fetch_once(cid, canonical, max_size)
        raise ContentStoreError(f"the blob cache lost {cid} right after writing it", cid=cid)

    async def _fetch_once(self, cid: str, canonical: str, max_size: int) -> Path:
        """Fetch ``canonical`` into the cache; concurrent requests for it share one fetch."""
        key = (canonical, max_size)
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(cid, canonical, max_size))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(pending)

    async def _fetch(self, cid: str, canonical: str, max_size: int) -> Path:
        cap = self.max_concurrent_fetches
        if cap is not None and self.fetching >= cap:
            raise FetchesBusy(
                f"{cap} IPFS fetches are already under way (CIDSERVE_MAX_CONCURRENT_FETCHES); "
                "try again shortly",
                cid=cid,
                retry_after_s=1,
            )
        self.fetching += 1
        try:
            return await self._fetch_admitted(cid, canonical, max_size)
        finally:
            self.fetching -= 1

    async def _fetch_admitted(self, cid: str, canonical: str, max_size: int) -> Path:
        client = self._client
        self.fetches += 1
        deadline = Deadline(self.config.fetch_timeout_s, cid)
        blob = await client.thread(self.cache.begin, max_size)
        worker = client.worker()
        t0 = time.perf_counter()
        try:
            if self.api is not None:
                await fetch_api(client, cid, canonical, blob, max_size, deadline, worker)
            else:
                await fetch_gateway(client, cid, canonical, blob, max_size, deadline, worker)
            path = await client.thread(self.cache.commit, canonical, blob)
        except BaseException:
            await worker.settle()
            await asyncio.shield(client.thread(blob.abort))
            raise
        log.info(
            "fetched and verified %s (%d bytes) from IPFS in %.0f ms",
            cid,
            blob.size,
            (time.perf_counter() - t0) * 1000,
        )
        return path

    # -- writes --------------------------------------------------------------------------------

    async def put_bytes(self, data: bytes) -> str:
        """Add and pin ``data``; return its CIDv1 (the same the embedded store gives)."""
        return await add_bytes(self._client, data, self.progress)

    async def put_file(self, path: Path) -> str:
        """Add and pin the file at ``path``, streamed, with progress for large files."""
        return await add_file(self._client, path, self.progress)

    async def put_stream(self, chunks: AsyncIterator[bytes]) -> str:
        """Add and pin a stream of bytes (not held whole in memory); return its CID."""
        return await add_stream(self._client, chunks, self.progress)

    # -- status --------------------------------------------------------------------------------

    async def health(self) -> dict[str, object]:
        """``ok``; ``degraded`` when the node is unreachable (cached content is still served);
        ``down`` when the blob cache directory is not writable."""
        stats = await self._client.thread(self.cache.stats)
        usable = await self._client.thread(self.cache.usable)
        report: dict[str, object] = {
            "kind": "ipfs",
            "api": self.config.api_url,
            "gateway": self.config.gateway_url,
            "blob_cache": stats,
            "bytes_fetched": self.bytes_fetched,
        }
        http = self._client.http
        try:
            if self.api is not None:
                r = await http.post(f"{self.api}/version", timeout=2.0)
                if r.status_code == 200:
                    report["node_version"] = str(r.json().get("Version", "?"))
            else:
                assert self.gateway is not None
                r = await http.get(self.gateway + "/", timeout=2.0)
            node_ok = r.status_code < 500
            if not node_ok:
                report["message"] = f"IPFS node answered {r.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            node_ok = False
            report["message"] = f"IPFS node unreachable ({type(exc).__name__}); serving cached"
        report["status"] = "down" if not usable else ("ok" if node_ok else "degraded")
        return report

    async def aclose(self) -> None:
        """Close the HTTP connections and the worker threads."""
        await self._client.aclose()
