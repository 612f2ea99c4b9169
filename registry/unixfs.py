"""CIDs of files exactly as ``ipfs add --cid-version=1`` computes them.

The defaults that flag implies in Kubo (and in js ``ipfs-unixfs-importer``):

* fixed-size chunks of 262144 bytes, each stored as a ``raw`` block (raw leaves);
* a balanced DAG: leaves are grouped 174 to a dag-pb node holding a UnixFS ``File`` message
  (filesize and the size of each child), those nodes again 174 to a node, up to one root;
* sha2-256 everywhere, CIDv1 printed in base32: ``bafy...`` for a dag-pb root, and ``bafk...``
  when the whole file fits in one chunk (including the empty file), which is then its own root.

``UnixFSBuilder`` computes this incrementally with bounded memory (one pending chunk plus at
most 174 links per tree level), and can hand every block it produces to a callback.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from multiformats import CID, multicodec, multihash, varint

from registry.dagpb import PBLink, PBNode, encode_node
from registry.unixfs_data import UnixFSData, UnixFSType, encode_unixfs

CHUNK_SIZE = 262_144
"""Kubo's default fixed chunk size (``size-262144``)."""

MAX_LINKS = 174
"""Kubo's default maximum number of links per node of the balanced layout."""

READ_SIZE = 4 * CHUNK_SIZE
"""How much ``cid_of_file`` reads at a time."""

MAX_CID_STRING = 256
"""Longest CID string ``canonical_cid`` will try to parse."""

BlockCallback = Callable[[str, bytes], None]
"""Receives ``(cid, block)`` for every block a builder produces, leaves first, root last."""

_SHA2_256 = multihash.get("sha2-256")
_DIGEST_SIZE = hashlib.sha256().digest_size


def _cid_prefix(codec_name: str) -> bytes:
    """The binary CIDv1 bytes that precede a sha2-256 digest for blocks of ``codec_name``."""
    codec = multicodec.get(codec_name)
    return b"".join(varint.encode(n) for n in (1, codec.code, _SHA2_256.code, _DIGEST_SIZE))


RAW_PREFIX = _cid_prefix("raw")
DAG_PB_PREFIX = _cid_prefix("dag-pb")

# (binary CID, Tsize: cumulative size of the block and everything below it, file bytes below it)
_Link = tuple[bytes, int, int]


def cid_to_str(cid: bytes) -> str:
    """Render a binary CIDv1 as its base32 multibase string (``b`` + lowercase, unpadded).

    Equivalent to ``str(multiformats.CID.decode(cid).set(base="base32"))``, without the
    per-call cost of building a CID object for every block of a large file.
    """
    return "b" + base64.b32encode(cid).decode("ascii").rstrip("=").lower()


