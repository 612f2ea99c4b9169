"""Publishing to an IPFS node: ``/api/v0/add`` + pin, checked against the CID computed here.

The content is streamed (multipart, chunked; never held whole) with ``cid-version=1``, raw
leaves, 256 KiB chunks and ``pin=true``; its CID is computed locally on the way
(``registry.unixfs``) and must equal the node's, so the node holds the content under the same
CIDs as the embedded store. A gateway is read-only: adding needs the RPC API.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import httpx

from registry.ipfs_client import IpfsClient
from registry.store import (
    ContentIntegrityError,
    ContentStoreError,
    ContentTimeout,
    ContentUnavailable,
)
from registry.unixfs import CHUNK_SIZE, READ_SIZE, UnixFSBuilder, canonical_cid

MAX_ADD_REPLY = 1 << 20
"""Most of an ``/api/v0/add`` reply that is read."""


class Progress(Protocol):
    """Told how an upload advances (a progress bar)."""

    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int | None], Progress]
"""``(name, total bytes or None) -> Progress`` for each upload."""


def _require_api(client: IpfsClient) -> str:
    if client.api is None:
        raise ContentStoreError(
            "adding content needs the IPFS RPC API (CIDSERVE_IPFS_API_URL); a gateway is read-only"
        )
    return client.api


async def add_bytes(client: IpfsClient, data: bytes, progress: ProgressFactory | None) -> str:
    """Add and pin ``data``; return its CIDv1 (the same the embedded store gives)."""
    _require_api(client)

    async def chunks() -> AsyncIterator[bytes]:
        with memoryview(data) as view:
            for i in range(0, len(view), READ_SIZE):
                yield bytes(view[i : i + READ_SIZE])

    return await _add(client, chunks(), "blob", len(data), progress)


async def add_file(client: IpfsClient, path: Path, progress: ProgressFactory | None) -> str:
    """Add and pin the file at ``path``, streamed, with progress for large files."""
    _require_api(client)
    path = Path(path)
    size = (await client.thread(path.stat)).st_size
    f = await client.thread(open, path, "rb")
    try:

        async def chunks() -> AsyncIterator[bytes]:
            while piece := await client.thread(f.read, READ_SIZE):
                yield piece

        return await _add(client, chunks(), path.name, size, progress)
    finally:
        await client.thread(f.close)


async def add_stream(
    client: IpfsClient, chunks: AsyncIterator[bytes], progress: ProgressFactory | None
) -> str:
    """Add and pin a stream of bytes (not held whole in memory); return its CID."""
    _require_api(client)
    return await _add(client, chunks, "stream", None, progress)


async def _add(
    client: IpfsClient,
    chunks: AsyncIterator[bytes],
    name: str,
    total: int | None,
    progress_factory: ProgressFactory | None,
) -> str:
    api = _require_api(client)
    builder = UnixFSBuilder()
    boundary = secrets.token_hex(16)
    safe_name = "".join(c for c in name if c.isalnum() or c in "._-")[:100] or "blob"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    progress = progress_factory(name, total) if progress_factory else None

    async def body() -> AsyncIterator[bytes]:
        yield head
        async for chunk in chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"expected bytes chunks, got {type(chunk).__name__}")
            if len(chunk) >= CHUNK_SIZE // 4:
                await client.thread(builder.update, chunk)
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
    where = client.where  # redacted: no API key from the URL in messages
    try:
        async with client.http.stream(
            "POST",
            f"{api}/add",
            params=params,
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        ) as r:
            if r.status_code != 200:
                await client.raise_for_reply(r, name, name)
            reply = bytearray()
            async for piece in r.aiter_raw():
                reply += piece
                if len(reply) > MAX_ADD_REPLY:
                    raise ContentStoreError(f"the reply of {where} to add is too long")
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ContentUnavailable(
            f"the IPFS node at {where} cannot be reached ({type(exc).__name__}: {exc})",
            retry_after_s=client.config.retry_after_s,
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
