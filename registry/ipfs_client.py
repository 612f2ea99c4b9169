"""The transport of the IPFS store: one HTTP client for a Kubo RPC API (or a path gateway).

:class:`IpfsClient` holds the one ``httpx.AsyncClient`` (keep-alive connections, bounded pool
and timeouts, no proxy from the environment) and the small thread pool that runs blocking work
(parsing, hashing, file writes), never on the event loop. It retries transient failures with
exponential backoff and jitter, turns the node's replies and transport errors into the store's
errors (``registry.store``), reads bounded bodies (``block/get``) and hands streamed bodies to a
:class:`Worker` in batches. Nothing here verifies content: the callers do
(``registry.ipfs_fetch``, ``registry.ipfs_gateway``).

Errors: the node unreachable (after retries) -> ``ContentUnavailable`` (503 + ``Retry-After``);
a CID the node cannot find within the find timeout -> ``ContentNotFound`` (404); a node that
stays silent longer than the read timeout, or a fetch longer than the fetch timeout ->
``ContentTimeout`` (504).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from registry.dagpb import MAX_BLOCK_SIZE
from registry.redact import redact_url
from registry.store import (
    ContentIntegrityError,
    ContentNotFound,
    ContentStoreError,
    ContentTimeout,
    ContentUnavailable,
)

log = logging.getLogger("cidserve.ipfs")

BATCH_SIZE = 1 << 20
"""Received bytes are handed to the verifying thread in batches of about this size."""

MAX_ERROR_BODY = 64 * 1024
"""Most of an error reply from the node that is read (to quote its message)."""

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


class Deadline:
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


class Worker:
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


class Transient(Exception):
    """A reply that says "try again" (429, 502, 503, 504)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class IpfsClient:
    """The HTTP client, thread pool and error handling shared by every request to the node.

    ``on_received(n)`` is called for every ``n`` bytes of content received (verified or not).
    """

    def __init__(self, config: IpfsConfig, on_received: Callable[[int], None]) -> None:
        self.config = config
        self.api = config.api_url.rstrip("/") + "/api/v0" if config.api_url else None
        self.gateway = config.gateway_url.rstrip("/") if config.gateway_url else None
        self.where = redact_url(config.api_url or config.gateway_url or "")
        self.received = on_received
        self.http = httpx.AsyncClient(
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
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="ipfs-verify")

    def worker(self) -> Worker:
        """A new :class:`Worker` on this client's threads (one per fetch)."""
        return Worker(self.executor)

    async def thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in the thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    async def with_retries(
        self,
        attempt: Callable[[], Awaitable[T]],
        cid: str | None,
        deadline: Deadline | None,
        *,
        retry: bool = True,
    ) -> T:
        """Run ``attempt``, retrying transient failures with exponential backoff.

        Transient: no connection, a connection dropped, a reply of 429/502/503/504. A node
        that stays silent past the read timeout is not retried (that would multiply the wait).
        """
        tries = 1 + (self.config.retries if retry else 0)
        where = self.where
        for n in range(1, tries + 1):
            try:
                return await attempt()
            except Transient as exc:
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
            await self.backoff(n)
        raise AssertionError("unreachable")

    async def backoff(self, n: int) -> None:
        """Sleep before the ``n``-th retry: exponential, with jitter."""
        delay = self.config.retry_backoff_s * (2 ** (n - 1))
        await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def raise_for_reply(self, r: httpx.Response, cid: str, what: str) -> None:
        """Turn a non-200 reply into the matching domain error."""
        if r.status_code in _TRANSIENT_STATUS:
            raise Transient(r.status_code)
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

    async def read_bounded(self, r: httpx.Response, limit: int, cid: str, what: str) -> bytes:
        """A reply's whole body, at most ``limit`` bytes (more fails ``cid``'s verification)."""
        parts: list[bytes] = []
        total = 0
        async for chunk in r.aiter_raw():
            self.received(len(chunk))
            total += len(chunk)
            if total > limit:
                raise ContentIntegrityError(
                    f"content {cid} failed verification: {what} is more than {limit} bytes",
                    cid=cid,
                )
            parts.append(chunk)
        return b"".join(parts)

    async def block_get(self, cid: str, block: str, deadline: Deadline) -> bytes:
        """One block by ``block/get``, bounded by ``MAX_BLOCK_SIZE`` (unverified)."""
        assert self.api is not None
        params = {"arg": block, "timeout": f"{self.config.find_timeout_s:g}s"}

        async def attempt() -> bytes:
            async with self.http.stream("POST", f"{self.api}/block/get", params=params) as r:
                if r.status_code != 200:
                    await self.raise_for_reply(r, cid, block)
                return await self.read_bounded(r, MAX_BLOCK_SIZE, cid, f"block {block}")

        return await self.with_retries(attempt, cid, deadline)

    async def pump(
        self,
        r: httpx.Response,
        feed: Callable[[list[bytes]], None],
        done: Callable[[], bool],
        deadline: Deadline,
        worker: Worker,
    ) -> None:
        """Hand a reply's body to ``feed`` in the worker thread, in batches of about
        ``BATCH_SIZE``, reading the next batch while the last one is processed."""
        batch: list[bytes] = []
        batched = 0
        async for chunk in r.aiter_raw():
            self.received(len(chunk))
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

    async def aclose(self) -> None:
        """Close the HTTP connections and the worker threads."""
        await self.http.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)
