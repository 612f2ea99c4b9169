"""Files written whole or not at all, and SHA-256 digests of files.

:class:`AtomicFile` is a temporary file created in the directory of its destination (the same
file system, so the final rename is atomic): write it, then :meth:`AtomicFile.commit` renames it
over the destination, or :meth:`AtomicFile.abort` deletes it (so does leaving its ``with`` block
without a commit, on an error or not). Readers see the old file or the complete new one, never
a partial one. Whoever writes the file (this object's ``file``, or a library given its ``path``
after ``file.close()``), the temporary file is cleaned up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

READ_SIZE = 1 << 20
"""Bytes read at a time while hashing."""


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    with open(path, "rb", buffering=0) as f:
        digest, _ = sha256_read(f)
    return digest.hex()


def sha256_read(f: BinaryIO, length: int | None = None) -> tuple[bytes, int]:
    """The SHA-256 of the next ``length`` bytes of ``f`` (all that is left when ``None``), read in
    1 MiB chunks, and how many bytes that was (fewer than ``length`` when ``f`` ends first)."""
    h = hashlib.sha256()
    buf = bytearray(READ_SIZE if length is None else min(length, READ_SIZE))
    done = 0
    with memoryview(buf) as view:
        while length is None or done < length:
            want = READ_SIZE if length is None else min(length - done, READ_SIZE)
            n = f.readinto(view[:want])
            if not n:
                break
            h.update(view[:n])
            done += n
    return h.digest(), done


def fsync_dir(path: Path) -> None:
    """Persist a directory entry change (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A new temporary file in ``directory``, open as ``file`` (``w+b``) at ``path``, that
    becomes its destination by :meth:`commit` or disappears by :meth:`abort`.

    ``mode``: the file's permission bits (``None`` keeps ``mkstemp``'s 0o600). As a context
    manager it gives itself and, on leaving, aborts unless it was committed.
    """

    def __init__(
        self, directory: Path, prefix: str, suffix: str, *, mode: int | None = 0o644
    ) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
        self.path = Path(name)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            self.file: BinaryIO = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        self.committed = False

    def commit(self, dest: Path, *, fsync: bool = False) -> Path:
        """Flush and close the file (with ``fsync``, persist it first), then rename it to
        ``dest``, replacing what is there; return ``dest``. On failure the temporary file is
        deleted and the error raised. ``dest`` must be on the same file system (its directory
        must exist)."""
        try:
            if not self.file.closed:
                self.file.flush()
                if fsync:
                    os.fsync(self.file.fileno())
            elif fsync:  # written by path: persist what is there now
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.file.close()
            os.replace(self.path, dest)
        except BaseException:
            self.abort()
            raise
        self.committed = True
        return dest

    def abort(self) -> None:
        """Close and delete the temporary file; nothing once committed. Safe to call twice."""
        if self.committed:
            return
        with contextlib.suppress(OSError):
            self.file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()
