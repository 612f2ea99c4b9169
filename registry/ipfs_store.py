"""A content store backed by an IPFS node, which it does not trust.

Reads go through the node's Kubo RPC API (``CIDSERVE_IPFS_API_URL``; Kubo, or js-ipfs which
implements the same API) or, without one, an HTTP path gateway (``CIDSERVE_IPFS_GATEWAY_URL``).
Every byte handed out has been proven to be the content its CID names, and is kept in an
on-disk blob cache (``registry.blob_cache``) so it is fetched once:

* RPC API: ``block/get`` of the root block (with the node's ``timeout=`` set to the find
  timeout, so a CID the node cannot find is a prompt 404; a file of one block is then done).
  A file of raw leaves (what ``ipfs add --cid-version=1`` and ``cidserve publish`` write): its
  dag-pb nodes by ``block/get``, each verified, list the leaves; the file itself comes by
  ``cat`` and each leaf's range is hashed and compared with the leaf's CID as it passes
  (``registry.dag_verify.LeafVerifier``: a raw block is its bytes of the file). Any other
  layout (dag-pb leaves, inline data): ``dag/export`` of the DAG as a CAR stream, every block
  hashed and compared with its CID while the UnixFS DAG is walked
  (``registry.dag_verify.FileAssembler``). Either way the file is written, in order, straight
  into a temporary file in the cache directory. When a stream breaks (retried with backoff)
  or ends or stalls short of the file, what it brought is kept: the next missing block is
  asked for by ``block/get`` (a prompt 404 naming it when the node cannot find it), then the
  stream goes on from there (``cat`` with ``offset=``, ``dag/export`` of the subtree).
* Gateway: ``GET /ipfs/<cid>`` streams the file itself; its CID is recomputed on the way with
  the layout ``ipfs add --cid-version=1`` uses (``registry.unixfs``) and must match. Content
  added with another layout (CIDv0 with dag-pb leaves, other chunkers) cannot be proven from
  its bytes alone and is refused: read it through the RPC API.

Nothing unverified is cached or returned: a mismatch raises ``ContentIntegrityError`` naming
the CID (and the block), and the temporary file is deleted.

Writes (``put_*``) use ``/api/v0/add`` with ``cid-version=1``, raw leaves, 256 KiB chunks and
``pin=true``, streaming the upload; the CID is computed locally on the way and must equal the
node's, so the node holds the content under the same CIDs as the embedded store.

Errors: the node unreachable (after retries with exponential backoff) -> ``ContentUnavailable``
(503 + ``Retry-After``); a CID the node cannot find within the find timeout ->
``ContentNotFound`` (404); a node that stays silent longer than the read timeout, or a
transfer longer than the fetch timeout -> ``ContentTimeout`` (504). One ``httpx.AsyncClient``
(keep-alive connections, bounded pool) serves all requests; blocking work (parsing, hashing,
file writes) runs in a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from multiformats import CID

from registry.blob_cache import BlobCache, PendingBlob
from registry.car import CarFormatError, CarReader
from registry.dag_verify import (
    DAG_PB,
    DagError,
    DagTooLarge,
    FileAssembler,
    LeafPlanner,
    LeafVerifier,
    NotAFile,
    NotPlannable,
    cid_str,
    parse_cid,
)
from registry.dagpb import MAX_BLOCK_SIZE
from registry.store import (
    ContentIntegrityError,
    ContentNotFound,
    ContentStoreError,
    ContentTimeout,
    ContentTooLarge,
    ContentUnavailable,
    InvalidCid,
)
from registry.unixfs import CHUNK_SIZE, READ_SIZE, UnixFSBuilder, canonical_cid

log = logging.getLogger("cidserve.ipfs")

BATCH_SIZE = 1 << 20
"""Received bytes are handed to the verifying thread in batches of about this size."""

NODE_FETCH_BATCH = 16
"""dag-pb nodes asked for at once while listing a file's leaves."""

MAX_ERROR_BODY = 64 * 1024
"""Most of an error reply from the node that is read (to quote its message)."""

