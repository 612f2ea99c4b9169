"""An on-disk cache of verified blobs, addressed by CID and bounded in bytes (LRU).

The IPFS store writes every file it has verified against its CID here, so that a model evicted
from memory, or a service restarted, does not download it again. Layout::

    <root>/<last two characters of the CID>/<CIDv1 base32>          the file's bytes
    <root>/<last two characters of the CID>/<CIDv1 base32>.sha256   its record (see below)
    <root>/.incoming-*.tmp                                           writes in progress

A blob is written to a temporary file while it is verified, then renamed into place, its
record of the SHA-256 of each range of the file just before it (``registry.blob_record``): a
blob is complete or absent. A read checks the blob against its record; a blob that fails, or
lacks its record, is deleted and reported as a miss, so the caller fetches and verifies it
again. The check is remembered per file identity (size, mtime, inode), so an unchanged file is
hashed once per process. Nothing is fsynced: an entry torn by a power cut fails its check on
the next read and is fetched again, so durability would cost time (tens of milliseconds per
model) and buy nothing. The record guards against damage (a disk, a partial copy, a stray
edit), not against someone who can write the directory: they could rewrite the record too, as
they could the code.

Size bound: the total of the blobs, plus the space reserved for the files being downloaded
(each reserves the size its caller allows, at :meth:`BlobCache.begin`), is kept under
``max_bytes`` by deleting the least recently used blobs before a download starts and after each
write; a download that would take the bound past what downloads already under way hold is
refused (``ContentUnavailable``, retry later). Blobs used in the last ``protect_s`` seconds are
kept even over the bound (a path just handed to ONNX Runtime must survive until it is read); a
blob larger than the whole bound is still written (and is the first to go). Recency is kept in
memory and in each blob's mtime (touched at most once a minute), so the order survives a
restart. Several
processes may share the directory; each enforces the bound on the blobs it knows of.

All methods block (file I/O and hashing): call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.blob_record import (
    TMP_PREFIX,
    PendingBlob,
    bytes_match,
    file_matches,
    read_record,
    record_path,
)
from registry.store import ContentTooLarge, ContentUnavailable

log = logging.getLogger("cidserve.blob_cache")

TOUCH_INTERVAL_S = 60.0
"""A blob's mtime (its recency on disk) is refreshed at most this often."""

STALE_TMP_S = 3600.0
"""Temporary files older than this are left over from a crashed writer and are deleted."""

_NAME = re.compile(r"b[a-z2-7]{20,200}")

_Identity = tuple[int, int, int]  # (size, mtime_ns, inode)


def _identity(st: os.stat_result) -> _Identity:
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass(slots=True)
class _Entry:
    size: int
    used_at: float  # wall clock of the last use
    touched_at: float  # wall clock of the last mtime refresh


