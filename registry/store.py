"""The content-store interface: bytes in, CID out; CID in, verified bytes out.

Every store answers for content by its CID. Implementations:

* ``registry.local_store.LocalContentStore``: a content-addressed directory (embedded defaults).

A store never hands out bytes it has not verified against the CID it was asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, runtime_checkable


class ContentStoreError(Exception):
    """Base class for content-store failures. ``cid`` names the content concerned."""

    def __init__(self, message: str, cid: str | None = None) -> None:
        super().__init__(message)
        self.cid = cid


class ContentNotFound(ContentStoreError):
    """No content with that CID is known to the store (or it was not found in time)."""


class ContentTooLarge(ContentStoreError):
    """The content is larger than the caller allowed."""


class ContentIntegrityError(ContentStoreError):
    """Bytes did not match the CID that names them."""


class ContentUnavailable(ContentStoreError):
    """The store's backend cannot be reached right now (try again later)."""

    def __init__(self, message: str, cid: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, cid)
        self.retry_after_s = retry_after_s


class ContentTimeout(ContentStoreError):
    """The store's backend did not answer in time."""


class InvalidCid(ContentStoreError):
    """The string is not a CID this store understands."""


@runtime_checkable
class ContentStore(Protocol):
    """What the loader and the publisher need from a store of content-addressed blobs."""

    name: str

    async def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its CIDv1 (base32), computed as ``ipfs add --cid-version=1``."""
        ...

    async def put_stream(self, chunks: AsyncIterator[bytes]) -> str:
        """Store a stream of bytes without holding it whole in memory; return its CID."""
        ...

    async def put_file(self, path: Path) -> str:
        """Store the file at ``path`` (streamed); return its CID."""
        ...

    async def get_bytes(self, cid: str, max_size: int) -> bytes:
        """Return the verified content of ``cid``.

        Raises ``ContentTooLarge`` when it is larger than ``max_size`` bytes, ``ContentNotFound``
        when the store has no such content, ``ContentIntegrityError`` when it fails verification.
        """
        ...

    async def get_path(self, cid: str, max_size: int) -> Path:
        """Return a local file path holding the verified content of ``cid`` (for large models)."""
        ...

    async def has(self, cid: str) -> bool:
        """Whether the store holds ``cid`` (locally, without fetching)."""
        ...

    async def health(self) -> dict[str, object]:
        """A small readiness report: ``{"status": "ok" | "degraded" | "down", ...}``."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