MAX_ADD_REPLY = 1 << 20
"""Most of an ``/api/v0/add`` reply that is read."""

_TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
_NOT_FOUND_HINTS = ("timed out", "timeout", "deadline exceeded", "not found", "no link named")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IpfsConfig:
    """Where the node is and how long to wait for it (``CIDSERVE_IPFS_*`` settings)."""

    api_url: str | None = None
    gateway_url: str | None = None
    connect_timeout_s: float = 2.0
    timeout_s: float = 30.0
    find_timeout_s: float = 10.0
    fetch_timeout_s: float = 600.0
    retries: int = 3
    retry_backoff_s: float = 0.2
    retry_after_s: int = 5
    max_connections: int = 8
    file_stream: bool = True
    """Read files of raw leaves with ``cat``, checked leaf by leaf; False: always walk the
    blocks of a ``dag/export`` CAR (slower; for a node whose ``cat`` misbehaves)."""

    def __post_init__(self) -> None:
        if not self.api_url and not self.gateway_url:
            raise ValueError("an IPFS store needs an RPC API URL or a gateway URL")


class Progress(Protocol):
    """Told how an upload advances (a progress bar)."""

    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int | None], Progress]
"""``(name, total bytes or None) -> Progress`` for each upload."""


class _Deadline:
    """The end of one fetch (``fetch_timeout_s`` from its start)."""

    def __init__(self, seconds: float, cid: str) -> None:
        self.seconds = seconds
        self.cid = cid
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise ContentTimeout(
                f"fetching {self.cid} from IPFS took longer than {self.seconds:g} s "
                "(CIDSERVE_IPFS_FETCH_TIMEOUT_S)",
                cid=self.cid,
            )