class BlobCache:
    """The cache; see the module docstring. ``canonical`` arguments are CIDv1 base32 strings."""

    def __init__(self, root: Path, max_bytes: int, *, protect_s: float = 60.0) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.protect_s = protect_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] | None = None  # loaded on first use
        self._total = 0
        self._reserved = 0  # bytes set aside for pending blobs (downloads in progress)
        self._verified: dict[str, _Identity] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.corrupt_dropped = 0

    # -- layout --------------------------------------------------------------------------------

    def path_for(self, canonical: str) -> Path:
        if not _NAME.fullmatch(canonical):
            raise ValueError(f"not a canonical CID: {canonical!r}")
        return self.root / canonical[-2:] / canonical

    def _load(self) -> OrderedDict[str, _Entry]:
        """Scan the directory once (under the lock): index the blobs by recency (mtime)."""
        if self._entries is not None:
            return self._entries
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        now = time.time()
        with os.scandir(self.root) as top:
            for sub in top:
                if sub.name.startswith(TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        if now - sub.stat().st_mtime > STALE_TMP_S:
                            os.unlink(sub.path)
                    continue
                if not sub.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(sub.path) as files:
                    for f in files:
                        if not _NAME.fullmatch(f.name) or not f.is_file(follow_symlinks=False):
                            continue
                        st = f.stat()
                        found.append((st.st_mtime, f.name, st.st_size))
        found.sort()
        entries: OrderedDict[str, _Entry] = OrderedDict()
        for mtime, name, size in found:
            entries[name] = _Entry(size, mtime, mtime)
            self._total += size
        self._entries = entries
        return entries

    # -- reads ---------------------------------------------------------------------------------

    def contains(self, canonical: str) -> bool:
        """Whether a blob for ``canonical`` is present (not verified)."""
        with self._lock:
            self._load()
        return self.path_for(canonical).is_file()

    def _open_bounded(
        self, canonical: str, path: Path, max_size: int
    ) -> tuple[BinaryIO, _Identity] | None:
        """The blob opened for reading with its identity, ``None`` when it is absent.

        Raises ``ContentTooLarge`` (closing the file) when it is larger than ``max_size``.
        """
        with self._lock:
            self._load()
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            self._forget(canonical, count_miss=True)
            return None
        identity = _identity(os.fstat(f.fileno()))
        if identity[0] > max_size:
            f.close()
            raise ContentTooLarge(
                f"content {canonical} is {identity[0]} bytes, more than the {max_size} allowed",
                cid=canonical,
            )
        return f, identity

    def lookup(self, canonical: str, max_size: int) -> Path | None:
        """The path of the verified blob, or ``None`` on a miss (a corrupt blob is a miss).

        Raises ``ContentTooLarge`` when the blob is larger than ``max_size``.
        """
        path = self.path_for(canonical)
        opened = self._open_bounded(canonical, path, max_size)
        if opened is None:
            return None
        f, identity = opened
        with f:
            with self._lock:
                known = self._verified.get(canonical) == identity
            if not known:
                ranges = read_record(path, identity[0])
                if ranges is None or not file_matches(f, ranges):
                    self._drop(canonical, path, identity)
                    return None
        self._used(canonical, path, identity)
        return path

    def read_bytes(self, canonical: str, max_size: int) -> bytes | None:
        """The verified bytes of the blob (the bytes returned are the ones checked), or ``None``."""
        path = self.path_for(canonical)
        opened = self._open_bounded(canonical, path, max_size)
        if opened is None:
            return None
        f, identity = opened
        with f:
            data = f.read(max_size + 1)
        ranges = read_record(path, len(data))
        if len(data) != identity[0] or ranges is None or not bytes_match(data, ranges):
            self._drop(canonical, path, identity)
            return None
        self._used(canonical, path, identity)
        return data

    def _used(self, canonical: str, path: Path, identity: _Identity) -> None:
        """Record a hit: recency in memory, and on disk at most once a minute."""
        now = time.time()
        with self._lock:
            entries = self._load()
            entry = entries.get(canonical)
            if entry is None:
                entry = entries[canonical] = _Entry(identity[0], now, 0.0)
                self._total += identity[0]
            entries.move_to_end(canonical)
            entry.used_at = now
            touch = now - entry.touched_at > TOUCH_INTERVAL_S
            if touch:
                entry.touched_at = now
            self.hits += 1
        if touch:
            with contextlib.suppress(OSError):
                os.utime(path)
                identity = _identity(os.stat(path))
        with self._lock:
            self._verified[canonical] = identity

    def _forget(self, canonical: str, *, count_miss: bool = False) -> None:
        with self._lock:
            entries = self._load()
            entry = entries.pop(canonical, None)
            if entry is not None:
                self._total -= entry.size
            self._verified.pop(canonical, None)
            if count_miss:
                self.misses += 1

    def _drop(self, canonical: str, path: Path, identity: _Identity) -> None:
        """Delete a blob that failed its check (unless it was replaced meanwhile)."""
        log.warning(
            "blob cache: %s failed its check and was deleted; it will be fetched again", canonical
        )
        with contextlib.suppress(OSError):
            if _identity(os.stat(path)) == identity:
                path.unlink()
                record_path(path).unlink(missing_ok=True)
        self._forget(canonical, count_miss=True)
        with self._lock:
            self.corrupt_dropped += 1

    # -- writes --------------------------------------------------------------------------------

    def begin(self, reserve: int = 0) -> PendingBlob:
        """A new pending blob in the cache directory (same file system: the rename is atomic).

        ``reserve`` bytes (the most the download may write) count against the bound until the
        blob is installed or dropped; least recently used blobs are deleted to make room.
        Raises ``ContentUnavailable`` when downloads under way already hold so much of the
        bound that this one does not fit (one download alone is always admitted).
        """
        with self._lock:
            self._load()
            if self._reserved and self._reserved + reserve > self.max_bytes:
                raise ContentUnavailable(
                    f"downloads in progress hold {self._reserved} bytes of the blob cache's "
                    f"{self.max_bytes}-byte bound (CIDSERVE_BLOB_CACHE_MAX_BYTES); this one may "
                    f"need {reserve}",
                    retry_after_s=5,
                )
            self._reserved += reserve
            victims = self._pick_victims(keep=None, now=time.time())
        for name in victims:
            self._delete(name)
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._reserved -= reserve

        try:
            return PendingBlob(self.root, on_close=release)
        except BaseException:
            release()
            raise

    def commit(self, canonical: str, pending: PendingBlob) -> Path:
        """Install a completely written and verified blob under ``canonical``; evict to fit."""
        path = self.path_for(canonical)
        pending.install(path)
        identity = _identity(os.stat(path))
        now = time.time()
        with self._lock:
            entries = self._load()
            old = entries.pop(canonical, None)
            if old is not None:
                self._total -= old.size
            entries[canonical] = _Entry(identity[0], now, now)
            self._total += identity[0]
            self._verified[canonical] = identity
            victims = self._pick_victims(keep=canonical, now=now)
        for name in victims:
            self._delete(name)
        return path

    def _pick_victims(self, *, keep: str | None, now: float) -> list[str]:
        """Least recently used blobs to delete to get under the bound, counting the space
        reserved for downloads in progress (called under the lock)."""
        assert self._entries is not None
        victims: list[str] = []
        excess = self._total + self._reserved - self.max_bytes
        if excess <= 0:
            return victims
        for name, entry in list(self._entries.items()):
            if excess <= 0:
                break
            if name == keep or now - entry.used_at < self.protect_s:
                continue
            del self._entries[name]
            self._verified.pop(name, None)
            self._total -= entry.size
            excess -= entry.size
            victims.append(name)
            self.evictions += 1
        if excess > 0:
            log.info(
                "blob cache is %d bytes over its %d-byte bound: the rest is in use",
                excess,
                self.max_bytes,
            )
        return victims

    def _delete(self, canonical: str) -> None:
        path = self.path_for(canonical)
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            record_path(path).unlink()

    # -- reporting -----------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        with self._lock:
            entries = self._load()
            return {
                "dir": str(self.root),
                "blobs": len(entries),
                "bytes": self._total,
                "reserved_bytes": self._reserved,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "corrupt_dropped": self.corrupt_dropped,
            }

    def usable(self) -> bool:
        """Whether the cache directory exists and is writable."""
        with self._lock:
            self._load()
        return self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)
