"""A content store backed by a local directory, addressed by ``ipfs add --cid-version=1`` CIDs.

Layout::

    <root>/blobs/<last two characters of the CID>/<CIDv1 base32>   verified content
    <root>/blobs/.incoming-*.tmp                                     writes in progress

A write streams into a temporary file inside ``blobs/`` while its CID is computed, is fsynced
and then atomically renamed into place, so a blob is either complete or absent. Every read
re-checks the bytes against the CID; a blob that fails is deleted. For ``get_path`` the check
is remembered per file identity (size, mtime, inode) so an unchanged file is hashed once per
process. CID strings are parsed and re-rendered canonically before any path is built from them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from registry.files import AtomicFile, fsync_dir
from registry.store import (
    ContentIntegrityError,
    ContentNotFound,
    ContentTooLarge,
    ContentUnavailable,
    InvalidCid,
)
from registry.unixfs import (
    DAG_PB_PREFIX,
    RAW_PREFIX,
    READ_SIZE,
    UnixFSBuilder,
    canonical_cid,
    cid_of_bytes,
    cid_of_stream,
)

STREAM_BATCH = READ_SIZE
"""``put_stream`` hands chunks to the writer thread once this many bytes have arrived."""

VERIFIED_CACHE_SIZE = 4096
"""How many verified files ``get_path`` remembers."""

_TMP_PREFIX = ".incoming-"
_TMP_SUFFIX = ".tmp"
_CANONICAL = re.compile(r"b[a-z2-7]{58}")
_FileIdentity = tuple[int, int, int]  # (size, mtime_ns, inode)


def _identity(st: os.stat_result) -> _FileIdentity:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _read_at_most(f: BinaryIO, limit: int) -> bytes:
    """Read to end of file or ``limit`` bytes, whichever comes first, in bounded reads."""
    parts: list[bytes] = []
    total = 0
    while total < limit:
        piece = f.read(min(READ_SIZE, limit - total))
        if not piece:
            break
        parts.append(piece)
        total += len(piece)
    return b"".join(parts)


class _BlobWriter:
    """One blob being written: a temp file in ``blobs/`` plus the CID computed on the way."""

    def __init__(self, blobs: Path) -> None:
        self._blobs = blobs
        self._tmp = AtomicFile(blobs, _TMP_PREFIX, _TMP_SUFFIX)
        self._file = self._tmp.file
        self._builder = UnixFSBuilder()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)
        self._builder.update(data)

    def write_many(self, pieces: list[bytes | bytearray | memoryview]) -> None:
        for piece in pieces:
            self.write(piece)

    def copy_from(self, path: Path) -> None:
        buf = bytearray(READ_SIZE)
        with open(path, "rb", buffering=0) as src, memoryview(buf) as view:
            while n := src.readinto(buf):
                self.write(view[:n])

    def commit(self, target_for: _PathFor) -> str:
        """Make the blob durable under its CID; return the CID."""
        try:
            cid = self._builder.finish()
            target = target_for(cid)
            target.parent.mkdir(exist_ok=True)
        except BaseException:
            self.abort()
            raise
        self._tmp.commit(target, fsync=True)
        fsync_dir(target.parent)
        return cid

    def abort(self) -> None:
        """Drop the partial blob."""
        self._tmp.abort()


class _PathFor:
    """Maps a canonical CID string to its blob path."""

    def __init__(self, blobs: Path) -> None:
        self.blobs = blobs

    def __call__(self, canonical: str) -> Path:
        return self.blobs / canonical[-2:] / canonical


class LocalContentStore:
    """``ContentStore`` over a content-addressed directory (see the module docstring)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._path_for = _PathFor(self._blobs)
        self._verified: dict[Path, _FileIdentity] = {}
        self._verified_lock = threading.Lock()

    # -- CIDs and paths ----------------------------------------------------------------------

    def _canonical(self, cid: str) -> str:
        """Validate ``cid`` and return the CIDv1 base32 string its blob is filed under."""
        try:
            canonical = canonical_cid(cid)
        except ValueError as exc:
            raise InvalidCid(str(exc), cid=cid if isinstance(cid, str) else None) from None
        if not _CANONICAL.fullmatch(canonical):
            raise InvalidCid(f"unsupported CID {cid!r}: not a sha2-256 raw or dag-pb CID", cid=cid)
        body = canonical[1:].upper()
        binary = base64.b32decode(body + "=" * (-len(body) % 8))
        if len(binary) != 36 or binary[:4] not in (RAW_PREFIX, DAG_PB_PREFIX):
            raise InvalidCid(f"unsupported CID {cid!r}: not a sha2-256 raw or dag-pb CID", cid=cid)
        return canonical

    def blob_path(self, cid: str) -> Path:
        """Where the blob for ``cid`` lives (whether or not it exists). Raises ``InvalidCid``."""
        return self._path_for(self._canonical(cid))

    # -- verification cache --------------------------------------------------------------------

    def _is_verified(self, path: Path, identity: _FileIdentity) -> bool:
        with self._verified_lock:
            return self._verified.get(path) == identity

    def _remember(self, path: Path, identity: _FileIdentity) -> None:
        with self._verified_lock:
            self._verified.pop(path, None)
            self._verified[path] = identity
            while len(self._verified) > VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]

    def _forget(self, path: Path) -> None:
        with self._verified_lock:
            self._verified.pop(path, None)

    def _reject(self, cid: str, path: Path, identity: _FileIdentity, actual: str) -> None:
        """Delete a blob that failed verification (unless it was replaced meanwhile) and raise."""
        self._forget(path)
        with contextlib.suppress(OSError):
            if _identity(os.stat(path)) == identity:
                path.unlink()
        raise ContentIntegrityError(
            f"content stored for {cid} does not match it (its bytes hash to {actual}); "
            "the blob was deleted",
            cid=cid,
        )

    # -- writes --------------------------------------------------------------------------------

    def _put_bytes_sync(self, data: bytes | bytearray | memoryview) -> str:
        writer = _BlobWriter(self._blobs)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(self._path_for)

    def _put_file_sync(self, path: Path) -> str:
        writer = _BlobWriter(self._blobs)
        try:
            writer.copy_from(path)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(self._path_for)

    async def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its CIDv1 (base32), computed as ``ipfs add --cid-version=1``."""
        return await asyncio.to_thread(self._put_bytes_sync, data)

    async def put_stream(self, chunks: AsyncIterator[bytes]) -> str:
        """Store a stream of bytes, holding at most about ``STREAM_BATCH`` bytes at a time."""
        writer = await asyncio.to_thread(_BlobWriter, self._blobs)
        try:
            batch: list[bytes | bytearray | memoryview] = []
            batched = 0
            async for chunk in chunks:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise TypeError(f"put_stream expects bytes chunks, got {type(chunk).__name__}")
                batch.append(chunk)
                batched += len(chunk)
                if batched >= STREAM_BATCH:
                    await asyncio.to_thread(writer.write_many, batch)
                    batch, batched = [], 0
            if batch:
                await asyncio.to_thread(writer.write_many, batch)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(writer.abort))
            raise
        return await asyncio.to_thread(writer.commit, self._path_for)

    async def put_file(self, path: Path) -> str:
        """Store the file at ``path`` (streamed); return its CID."""
        return await asyncio.to_thread(self._put_file_sync, Path(path))

    # -- reads ---------------------------------------------------------------------------------

    def _open(self, cid: str, path: Path) -> BinaryIO:
        try:
            return open(path, "rb", buffering=0)  # the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ContentNotFound(f"no content stored for {cid}", cid=cid) from None
        except OSError as exc:
            raise ContentUnavailable(f"cannot read the blob for {cid}: {exc}", cid=cid) from None

    @staticmethod
    def _check_size(cid: str, size: int, max_size: int) -> None:
        if size > max_size:
            raise ContentTooLarge(
                f"content {cid} is {size} bytes, more than the {max_size} allowed", cid=cid
            )

    def _get_bytes_sync(self, cid: str, canonical: str, max_size: int) -> bytes:
        path = self._path_for(canonical)
        with self._open(cid, path) as f:
            identity = _identity(os.fstat(f.fileno()))
            self._check_size(cid, identity[0], max_size)
            data = _read_at_most(f, max_size + 1)
        self._check_size(cid, len(data), max_size)
        actual = cid_of_bytes(data)  # verify exactly the bytes handed out
        if actual != canonical:
            self._reject(cid, path, identity, actual)
        return data

    def _get_path_sync(self, cid: str, canonical: str, max_size: int) -> Path:
        path = self._path_for(canonical)
        with self._open(cid, path) as f:
            identity = _identity(os.fstat(f.fileno()))
            self._check_size(cid, identity[0], max_size)
            if self._is_verified(path, identity):
                return path
            actual = cid_of_stream(f)
            unchanged = _identity(os.fstat(f.fileno())) == identity
        if actual != canonical:
            self._reject(cid, path, identity, actual)
        if unchanged:
            self._remember(path, identity)
        return path

    async def get_bytes(self, cid: str, max_size: int) -> bytes:
        """Return the verified content of ``cid`` (see ``ContentStore.get_bytes``)."""
        canonical = self._canonical(cid)
        return await asyncio.to_thread(self._get_bytes_sync, cid, canonical, max_size)

    async def get_path(self, cid: str, max_size: int) -> Path:
        """Return the path of the verified blob for ``cid`` (see ``ContentStore.get_path``)."""
        canonical = self._canonical(cid)
        return await asyncio.to_thread(self._get_path_sync, cid, canonical, max_size)

    async def has(self, cid: str) -> bool:
        """Whether a blob for ``cid`` exists (not verified). Raises ``InvalidCid``."""
        path = self._path_for(self._canonical(cid))
        return await asyncio.to_thread(path.is_file)

    async def health(self) -> dict[str, object]:
        """``ok`` while the blob directory exists and is writable, else ``down``."""

        def usable() -> bool:
            return self._blobs.is_dir() and os.access(self._blobs, os.W_OK | os.X_OK)

        status = "ok" if await asyncio.to_thread(usable) else "down"
        return {"status": status, "kind": "local", "root": str(self.root)}

    async def aclose(self) -> None:
        """Nothing to release: files are opened and closed per call."""