class _Worker:
    """Runs blocking steps one at a time in a thread, overlapping them with network reads.

    ``submit`` waits for the previous step, then starts the next one and returns at once;
    ``drain`` waits for the last one. Steps never run concurrently, so a step may use state
    (a parser, a file) that the others use; and nothing is left running when a fetch ends.
    """

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._current: Future[Any] | None = None

    async def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        await self.drain()
        self._current = self._executor.submit(fn, *args)

    async def drain(self) -> None:
        current = self._current
        if current is None:
            return
        try:
            await asyncio.shield(asyncio.wrap_future(current))
        finally:
            if current.done() and self._current is current:
                self._current = None

    async def settle(self) -> None:
        """Wait until no step runs, ignoring outcomes (cleanup after another error, even a
        cancellation: the step's file must not be closed under it)."""
        while self._current is not None:
            with contextlib.suppress(BaseException):
                await self.drain()


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
    ) -> None:
        self.config = config
        self.cache = cache
        self.progress = progress
        self.api = config.api_url.rstrip("/") + "/api/v0" if config.api_url else None
        self.gateway = config.gateway_url.rstrip("/") if config.gateway_url else None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=config.connect_timeout_s,
                read=config.timeout_s,
                write=config.timeout_s,
                pool=config.timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
                # Below the 5 s keep-alive of js-ipfs and Kubo: never reuse a connection the
                # node is about to close.
                keepalive_expiry=4.0,
            ),
            trust_env=False,
        )
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="ipfs-verify")
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
        return await self._thread(self.cache.contains, self._canonical(cid))

    async def get_path(self, cid: str, max_size: int) -> Path:
        """A local path holding the verified content of ``cid`` (from the cache, or fetched)."""
        canonical = self._canonical(cid)
        path = await self._thread(self.cache.lookup, canonical, max_size)
        if path is not None:
            return path
        return await self._fetch_once(cid, canonical, max_size)

    async def get_bytes(self, cid: str, max_size: int) -> bytes:
        """The verified content of ``cid`` (from the cache, or fetched)."""
        canonical = self._canonical(cid)
        for _ in range(2):
            data = await self._thread(self.cache.read_bytes, canonical, max_size)
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
        self.fetches += 1
        deadline = _Deadline(self.config.fetch_timeout_s, cid)
        blob = await self._thread(self.cache.begin)
        worker = _Worker(self._executor)
        t0 = time.perf_counter()
        try:
            if self.api is not None:
                await self._fetch_api(cid, canonical, blob, max_size, deadline, worker)
            else:
                await self._fetch_gateway(cid, canonical, blob, max_size, deadline, worker)
            path = await self._thread(self.cache.commit, canonical, blob)
        except BaseException:
            await worker.settle()
            await asyncio.shield(self._thread(blob.abort))
            raise
        log.info(
            "fetched and verified %s (%d bytes) from IPFS in %.0f ms",
            cid,
            blob.size,
            (time.perf_counter() - t0) * 1000,
        )
        return path

    async def _fetch_api(
        self,
        cid: str,
        canonical: str,
        blob: PendingBlob,
        max_size: int,
        deadline: _Deadline,
        worker: _Worker,
    ) -> None:
        """The root by ``block/get``; then the file checked leaf by leaf against its raw leaves
        (``cat``), or, for other layouts, the blocks walked from a ``dag/export`` CAR."""
        root = bytes(CID.decode(canonical))
        try:
            data = await self._block_get(cid, canonical, deadline)
            leaves = None
            if self.config.file_stream and parse_cid(root).codec == DAG_PB:
                with contextlib.suppress(NotPlannable):
                    leaves = await self._plan(cid, root, data, max_size, deadline)
            if leaves is not None:
                del data
                await self._cat_into(cid, canonical, leaves, blob, deadline, worker)
            else:
                await self._walk_car(cid, root, data, blob, max_size, deadline, worker)
        except DagTooLarge as exc:
            raise ContentTooLarge(str(exc), cid=cid) from None
        except NotAFile as exc:
            raise InvalidCid(f"{cid} cannot be loaded: {exc}", cid=cid) from None
        except DagError as exc:
            raise ContentIntegrityError(
                f"content {cid} failed verification: {exc}; nothing was kept", cid=cid
            ) from None

    async def _plan(
        self, cid: str, root: bytes, root_block: bytes, max_size: int, deadline: _Deadline
    ) -> list[tuple[bytes, int]]:
        """The raw leaves of the file in order, from its dag-pb nodes (``block/get``, a few
        at a time; 47 MB of 256 KiB leaves have three)."""
        planner = LeafPlanner(root, max_size)
        await self._thread(planner.add_node, root, root_block)
        probing = True  # until a node that could be a leaf has proved to be an inner node
        while wanted := planner.wanted():
            if probing:
                # Nodes too large to be leaves, and one that might be: a dag-pb leaf (another
                # layout) ends the plan after one wasted block.
                inner = [n for n in wanted if planner.surely_inner(n)]
                maybe = [n for n in wanted if not planner.surely_inner(n)][:1]
                nodes = (inner + maybe)[:NODE_FETCH_BATCH]
                probing = not maybe
            else:
                nodes = wanted[:NODE_FETCH_BATCH]
            blocks = await self._gather(
                [self._block_get(cid, cid_str(node), deadline) for node in nodes]
            )
            for node, block in zip(nodes, blocks, strict=True):
                await self._thread(planner.add_node, node, block)
        return await self._thread(planner.leaves)

    @staticmethod
    async def _gather(calls: list[Awaitable[T]]) -> list[T]:
        """Await ``calls`` concurrently; on the first failure cancel the rest and raise it."""
        tasks = [asyncio.ensure_future(call) for call in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _cat_into(
        self,
        cid: str,
        canonical: str,
        leaves: list[tuple[bytes, int]],
        blob: PendingBlob,
        deadline: _Deadline,
        worker: _Worker,
    ) -> None:
        """Stream ``cat`` and check every leaf's range against the leaf's CID."""
        assert self.api is not None
        verifier = LeafVerifier(cid, leaves, blob)

        async def stream() -> None:
            params = {"arg": canonical, "timeout": f"{self.config.fetch_timeout_s:g}s"}
            if verifier.offset:
                params["offset"] = str(verifier.offset)
            async with self._client.stream("POST", f"{self.api}/cat", params=params) as r:
                if r.status_code != 200:
                    await self._raise_for_reply(r, cid, cid)
                await self._pump(r, verifier.feed, lambda: verifier.done, deadline, worker)

        broken = 0
        while not verifier.done:
            deadline.check()
            verifier.restart()
            try:
                await self._with_retries(stream, cid, deadline, retry=False)
            except ContentUnavailable:
                broken += 1  # the stream broke: go on from the last verified leaf
                if broken > self.config.retries:
                    raise
                await self._backoff(broken)
                continue
            except ContentTimeout as exc:
                deadline.check()
                log.warning("cat of %s stalled at byte %d: %s", cid, verifier.offset, exc)
            finally:
                await worker.settle()
            if verifier.done:
                break
            # The stream ended or stalled short of the file: ask for the next leaf itself,
            # which answers promptly with a 404 naming it when the node cannot find it.
            leaf = verifier.next_leaf()
            assert leaf is not None
            block = await self._block_get(cid, cid_str(leaf), deadline)
            await self._thread(verifier.supply, leaf, block)

    async def _walk_car(
        self,
        cid: str,
        root: bytes,
        root_block: bytes,
        blob: PendingBlob,
        max_size: int,
        deadline: _Deadline,
        worker: _Worker,
    ) -> None:
        """Walk the DAG from ``dag/export`` CAR streams, every block checked (any layout)."""
        assembler = await self._thread(FileAssembler, root, blob, max_size)
        await self._thread(assembler.add_block, root, root_block)
        del root_block
        broken = 0
        target: bytes | None = root  # the whole DAG (the root block itself is skipped)
        while not assembler.done:
            deadline.check()
            target = target or assembler.resume_point()
            assert target is not None
            try:
                await self._export_into(cid, target, assembler, deadline, worker)
            except ContentUnavailable:
                # The stream broke: keep what it brought, export the rest again.
                broken += 1
                if broken > self.config.retries:
                    raise
                await self._backoff(broken)
                target = None
                continue
            except ContentTimeout as exc:
                deadline.check()
                log.warning("CAR stream of %s stalled: %s", cid_str(target), exc)
            target = None
            if assembler.done:
                break
            # The export ended (or stalled) short of the whole DAG: ask for the next block
            # itself, which answers promptly with a 404 when the node cannot find it.
            needed = assembler.next_needed()
            assert needed is not None
            data = await self._block_get(cid, cid_str(needed), deadline)
            await self._thread(assembler.add_block, needed, data)
            del data
        await self._thread(assembler.result)

    async def _pump(
        self,
        r: httpx.Response,
        feed: Callable[[list[bytes]], None],
        done: Callable[[], bool],
        deadline: _Deadline,
        worker: _Worker,
    ) -> None:
        """Hand a reply's body to ``feed`` in the worker thread, in batches of about
        ``BATCH_SIZE``, reading the next batch while the last one is processed."""
        batch: list[bytes] = []
        batched = 0
        async for chunk in r.aiter_raw():
            self._received(len(chunk))
            deadline.check()
            batch.append(chunk)
            batched += len(chunk)
            if batched >= BATCH_SIZE:
                await worker.submit(feed, batch)
                batch, batched = [], 0
                if done():
                    break
        if batch and not done():
            await worker.submit(feed, batch)
        await worker.drain()

    async def _block_get(self, cid: str, block: str, deadline: _Deadline) -> bytes:
        """One block by ``block/get``, bounded by ``MAX_BLOCK_SIZE`` (unverified)."""
        assert self.api is not None
        params = {"arg": block, "timeout": f"{self.config.find_timeout_s:g}s"}

        async def attempt() -> bytes:
            async with self._client.stream("POST", f"{self.api}/block/get", params=params) as r:
                if r.status_code != 200:
                    await self._raise_for_reply(r, cid, block)
                return await self._read_bounded(r, MAX_BLOCK_SIZE, cid, f"block {block}")

        return await self._with_retries(attempt, cid, deadline)

    async def _export_into(
        self,
        cid: str,
        target: bytes,
        assembler: FileAssembler,
        deadline: _Deadline,
        worker: _Worker,
    ) -> None:
        """Stream ``dag/export`` of ``target`` into the assembler, batch by batch."""
        assert self.api is not None
        params = {"arg": cid_str(target), "timeout": f"{self.config.fetch_timeout_s:g}s"}
        reader = CarReader()

        def feed(chunks: list[bytes]) -> None:
            for chunk in chunks:
                for block_cid, block in reader.feed(chunk):
                    assembler.add_block(block_cid, block)
                    if assembler.done:
                        return

        async def stream() -> None:
            async with self._client.stream("POST", f"{self.api}/dag/export", params=params) as r:
                if r.status_code != 200:
                    await self._raise_for_reply(r, cid, cid_str(target))
                await self._pump(r, feed, lambda: assembler.done, deadline, worker)

        try:
            await self._with_retries(stream, cid, deadline, retry=False)
        except CarFormatError as exc:
            raise ContentIntegrityError(
                f"content {cid} failed verification: the node's CAR stream is malformed: {exc}",
                cid=cid,
            ) from None
        finally:
            await worker.settle()

    async def _fetch_gateway(
        self,
        cid: str,
        canonical: str,
        blob: PendingBlob,
        max_size: int,
        deadline: _Deadline,
        worker: _Worker,
    ) -> None:
        """The file from ``/ipfs/<cid>``; its CID recomputed on the way must match."""
        assert self.gateway is not None
        builder = UnixFSBuilder()

        def feed(chunks: list[bytes]) -> None:
            for chunk in chunks:
                builder.update(chunk)
                blob.write(chunk)

        async def stream() -> None:
            request = self._client.build_request("GET", f"{self.gateway}/ipfs/{canonical}")
            try:
                r = await asyncio.wait_for(
                    self._client.send(request, stream=True), self.config.find_timeout_s
                )
            except TimeoutError:
                raise ContentNotFound(
                    f"{cid} was not found by the IPFS gateway within "
                    f"{self.config.find_timeout_s:g} s",
                    cid=cid,
                ) from None
            try:
                if r.status_code != 200:
                    await self._raise_for_reply(r, cid, cid)
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_size:
                    raise ContentTooLarge(
                        f"content {cid} is {declared} bytes, more than the {max_size} allowed",
                        cid=cid,
                    )
                received = 0
                batch: list[bytes] = []
                batched = 0
                async for chunk in r.aiter_bytes():
                    self._received(len(chunk))
                    deadline.check()
                    received += len(chunk)
                    if received > max_size:
                        raise ContentTooLarge(
                            f"content {cid} is more than the {max_size} bytes allowed", cid=cid
                        )
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= BATCH_SIZE:
                        await worker.submit(feed, batch)
                        batch, batched = [], 0
                if batch:
                    await worker.submit(feed, batch)
                await worker.drain()
            finally:
                await r.aclose()

        await self._with_retries(stream, cid, deadline)
        actual = await self._thread(builder.finish)
        if actual != canonical:
            raise ContentIntegrityError(
                f"content {cid} failed verification: the gateway's bytes have the CID {actual} "
                "(computed as ipfs add --cid-version=1 does); content added with another "
                "layout can only be verified block by block through the RPC API "
                "(CIDSERVE_IPFS_API_URL); nothing was kept",
                cid=cid,
            )

    # -- HTTP plumbing -------------------------------------------------------------------------

    async def _with_retries(
        self,
        attempt: Callable[[], Awaitable[T]],
        cid: str | None,
        deadline: _Deadline | None,
        *,
        retry: bool = True,
    ) -> T:
        """Run ``attempt``, retrying transient failures with exponential backoff.

        Transient: no connection, a connection dropped, a reply of 429/502/503/504. A node
        that stays silent past the read timeout is not retried (that would multiply the wait).
        """
        tries = 1 + (self.config.retries if retry else 0)
        where = self.config.api_url or self.config.gateway_url
        for n in range(1, tries + 1):
            try:
                return await attempt()
            except _Transient as exc:
                failure: ContentStoreError = ContentUnavailable(
                    f"the IPFS node at {where} answered {exc.status} for {cid or 'a request'}",
                    cid=cid,
                    retry_after_s=self.config.retry_after_s,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = ContentUnavailable(
                    f"the IPFS node at {where} cannot be reached ({type(exc).__name__}: {exc})",
                    cid=cid,
                    retry_after_s=self.config.retry_after_s,
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                failure = ContentUnavailable(
                    f"the connection to the IPFS node at {where} broke "
                    f"({type(exc).__name__}: {exc})",
                    cid=cid,
                    retry_after_s=self.config.retry_after_s,
                )
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
                raise ContentTimeout(
                    f"the IPFS node at {where} sent nothing for {self.config.timeout_s:g} s "
                    f"while serving {cid or 'a request'} (CIDSERVE_IPFS_TIMEOUT_S; "
                    f"{type(exc).__name__})",
                    cid=cid,
                ) from None
            except httpx.HTTPError as exc:
                raise ContentStoreError(
                    f"the request to the IPFS node at {where} failed: {type(exc).__name__}: {exc}",
                    cid=cid,
                ) from None
            if n == tries or (deadline is not None and time.monotonic() > deadline.end):
                raise failure
            log.info("IPFS request failed (%s); retry %d of %d", failure, n, tries - 1)
            await self._backoff(n)
        raise AssertionError("unreachable")

    async def _backoff(self, n: int) -> None:
        delay = self.config.retry_backoff_s * (2 ** (n - 1))
        await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def _raise_for_reply(self, r: httpx.Response, cid: str, what: str) -> None:
        """Turn a non-200 reply into the matching domain error."""
        if r.status_code in _TRANSIENT_STATUS:
            raise _Transient(r.status_code)
        body = b""
        async for chunk in r.aiter_raw():
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
        message = body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip()
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            message = str(json.loads(message).get("Message") or message)
        message = message[:500]
        lowered = message.lower()
        if r.status_code in (404, 410) or (
            r.status_code == 500 and any(h in lowered for h in _NOT_FOUND_HINTS)
        ):
            suffix = "" if what == cid else f" (block {what})"
            raise ContentNotFound(
                f"{cid}{suffix} was not found by the IPFS node within "
                f"{self.config.find_timeout_s:g} s: {message or r.status_code}",
                cid=cid,
            )
        raise ContentStoreError(
            f"the IPFS node refused {what}: HTTP {r.status_code}: {message}", cid=cid
        )

    async def _read_bounded(self, r: httpx.Response, limit: int, cid: str, what: str) -> bytes:
        parts: list[bytes] = []
        total = 0
        async for chunk in r.aiter_raw():
            self._received(len(chunk))
            total += len(chunk)
            if total > limit:
                raise ContentIntegrityError(
                    f"content {cid} failed verification: {what} is more than {limit} bytes",
                    cid=cid,
                )
            parts.append(chunk)
        return b"".join(parts)

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- writes --------------------------------------------------------------------------------

    def _require_api(self) -> str:
        if self.api is None:
            raise ContentStoreError(
                "adding content needs the IPFS RPC API (CIDSERVE_IPFS_API_URL); a gateway is "
                "read-only"
            )
        return self.api

    async def put_bytes(self, data: bytes) -> str:
        """Add and pin ``data``; return its CIDv1 (the same the embedded store gives)."""
        self._require_api()

        async def chunks() -> AsyncIterator[bytes]:
            with memoryview(data) as view:
                for i in range(0, len(view), READ_SIZE):
                    yield bytes(view[i : i + READ_SIZE])

        return await self._add(chunks(), "blob", len(data))

    async def put_file(self, path: Path) -> str:
        """Add and pin the file at ``path``, streamed, with progress for large files."""
        self._require_api()
        path = Path(path)
        size = (await self._thread(path.stat)).st_size
        f = await self._thread(open, path, "rb")
        try:

            async def chunks() -> AsyncIterator[bytes]:
                while piece := await self._thread(f.read, READ_SIZE):
                    yield piece

            return await self._add(chunks(), path.name, size)
        finally:
            await self._thread(f.close)

    async def put_stream(self, chunks: AsyncIterator[bytes]) -> str:
        """Add and pin a stream of bytes (not held whole in memory); return its CID."""
        self._require_api()
        return await self._add(chunks, "stream", None)

    async def _add(self, chunks: AsyncIterator[bytes], name: str, total: int | None) -> str:
        api = self._require_api()
        builder = UnixFSBuilder()
        boundary = secrets.token_hex(16)
        safe_name = "".join(c for c in name if c.isalnum() or c in "._-")[:100] or "blob"
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        progress = self.progress(name, total) if self.progress else None

        async def body() -> AsyncIterator[bytes]:
            yield head
            async for chunk in chunks:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise TypeError(f"expected bytes chunks, got {type(chunk).__name__}")
                if len(chunk) >= CHUNK_SIZE // 4:
                    await self._thread(builder.update, chunk)
                else:
                    builder.update(chunk)
                if progress is not None:
                    progress.update(len(chunk))
                yield bytes(chunk)
            yield tail

        params = {
            "cid-version": "1",
            "raw-leaves": "true",
            "chunker": f"size-{CHUNK_SIZE}",
            "hash": "sha2-256",
            "pin": "true",
            "cid-base": "base32",
            "progress": "false",
            "wrap-with-directory": "false",
        }
        where = self.config.api_url
        try:
            async with self._client.stream(
                "POST",
                f"{api}/add",
                params=params,
                content=body(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            ) as r:
                if r.status_code != 200:
                    await self._raise_for_reply(r, name, name)
                reply = bytearray()
                async for piece in r.aiter_raw():
                    reply += piece
                    if len(reply) > MAX_ADD_REPLY:
                        raise ContentStoreError(f"the reply of {where} to add is too long")
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ContentUnavailable(
                f"the IPFS node at {where} cannot be reached ({type(exc).__name__}: {exc})",
                retry_after_s=self.config.retry_after_s,
            ) from None
        except httpx.TimeoutException as exc:
            raise ContentTimeout(
                f"the IPFS node at {where} did not answer add in time: {exc}"
            ) from None
        except httpx.HTTPError as exc:
            raise ContentStoreError(f"adding to the IPFS node at {where} failed: {exc}") from None
        finally:
            if progress is not None:
                progress.close()
        expected = builder.finish()
        added = _added_cid(bytes(reply))
        if added is None:
            raise ContentStoreError(f"the IPFS node at {where} did not say what it added")
        if canonical_cid(added) != expected:
            raise ContentIntegrityError(
                f"the IPFS node stored {safe_name} as {added}, but ipfs add --cid-version=1 "
                f"gives {expected}: the node does not import with the expected settings",
                cid=added,
            )
        return expected

    # -- status --------------------------------------------------------------------------------

    async def health(self) -> dict[str, object]:
        """``ok``; ``degraded`` when the node is unreachable (cached content is still served);
        ``down`` when the blob cache directory is not writable."""
        stats = await self._thread(self.cache.stats)
        usable = await self._thread(self.cache.usable)
        report: dict[str, object] = {
            "kind": "ipfs",
            "api": self.config.api_url,
            "gateway": self.config.gateway_url,
            "blob_cache": stats,
            "bytes_fetched": self.bytes_fetched,
        }
        try:
            if self.api is not None:
                r = await self._client.post(f"{self.api}/version", timeout=2.0)
                if r.status_code == 200:
                    report["node_version"] = str(r.json().get("Version", "?"))
            else:
                assert self.gateway is not None
                r = await self._client.get(self.gateway + "/", timeout=2.0)
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
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Transient(Exception):
    """A reply that says "try again" (429, 502, 503, 504)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _added_cid(reply: bytes) -> str | None:
    """The ``Hash`` of the last object in an ``/api/v0/add`` reply (JSON lines)."""
    added = None
    for line in reply.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("Hash"), str):
            added = obj["Hash"]
    return added
