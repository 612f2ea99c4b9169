"""One blob of the blob cache on disk: the file being written, and its SHA-256 record.

A blob is written to a temporary file in the cache directory while it is verified (the caller
streams verified bytes into :class:`PendingBlob`), then :meth:`PendingBlob.install` renames it
into place, its record (written atomically) just before it: a blob is complete or absent. The
record (``<blob>.sha256``) lists the SHA-256 of each range of the file: for a raw leaf that is
the digest its CID carries, already checked when the block arrived (so the bytes are hashed
once); other ranges are hashed as they are written. The record is needed because the CID of a
UnixFS file cannot always be recomputed from the file alone (the DAG's layout is not in the
file); the SHA-256 of its ranges can. :func:`read_record` with :func:`file_matches` or
:func:`bytes_match` checks a blob against it (``registry.blob_cache`` does, on read).

All functions block (file I/O and hashing): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from registry.files import AtomicFile, sha256_read

TMP_PREFIX = ".incoming-"
TMP_SUFFIX = ".tmp"
"""Names of the temporary files of writes in progress (``.incoming-*.tmp``)."""

RECORD_SUFFIX = ".sha256"
MAX_RECORD_BYTES = 64 << 20
"""Largest ``.sha256`` record read (a 4 GiB file of 256 KiB blocks needs about 1.2 MB)."""

_RECORD_MAGIC = "cidserve-blob-sha256 1"
_RANGE = re.compile(r"([0-9]{1,20}) ([0-9a-f]{64})")

Ranges = list[tuple[int, bytes]]
"""A record's ranges: the length of each range of the file and its SHA-256, in order."""


def record_path(path: Path) -> Path:
    """Where the record of the blob at ``path`` lives."""
    return path.with_name(path.name + RECORD_SUFFIX)


class PendingBlob:
    """A blob being written: a temporary file in the cache directory plus a running SHA-256.

    Write verified bytes with :meth:`write`, or with :meth:`write_digested` when their SHA-256
    is already known (a raw leaf's CID carries it: the bytes are then hashed once, when they
    are checked against the CID), or as parts followed by :meth:`add_range` (the caller hashes
    them on the way: ``registry.dag_leaves.LeafVerifier``); ``flush`` and ``fileno`` serve
    readers of what was already written. Then :meth:`install` or :meth:`abort`. The record
    kept beside the blob lists the SHA-256 of each range of the file as it was written.
    ``on_close`` is called once, when the blob is installed or dropped (the cache releases the
    disk space it reserved for it).
    """

    def __init__(self, directory: Path, on_close: Callable[[], None] | None = None) -> None:
        self._directory = directory
        self._on_close = on_close
        self._tmp = AtomicFile(directory, TMP_PREFIX, TMP_SUFFIX)
        self.path = self._tmp.path
        self.file: BinaryIO = self._tmp.file
        self.size = 0
        self._ranges: Ranges = []
        self._open: Any = None  # a running hashlib.sha256 over the current unhashed range
        self._open_len = 0
        self._pending = 0  # bytes written by write_part not yet recorded by add_range

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes whose SHA-256 is not known yet (hashed here)."""
        if self._open is None:
            self._open = hashlib.sha256()
            self._open_len = 0
        self._open.update(data)
        self._open_len += len(data)
        n = self.file.write(data)
        self.size += len(data)
        return n

    def write_digested(self, data: bytes | bytearray | memoryview, sha256: bytes) -> None:
        """Append bytes whose SHA-256 the caller has checked already."""
        self._close_range()
        self._ranges.append((len(data), sha256))
        self.file.write(data)
        self.size += len(data)

    def write_part(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes that later :meth:`add_range` calls account for (the caller hashes
        them)."""
        self._close_range()
        self.file.write(data)
        self.size += len(data)
        self._pending += len(data)

    def add_range(self, length: int, sha256: bytes) -> None:
        """Record the SHA-256 of the next ``length`` bytes written with :meth:`write_part` and
        not recorded yet."""
        if length > self._pending:
            raise ValueError(f"add_range({length}) with {self._pending} bytes of parts")
        self._ranges.append((length, sha256))
        self._pending -= length

    def rewind(self, size: int) -> None:
        """Drop what was written with :meth:`write_part` after ``size`` bytes (not recorded)."""
        if size != self.size - self._pending:
            raise ValueError("rewind() only drops parts not recorded yet")
        self.file.seek(size)
        self.file.truncate()
        self.size = size
        self._pending = 0

    def _close_range(self) -> None:
        if self._open is not None:
            if self._open_len:
                self._ranges.append((self._open_len, self._open.digest()))
            self._open = None

    def record(self) -> str:
        """The text of the ``.sha256`` record: a header, then ``<length> <sha256>`` per range."""
        if self._pending:
            raise ValueError(f"{self._pending} bytes were written without a digest")
        self._close_range()
        lines = [f"{_RECORD_MAGIC} {self.size} {len(self._ranges)}"]
        lines.extend(f"{n} {digest.hex()}" for n, digest in self._ranges)
        return "\n".join(lines) + "\n"

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def install(self, path: Path) -> None:
        """Rename the complete blob to ``path`` (creating its directory), its record first;
        on failure drop it and raise."""
        try:
            path.parent.mkdir(exist_ok=True)
            with AtomicFile(self._directory, TMP_PREFIX, TMP_SUFFIX, mode=None) as rec:
                rec.file.write(self.record().encode("ascii"))
                rec.commit(record_path(path))
            self._tmp.commit(path)
        except BaseException:
            self.abort()
            raise
        self._closed()

    def abort(self) -> None:
        """Drop the partial blob."""
        try:
            self._tmp.abort()
        finally:
            self._closed()

    def _closed(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


def read_record(path: Path, size: int) -> Ranges | None:
    """The ranges of the record of the blob at ``path``, or ``None`` when it is missing or does
    not describe a file of ``size`` bytes."""
    try:
        with open(record_path(path), "rb") as rec:
            raw = rec.read(MAX_RECORD_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_RECORD_BYTES:
        return None
    lines = raw.decode("ascii", "replace").split("\n")
    head = lines[0].rsplit(" ", 2)
    if len(head) != 3 or head[0] != _RECORD_MAGIC or head[1] != str(size):
        return None
    count = int(head[2]) if head[2].isdigit() else -1
    if count < 0 or len(lines) != count + 2 or lines[-1] != "":
        return None
    ranges: Ranges = []
    total = 0
    for line in lines[1:-1]:
        m = _RANGE.fullmatch(line)
        if m is None:
            return None
        n = int(m.group(1))
        ranges.append((n, bytes.fromhex(m.group(2))))
        total += n
    return ranges if total == size else None


def file_matches(f: BinaryIO, ranges: Ranges) -> bool:
    """Whether the file, read from its start, hashes range by range to ``ranges``."""
    f.seek(0)
    for length, digest in ranges:
        got, n = sha256_read(f, length)
        if n != length or got != digest:
            return False
    return not f.read(1)


def bytes_match(data: bytes, ranges: Ranges) -> bool:
    """Whether ``data`` hashes range by range to ``ranges``."""
    pos = 0
    with memoryview(data) as view:
        for length, digest in ranges:
            if hashlib.sha256(view[pos : pos + length]).digest() != digest:
                return False
            pos += length
    return pos == len(data)
