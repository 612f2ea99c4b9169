"""Verified fetches through the Kubo RPC API, every block checked against its CID.

:func:`fetch_api` asks for the root by ``block/get`` (with the node's ``timeout=`` set to the
find timeout, so a CID the node cannot find is a prompt 404; a file of one block is then done).
A file of raw leaves (what ``ipfs add --cid-version=1`` and ``cidserve publish`` write): its
dag-pb nodes by ``block/get``, each verified, list the leaves (``registry.dag_leaves``); the
file itself comes by ``cat`` and each leaf's range is hashed and compared with the leaf's CID as
it passes (a raw block is its bytes of the file). Any other layout (dag-pb leaves, inline
data): ``dag/export`` of the DAG as a CAR stream (``registry.car``), every block hashed and
compared with its CID while the UnixFS DAG is walked (``registry.dag_verify``). Either way the
file is written, in order, straight into the pending blob. When a stream breaks (retried with
backoff) or ends or stalls short of the file, what it brought is kept: the next missing block
is asked for by ``block/get`` (a prompt 404 naming it when the node cannot find it), then the
stream goes on from there (``cat`` with ``offset=``, ``dag/export`` of the subtree).

A mismatch raises ``ContentIntegrityError`` naming the CID (and the block); the caller drops
the pending blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

from multiformats import CID

from registry.blob_record import PendingBlob
from registry.car import CarFormatError, CarReader
from registry.dag_blocks import DAG_PB, DagError, DagTooLarge, NotAFile, cid_str, parse_cid
from registry.dag_leaves import LeafPlanner, LeafVerifier, NotPlannable
from registry.dag_verify import FileAssembler
from registry.ipfs_client import Deadline, IpfsClient, Worker
from registry.store import (
    ContentIntegrityError,
    ContentTimeout,
    ContentTooLarge,
    ContentUnavailable,
    InvalidCid,
)

log = logging.getLogger("cidserve.ipfs")

NODE_FETCH_BATCH = 16
"""dag-pb nodes asked for at once while listing a file's leaves."""

T = TypeVar("T")


async def fetch_api(
    client: IpfsClient,
    cid: str,
    canonical: str,
    blob: PendingBlob,
    max_size: int,
    deadline: Deadline,
    worker: Worker,
) -> None:
    """The root by ``block/get``; then the file checked leaf by leaf against its raw leaves
    (``cat``), or, for other layouts, the blocks walked from a ``dag/export`` CAR."""
    root = bytes(CID.decode(canonical))
    try:
        data = await client.block_get(cid, canonical, deadline)
        leaves = None
        if client.config.file_stream and parse_cid(root).codec == DAG_PB:
            with contextlib.suppress(NotPlannable):
                leaves = await _plan(client, cid, root, data, max_size, deadline)
        if leaves is not None:
            del data
            await _cat_into(client, cid, canonical, leaves, blob, deadline, worker)
        else:
            await _walk_car(client, cid, root, data, blob, max_size, deadline, worker)
    except DagTooLarge as exc:
        raise ContentTooLarge(str(exc), cid=cid) from None
    except NotAFile as exc:
        raise InvalidCid(f"{cid} cannot be loaded: {exc}", cid=cid) from None
    except DagError as exc:
        raise ContentIntegrityError(
            f"content {cid} failed verification: {exc}; nothing was kept", cid=cid
        ) from None


async def _plan(
    client: IpfsClient, cid: str, root: bytes, root_block: bytes, max_size: int, deadline: Deadline
) -> list[tuple[bytes, int]]:
    """The raw leaves of the file in order, from its dag-pb nodes (``block/get``, a few
    at a time; 47 MB of 256 KiB leaves have three)."""
    planner = LeafPlanner(root, max_size)
    await client.thread(planner.add_node, root, root_block)
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
        blocks = await _gather([client.block_get(cid, cid_str(node), deadline) for node in nodes])
        for node, block in zip(nodes, blocks, strict=True):
            await client.thread(planner.add_node, node, block)
    return await client.thread(planner.leaves)


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
    client: IpfsClient,
    cid: str,
    canonical: str,
    leaves: list[tuple[bytes, int]],
    blob: PendingBlob,
    deadline: Deadline,
    worker: Worker,
) -> None:
    """Stream ``cat`` and check every leaf's range against the leaf's CID."""
    assert client.api is not None
    verifier = LeafVerifier(cid, leaves, blob)

    async def stream() -> None:
        params = {"arg": canonical, "timeout": f"{client.config.fetch_timeout_s:g}s"}
        if verifier.offset:
            params["offset"] = str(verifier.offset)
        async with client.http.stream("POST", f"{client.api}/cat", params=params) as r:
            if r.status_code != 200:
                await client.raise_for_reply(r, cid, cid)
            await client.pump(r, verifier.feed, lambda: verifier.done, deadline, worker)

    broken = 0
    while not verifier.done:
        deadline.check()
        verifier.restart()
        try:
            await client.with_retries(stream, cid, deadline, retry=False)
        except ContentUnavailable:
            broken += 1  # the stream broke: go on from the last verified leaf
            if broken > client.config.retries:
                raise
            await client.backoff(broken)
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
        block = await client.block_get(cid, cid_str(leaf), deadline)
        await client.thread(verifier.supply, leaf, block)


async def _walk_car(
    client: IpfsClient,
    cid: str,
    root: bytes,
    root_block: bytes,
    blob: PendingBlob,
    max_size: int,
    deadline: Deadline,
    worker: Worker,
) -> None:
    """Walk the DAG from ``dag/export`` CAR streams, every block checked (any layout)."""
    assembler = await client.thread(FileAssembler, root, blob, max_size)
    await client.thread(assembler.add_block, root, root_block)
    del root_block
    broken = 0
    target: bytes | None = root  # the whole DAG (the root block itself is skipped)
    while not assembler.done:
        deadline.check()
        target = target or assembler.resume_point()
        assert target is not None
        try:
            await _export_into(client, cid, target, assembler, deadline, worker)
        except ContentUnavailable:
            # The stream broke: keep what it brought, export the rest again.
            broken += 1
            if broken > client.config.retries:
                raise
            await client.backoff(broken)
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
        data = await client.block_get(cid, cid_str(needed), deadline)
        await client.thread(assembler.add_block, needed, data)
        del data
    await client.thread(assembler.result)


async def _export_into(
    client: IpfsClient,
    cid: str,
    target: bytes,
    assembler: FileAssembler,
    deadline: Deadline,
    worker: Worker,
) -> None:
    """Stream ``dag/export`` of ``target`` into the assembler, batch by batch."""
    assert client.api is not None
    params = {"arg": cid_str(target), "timeout": f"{client.config.fetch_timeout_s:g}s"}
    reader = CarReader()

    def feed(chunks: list[bytes]) -> None:
        for chunk in chunks:
            for block_cid, block in reader.feed(chunk):
                assembler.add_block(block_cid, block)
                if assembler.done:
                    return

    async def stream() -> None:
        async with client.http.stream("POST", f"{client.api}/dag/export", params=params) as r:
            if r.status_code != 200:
                await client.raise_for_reply(r, cid, cid_str(target))
            await client.pump(r, feed, lambda: assembler.done, deadline, worker)

    try:
        await client.with_retries(stream, cid, deadline, retry=False)
    except CarFormatError as exc:
        raise ContentIntegrityError(
            f"content {cid} failed verification: the node's CAR stream is malformed: {exc}",
            cid=cid,
        ) from None
    finally:
        await worker.settle()