def canonical_cid(value: str) -> str:
    """Parse a CID string in any multibase and return it as CIDv1 base32.

    A CIDv0 (``Qm...``) names a dag-pb block by its sha2-256 digest and becomes the CIDv1
    ``bafy...`` of the same block. Raises ``ValueError`` naming ``value`` when it is not a CID.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_CID_STRING:
        raise ValueError(f"not a CID: {value!r}")
    try:
        cid = CID.decode(value)
        if cid.version == 0:
            cid = cid.set(version=1)
        return str(cid.set(base="base32"))
    except Exception as exc:
        raise ValueError(f"not a CID: {value!r} ({exc})") from None


class UnixFSBuilder:
    """Incremental ``ipfs add --cid-version=1`` CID computation.

    Feed bytes with ``update`` in pieces of any size, then call ``finish`` for the root CID.
    ``on_block`` (optional) receives each block with its CID as it is produced, so that a
    caller can store or compare the whole DAG. ``chunk_size`` and ``max_links`` exist to mirror
    other importer settings (and to build deep trees cheaply in tests).
    """

    __slots__ = (
        "_chunk_size",
        "_leaves",
        "_levels",
        "_max_links",
        "_on_block",
        "_pending",
        "_root",
        "_size",
    )

    def __init__(
        self,
        on_block: BlockCallback | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
        max_links: int = MAX_LINKS,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if max_links < 2:
            raise ValueError(f"max_links must be at least 2, got {max_links}")
        self._on_block = on_block
        self._chunk_size = chunk_size
        self._max_links = max_links
        self._pending = bytearray()
        self._levels: list[list[_Link]] = [[]]
        self._leaves = 0
        self._size = 0
        self._root: str | None = None

    @property
    def size(self) -> int:
        """Number of content bytes fed so far."""
        return self._size

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next piece of the content. Keeps no reference to ``data``."""
        if self._root is not None:
            raise RuntimeError("UnixFSBuilder.update() called after finish()")
        with memoryview(data) as raw, raw.cast("B") as view:
            total = len(view)
            if not total:
                return
            self._size += total
            chunk_size = self._chunk_size
            pending = self._pending
            pos = 0
            if pending:
                pos = min(chunk_size - len(pending), total)
                pending += view[:pos]
                if len(pending) == chunk_size:
                    self._add_leaf(pending)
                    pending.clear()
            while total - pos >= chunk_size:
                self._add_leaf(view[pos : pos + chunk_size])
                pos += chunk_size
            if pos < total:
                pending += view[pos:]

    def finish(self) -> str:
        """Flush the last chunk, close every level of the tree and return the root CID."""
        if self._root is not None:
            return self._root
        if self._pending or self._leaves == 0:
            self._add_leaf(self._pending)
            self._pending.clear()
        levels = self._levels
        if self._leaves == 1:
            root = levels[0][0][0]  # a file of one chunk is that raw block
        else:
            level = 0
            while True:
                row = levels[level]
                if level > 0 and level == len(levels) - 1 and len(row) == 1:
                    root = row[0][0]
                    break
                link = self._make_node(row)
                row.clear()
                self._push(level + 1, link)
                level += 1
        self._levels = []
        self._root = cid_to_str(root)
        return self._root

    def _add_leaf(self, chunk: bytes | bytearray | memoryview) -> None:
        cid = RAW_PREFIX + hashlib.sha256(chunk).digest()
        if self._on_block is not None:
            self._on_block(cid_to_str(cid), bytes(chunk))
        self._leaves += 1
        size = len(chunk)
        self._push(0, (cid, size, size))

    def _push(self, level: int, link: _Link) -> None:
        levels = self._levels
        if level == len(levels):
            levels.append([])
        row = levels[level]
        if len(row) == self._max_links:
            parent = self._make_node(row)
            row.clear()
            self._push(level + 1, parent)
        row.append(link)

    def _make_node(self, row: list[_Link]) -> _Link:
        blocksizes = tuple(filesize for _, _, filesize in row)
        filesize = sum(blocksizes)
        data = encode_unixfs(
            UnixFSData(type=UnixFSType.FILE, filesize=filesize, blocksizes=blocksizes)
        )
        links = tuple(PBLink(cid, "", tsize) for cid, tsize, _ in row)
        block = encode_node(PBNode(links=links, data=data))
        cid = DAG_PB_PREFIX + hashlib.sha256(block).digest()
        if self._on_block is not None:
            self._on_block(cid_to_str(cid), block)
        return cid, len(block) + sum(tsize for _, tsize, _ in row), filesize


def cid_of_bytes(data: bytes | bytearray | memoryview) -> str:
    """The ``ipfs add --cid-version=1`` CID of ``data``."""
    builder = UnixFSBuilder()
    builder.update(data)
    return builder.finish()


class Readable(Protocol):
    """A binary file object that can fill a caller's buffer (``open(..., "rb")``)."""

    def readinto(self, buffer: bytearray, /) -> int | None: ...


def cid_of_stream(stream: Readable) -> str:
    """The ``ipfs add --cid-version=1`` CID of everything left in ``stream``, read in pieces."""
    builder = UnixFSBuilder()
    buf = bytearray(READ_SIZE)
    with memoryview(buf) as view:
        while n := stream.readinto(buf):
            builder.update(view[:n])
    return builder.finish()


def cid_of_file(path: Path) -> str:
    """The ``ipfs add --cid-version=1`` CID of the file at ``path``, streamed."""
    with open(path, "rb", buffering=0) as f:
        return cid_of_stream(f)
