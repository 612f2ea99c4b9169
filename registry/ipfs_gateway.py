"""A verified fetch through an HTTP path gateway, which serves files, not blocks.

:func:`fetch_gateway` streams ``GET /ipfs/<cid>`` (the file itself) into the pending blob and
recomputes its CID on the way with the layout ``ipfs add --cid-version=1`` uses
(``registry.unixfs``); it must match. Content added with another layout (CIDv0 with dag-pb
leaves, other chunkers) cannot be proven from its bytes alone and is refused: read it through
the RPC API (``registry.ipfs_fetch``).
"""

from __future__ import annotations

import asyncio

from registry.blob_record import PendingBlob
from registry.ipfs_client import BATCH_SIZE, Deadline, IpfsClient, Worker
from registry.store import ContentIntegrityError, ContentNotFound, ContentTooLarge
from registry.unixfs import UnixFSBuilder


async def fetch_gateway(
    client: IpfsClient,
    cid: str,
    canonical: str,
    blob: PendingBlob,
    max_size: int,
    deadline: Deadline,
    worker: Worker,
) -> None:
    """The file from ``/ipfs/<cid>``; its CID recomputed on the way must match."""
    assert client.gateway is not None
    builder = UnixFSBuilder()

    def feed(chunks: list[bytes]) -> None:
        for chunk in chunks:
            builder.update(chunk)
            blob.write(chunk)

    async def stream() -> None:
        request = client.http.build_request("GET", f"{client.gateway}/ipfs/{canonical}")
        try:
            r = await asyncio.wait_for(
                client.http.send(request, stream=True), client.config.find_timeout_s
            )
        except TimeoutError:
            raise ContentNotFound(
                f"{cid} was not found by the IPFS gateway within "
                f"{client.config.find_timeout_s:g} s",
                cid=cid,
            ) from None
        try:
            if r.status_code != 200:
                await client.raise_for_reply(r, cid, cid)
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
                client.received(len(chunk))
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

    await client.with_retries(stream, cid, deadline)
    actual = await client.thread(builder.finish)
    if actual != canonical:
        raise ContentIntegrityError(
            f"content {cid} failed verification: the gateway's bytes have the CID {actual} "
            "(computed as ipfs add --cid-version=1 does); content added with another "
            "layout can only be verified block by block through the RPC API "
            "(CIDSERVE_IPFS_API_URL); nothing was kept",
            cid=cid,
        )
