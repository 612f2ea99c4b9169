"""Rebuild a UnixFS file from untrusted blocks, checking every block against its CID.

A file added to IPFS is a DAG: ``raw`` leaves (or dag-pb leaves holding UnixFS data) under
dag-pb nodes whose links name their children by CID, up to one root. The CID of the root
therefore commits to every byte of the file, but only if every block on the way down is
checked: :class:`FileAssembler` hashes each block it is given and compares the digest with
the CID it came under (sha2-256; identity CIDs carry their bytes), decodes dag-pb nodes
strictly (``registry.dagpb``), walks the DAG depth first and writes the leaves' bytes, in
order, to a file. It never trusts the source of the blocks: blocks may come in any order
(those that arrive early are buffered, bounded), may repeat or be left out when the DAG
repeats a subtree (a file of zeros), and anything that does not fit — a digest that does not
match, a malformed node, sizes that disagree with the UnixFS metadata, a directory instead of
a file, a DAG deeper or larger than allowed — raises an error naming the block's CID.

For a file of raw leaves under dag-pb nodes (the layout ``ipfs add --cid-version=1`` writes)
there is a cheaper way with the same guarantee: :class:`LeafPlanner` lists the leaves, in file
order, from the (verified) dag-pb nodes alone, and :class:`LeafVerifier` checks the plain file
stream range by range against them; a raw block is exactly its bytes of the file, so each range
is that block, hashed and compared with its CID.

Binary CIDs are parsed with ``multiformats.varint``; the hot path compares the 4-byte prefix of
the common CIDv1 sha2-256 forms and the CIDv0 prefix directly, since building a
``multiformats.CID`` per block costs more than hashing it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from multiformats import CID, multicodec, varint

from registry.dagpb import MAX_BLOCK_SIZE, UnixFSType, decode_node, decode_unixfs
from registry.unixfs import DAG_PB_PREFIX, RAW_PREFIX, cid_to_str

RAW = multicodec.get("raw").code
DAG_PB = multicodec.get("dag-pb").code
SHA2_256 = 0x12
IDENTITY = 0x00

MAX_DEPTH = 64
"""Deepest DAG accepted (a balanced 174-ary tree of 256 KiB leaves reaches 1 PB at depth 6)."""

MAX_IDENTITY_SIZE = 1024
"""Largest inline (identity-hashed) block accepted."""

MAX_BUFFERED_BYTES = 32 * 1024 * 1024
"""Bytes of blocks that arrived before they were needed that the assembler keeps, at most."""

MIN_BYTES_PER_VISIT = 64
"""Walking the DAG may visit at most ``1024 + filesize / MIN_BYTES_PER_VISIT`` blocks: a DAG that
repeats tiny or empty subtrees (a decompression bomb) is refused before it costs real work."""

_V0_PREFIX = b"\x12\x20"
_EMPTY_SHA256 = hashlib.sha256(b"").digest()


class DagError(ValueError):
    """The DAG is malformed or does not match its CIDs. ``cid`` names the offending block."""

    def __init__(self, message: str, cid: str) -> None:
        super().__init__(message)
        self.cid = cid


class BlockMismatch(DagError):
    """A block's bytes do not hash to the CID it was delivered under."""


class DagTooLarge(DagError):
    """The file is larger than the caller allowed."""


class NotAFile(DagError):
    """The CID names something other than a UnixFS file (a directory, a symlink)."""


def cid_str(cid: bytes) -> str:
    """A binary CID as text, as users see it: ``Qm...`` for CIDv0, base32 ``b...`` for CIDv1."""
    if cid[:1] == b"\x01":
        return cid_to_str(cid)
    try:
        return str(CID.decode(cid))
    except Exception:
        return "0x" + cid.hex()


@dataclass(frozen=True, slots=True)
class BlockId:
    """A parsed binary CID: what the block is (codec) and how to check it (hash + digest)."""

    cid: bytes
    codec: int
    hash_code: int
    digest: bytes


def parse_cid(cid: bytes) -> BlockId:
    """Parse a binary CID strictly. Raises :class:`DagError` for malformed or unsupported ones.

    Supported: CIDv0 (dag-pb, sha2-256) and CIDv1 with codec ``raw`` or ``dag-pb`` and a
    sha2-256 (32-byte) or identity multihash.
    """
    prefix = cid[:4]
    if prefix == RAW_PREFIX and len(cid) == 36:
        return BlockId(cid, RAW, SHA2_256, cid[4:])
    if prefix == DAG_PB_PREFIX and len(cid) == 36:
        return BlockId(cid, DAG_PB, SHA2_256, cid[4:])
    if cid[:2] == _V0_PREFIX and len(cid) == 34:
        return BlockId(cid, DAG_PB, SHA2_256, cid[2:])
    name = "0x" + cid[:48].hex()
    try:
        version, _, rest = varint.decode_raw(cid)
        codec, _, rest = varint.decode_raw(rest)
        hash_code, _, rest = varint.decode_raw(rest)
        size, _, rest = varint.decode_raw(rest)
    except ValueError as exc:
        raise DagError(f"malformed CID {name}: {exc}", name) from None
    digest = bytes(rest)
    if version != 1 or len(digest) != size:
        raise DagError(f"malformed CID {name}", name)
    if codec not in (RAW, DAG_PB):
        raise DagError(f"CID {cid_str(cid)} has codec 0x{codec:x}; only raw and dag-pb", name)
    if hash_code == SHA2_256 and size == 32:
        return BlockId(cid, codec, hash_code, digest)
    if hash_code == IDENTITY and size <= MAX_IDENTITY_SIZE:
        return BlockId(cid, codec, hash_code, digest)
    raise DagError(
        f"CID {cid_str(cid)} uses multihash 0x{hash_code:x} ({size} bytes); only sha2-256 "
        "and identity can be verified",
        cid_str(cid),
    )


def verify_block(block_id: BlockId, data: bytes | bytearray | memoryview) -> None:
    """Raise :class:`BlockMismatch` unless ``data`` is the block ``block_id`` names."""
    if block_id.hash_code == IDENTITY:
        ok = bytes(data) == block_id.digest
        actual = "other bytes than the CID carries"
    else:
        got = hashlib.sha256(data).digest()
        ok = got == block_id.digest
        actual = "sha2-256 " + got.hex()
    if not ok:
        name = cid_str(block_id.cid)
        raise BlockMismatch(
            f"block {name} does not match its CID: its bytes hash to {actual}", name
        )


Children = tuple[tuple[bytes, int], ...]
"""A file node's children: binary CID and the number of file bytes below it, in order."""


def decode_file_node(cid: bytes, data: bytes) -> tuple[bytes, Children, int]:
    """Inline data, sized children and file size of a (verified) dag-pb UnixFS file node.

    Strict: the dag-pb and UnixFS codecs' checks, a ``File`` (or ``Raw``) type, as many
    ``blocksizes`` as links, and a ``filesize`` equal to what the node holds.
    """
    name = cid_str(cid)
    try:
        pb = decode_node(data)
        if pb.data is None:
            raise ValueError("the node has no UnixFS data")
        fs = decode_unixfs(pb.data)
    except ValueError as exc:
        raise DagError(f"block {name} is not a valid UnixFS dag-pb node: {exc}", name) from None
    if fs.type not in (UnixFSType.FILE, UnixFSType.RAW):
        raise NotAFile(f"{name} is a UnixFS {fs.type.name.lower()}, not a file", name)
    if len(fs.blocksizes) != len(pb.links):
        raise DagError(
            f"block {name} has {len(pb.links)} links but {len(fs.blocksizes)} blocksizes", name
        )
    inline = fs.data or b""
    filesize = len(inline) + sum(fs.blocksizes)
    if fs.filesize is not None and fs.filesize != filesize:
        raise DagError(f"block {name} says filesize {fs.filesize} but holds {filesize} bytes", name)
    children = tuple((link.hash, size) for link, size in zip(pb.links, fs.blocksizes, strict=True))
    return inline, children, filesize


# A pending visit: the child's binary CID, the number of file bytes its parent says it holds
# (None for the root), the depth it is at, and its parent's binary CID (None for the root).
_Visit = tuple[bytes, int | None, int, bytes | None]


@dataclass(frozen=True, slots=True)
class _Node:
    """What the walk keeps of a dag-pb file node with children, to replay it if it repeats:
    where its inline data went in the output, its sized children and its file size."""

    inline_at: int
    inline_len: int
    children: Children
    filesize: int


class FileAssembler:
    """Writes the file below ``root`` to ``out`` from verified blocks (see the module docstring).

    Call :meth:`add_block` with every ``(cid, bytes)`` received, in any order; :attr:`done`
    turns true once the last byte is written. :meth:`missing` names the next block still
    needed. Not thread-safe: use it from one thread at a time.
    """

    def __init__(
        self,
        root: bytes,
        out: BinaryIO,
        max_size: int,
        *,
        max_buffered: int = MAX_BUFFERED_BYTES,
    ) -> None:
        self.root = parse_cid(root)
        self.root_name = cid_str(root)
        self._out = out
        self._fd = out.fileno()
        # A sink that records the SHA-256 of what it is given (the blob cache) is handed the
        # digests the walk has already checked, so the bytes are hashed once.
        self._write_digested = getattr(out, "write_digested", None)
        self.max_size = max_size
        self._max_buffered = max_buffered
        self._stack: list[_Visit] = [(root, None, 0, None)]
        self._buffer: dict[bytes, bytes] = {}
        self._buffered = 0
        # cid -> (offset, length, SHA-256 of the bytes if known) of what it wrote to ``out``
        self._leaves: dict[bytes, tuple[int, int, bytes | None]] = {}
        self._nodes: dict[bytes, _Node] = {}
        self._done_cids: set[bytes] = set()
        self._visits = 0
        self._visit_limit = 1024 + max_size // MIN_BYTES_PER_VISIT
        self.size = 0
        self.expected_size: int | None = None
        self.blocks_verified = 0
        if self.root.hash_code == IDENTITY:
            self._drain()  # the root carries itself

    @property
    def done(self) -> bool:
        return not self._stack

    def missing(self) -> str | None:
        """The CID of the next block the walk needs, or ``None`` when it is complete."""
        return cid_str(self._stack[-1][0]) if self._stack else None

    def next_needed(self) -> bytes | None:
        """The binary CID of the next block the walk needs, or ``None`` when it is complete."""
        return self._stack[-1][0] if self._stack else None

    def resume_point(self) -> bytes | None:
        """The block whose subtree holds the next needed block and its remaining siblings
        (its parent; the root at the start), to ask a source for again after a stream broke."""
        if not self._stack:
            return None
        cid, _, _, parent = self._stack[-1]
        return parent or cid

    def add_block(self, cid: bytes, data: bytes) -> None:
        """Verify one block and write whatever it lets the walk complete."""
        if self.done:
            return
        if cid in self._done_cids or cid in self._buffer:
            return  # a repeat of a block already used or held
        block_id = parse_cid(cid)
        if len(data) > MAX_BLOCK_SIZE:
            name = cid_str(cid)
            raise DagError(
                f"block {name} is {len(data)} bytes; the bound is {MAX_BLOCK_SIZE}", name
            )
        verify_block(block_id, data)
        self.blocks_verified += 1
        self._buffer[cid] = data
        self._buffered += len(data)
        self._drain()
        if self._buffered > self._max_buffered:
            raise DagError(
                f"the blocks of {self.root_name} arrive out of order: more than "
                f"{self._max_buffered} bytes came before they were needed (next needed: "
                f"{self.missing()})",
                self.root_name,
            )

    # -- the walk -------------------------------------------------------------------------------

    def _drain(self) -> None:
        stack = self._stack
        while stack:
            cid, expected, depth, _ = stack[-1]
            self._visits += 1
            if self._visits > self._visit_limit:
                raise DagError(
                    f"the DAG of {self.root_name} links more blocks than a file of its size "
                    "can need",
                    self.root_name,
                )
            leaf = self._leaves.get(cid)
            if leaf is not None:
                stack.pop()
                self._check_size(cid, expected, leaf[1])
                self._copy(*leaf)
                continue
            node = self._nodes.get(cid)
            if node is not None:
                stack.pop()
                self._check_size(cid, expected, node.filesize)
                if node.inline_len:
                    self._copy(node.inline_at, node.inline_len, None)
                self._push_children(cid, node.children, depth)
                continue
            data = self._buffer.pop(cid, None)
            if data is None:
                block_id = parse_cid(cid)
                if block_id.hash_code != IDENTITY:
                    self._visits -= 1
                    return  # wait for it
                data = block_id.digest
            else:
                self._buffered -= len(data)
            stack.pop()
            self._done_cids.add(cid)
            offset = self.size
            if cid[:4] == RAW_PREFIX or parse_cid(cid).codec == RAW:
                self._check_size(cid, expected, len(data))
                # A raw sha2-256 leaf's digest is the SHA-256 of these file bytes.
                digest = cid[4:] if cid[:4] == RAW_PREFIX else None
                self._write(data, digest)
                self._leaves[cid] = (offset, len(data), digest)
                continue
            inline, children, filesize = decode_file_node(cid, data)
            del data
            self._check_size(cid, expected, filesize)
            if expected is None:  # the root: now the walk's size is known
                self.expected_size = filesize
                self._visit_limit = 1024 + filesize // MIN_BYTES_PER_VISIT
            self._write(inline)
            if not children:  # a dag-pb leaf: replay it like a raw one
                self._leaves[cid] = (offset, len(inline), None)
                continue
            self._nodes[cid] = _Node(offset, len(inline), children, filesize)
            self._push_children(cid, children, depth)

    def _push_children(self, cid: bytes, children: Children, depth: int) -> None:
        if depth + 1 > MAX_DEPTH:
            name = cid_str(cid)
            raise DagError(f"the DAG below {name} is deeper than {MAX_DEPTH}", name)
        self._stack.extend((child, size, depth + 1, cid) for child, size in reversed(children))

    def _check_size(self, cid: bytes, expected: int | None, actual: int) -> None:
        if expected is None:
            if actual > self.max_size:
                raise DagTooLarge(
                    f"content {self.root_name} is {actual} bytes, more than the "
                    f"{self.max_size} allowed",
                    self.root_name,
                )
            return
        if expected != actual:
            name = cid_str(cid)
            raise DagError(
                f"block {name} holds {actual} bytes of the file; its parent says {expected}", name
            )

    def _write(self, data: bytes, digest: bytes | None = None) -> None:
        """Append file bytes; ``digest`` is their SHA-256 when the walk already knows it."""
        if not data:
            return
        if self.size + len(data) > self.max_size:
            raise DagTooLarge(
                f"content {self.root_name} is more than the {self.max_size} bytes allowed",
                self.root_name,
            )
        if digest is not None and self._write_digested is not None:
            self._write_digested(data, digest)
        else:
            self._out.write(data)
        self.size += len(data)

    def _copy(self, offset: int, length: int, digest: bytes | None) -> None:
        """Append the ``length`` bytes already written at ``offset`` (a repeated block: at
        most one block, so it is read back whole)."""
        self._out.flush()
        parts: list[bytes] = []
        done = 0
        while done < length:
            piece = os.pread(self._fd, length - done, offset + done)
            if not piece:
                raise OSError(f"short read copying a repeated block at offset {offset}")
            parts.append(piece)
            done += len(piece)
        self._write(b"".join(parts), digest)

    def result(self) -> int:
        """Check that the walk is complete and return the file size."""
        if self._stack:
            raise DagError(
                f"the DAG of {self.root_name} is incomplete: block {self.missing()} is missing",
                self.missing() or self.root_name,
            )
        if self.expected_size is not None and self.size != self.expected_size:
            raise DagError(
                f"{self.root_name} reassembled to {self.size} bytes; its root says "
                f"{self.expected_size}",
                self.root_name,
            )
        return self.size


# -- raw leaves checked against a plain file stream ------------------------------------------


class NotPlannable(Exception):
    """The file is not all raw sha2-256 leaves under dag-pb nodes without inline data: its
    bytes cannot be checked leaf by leaf from the file alone (walk its blocks instead)."""


class LeafPlanner:
    """The raw leaves of a UnixFS file, in file order, from its dag-pb nodes alone.

    A raw leaf *is* its bytes of the file, so once the (verified) dag-pb nodes name every leaf
    and its size, the file itself (``cat``) can be checked range by range, each range against
    its leaf's CID (:class:`LeafVerifier`): every block is still hashed and compared with its
    CID, and the node sends the leaves without the CAR framing. Feed the nodes
    :meth:`wanted` names with :meth:`add_node` (verified here, as :class:`FileAssembler` does,
    with the same bounds), then call :meth:`leaves`. Raises :class:`NotPlannable` for layouts
    that need the block walk (dag-pb leaves, inline data, identity CIDs).
    """

    def __init__(self, root: bytes, max_size: int) -> None:
        self.root = root
        self.root_name = cid_str(root)
        self.max_size = max_size
        self._nodes: dict[bytes, tuple[Children, int]] = {}
        self._wanted: dict[bytes, int | None] = {root: None}  # node -> bytes below it
        self._node_limit = 1024 + max_size // MIN_BYTES_PER_VISIT

    def wanted(self) -> list[bytes]:
        """The dag-pb nodes still needed (binary CIDs), in the order they were found."""
        return list(self._wanted)

    def surely_inner(self, cid: bytes) -> bool:
        """Whether a wanted node holds more file bytes than one block can: it has children
        (a node that may be a leaf is worth fetching alone first: a dag-pb leaf ends the plan)."""
        size = self._wanted.get(cid)
        return size is not None and size > MAX_BLOCK_SIZE

    def add_node(self, cid: bytes, data: bytes) -> None:
        if cid not in self._wanted:
            return
        block_id = parse_cid(cid)
        if block_id.codec != DAG_PB or block_id.hash_code != SHA2_256:
            raise NotPlannable(cid_str(cid))
        if len(data) > MAX_BLOCK_SIZE:
            name = cid_str(cid)
            raise DagError(
                f"block {name} is {len(data)} bytes; the bound is {MAX_BLOCK_SIZE}", name
            )
        verify_block(block_id, data)
        inline, children, filesize = decode_file_node(cid, data)
        if cid == self.root:
            if filesize > self.max_size:
                raise DagTooLarge(
                    f"content {self.root_name} is {filesize} bytes, more than the "
                    f"{self.max_size} allowed",
                    self.root_name,
                )
            self._node_limit = 1024 + filesize // MIN_BYTES_PER_VISIT
        if inline or not children:
            raise NotPlannable(cid_str(cid))
        del self._wanted[cid]
        self._nodes[cid] = (children, filesize)
        if len(self._nodes) > self._node_limit:
            raise DagError(
                f"the DAG of {self.root_name} has more nodes than a file of its size can need",
                self.root_name,
            )
        for child, size in children:
            if child[:4] == RAW_PREFIX and len(child) == 36:
                if size > MAX_BLOCK_SIZE:
                    name = cid_str(child)
                    raise DagError(
                        f"block {name} would be {size} bytes; the bound is {MAX_BLOCK_SIZE}", name
                    )
                continue
            child_id = parse_cid(child)
            if child_id.codec != DAG_PB or child_id.hash_code != SHA2_256:
                raise NotPlannable(cid_str(child))
            if child not in self._nodes:
                self._wanted[child] = size

    def leaves(self) -> list[tuple[bytes, int]]:
        """Every raw leaf (binary CID, size) in file order; checks the sizes along the way."""
        if self._wanted:
            raise DagError(
                f"the DAG of {self.root_name} is incomplete: block "
                f"{cid_str(next(iter(self._wanted)))} is missing",
                cid_str(next(iter(self._wanted))),
            )
        out: list[tuple[bytes, int]] = []
        limit = self._node_limit
        stack: list[tuple[bytes, int | None, int]] = [(self.root, None, 0)]
        visits = 0
        while stack:
            cid, expected, depth = stack.pop()
            visits += 1
            if visits > limit:
                raise DagError(
                    f"the DAG of {self.root_name} links more blocks than a file of its size "
                    "can need",
                    self.root_name,
                )
            if cid[:4] == RAW_PREFIX:
                assert expected is not None
                out.append((cid, expected))
                continue
            children, filesize = self._nodes[cid]
            if expected is not None and expected != filesize:
                name = cid_str(cid)
                raise DagError(
                    f"block {name} holds {filesize} bytes of the file; its parent says {expected}",
                    name,
                )
            if depth + 1 > MAX_DEPTH:
                name = cid_str(cid)
                raise DagError(f"the DAG below {name} is deeper than {MAX_DEPTH}", name)
            stack.extend((child, size, depth + 1) for child, size in reversed(children))
        return out


class LeafSink(Protocol):
    """Where :class:`LeafVerifier` writes: bytes whose digest comes after them.

    ``write_part`` appends bytes of the leaf being checked, ``add_range`` accounts for the
    leaf once it matched its CID, ``rewind`` drops everything after a file offset (an
    incomplete leaf). ``registry.blob_cache.PendingBlob`` is one; :class:`FileSink` adapts a
    plain file.
    """

    def write_part(self, data: bytes | memoryview) -> None: ...

    def add_range(self, length: int, sha256: bytes) -> None: ...

    def rewind(self, size: int) -> None: ...


class FileSink:
    """:class:`LeafSink` over a plain binary file (digests are not kept)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def write_part(self, data: bytes | memoryview) -> None:
        self.f.write(data)

    def add_range(self, length: int, sha256: bytes) -> None:
        pass

    def rewind(self, size: int) -> None:
        self.f.seek(size)
        self.f.truncate()


class LeafVerifier:
    """Checks a file stream range by range against the raw leaves that make it up.

    ``feed`` takes the bytes in batches of pieces of any size, writes each batch on to ``out``
    and hashes each leaf's range as it passes; when a leaf's range is complete its digest is
    compared with the leaf's CID (a mismatch names the leaf, and the caller discards ``out``: a
    temporary file nobody reads until every leaf has matched). :attr:`offset` is how far the file
    is verified; a stream that stopped can go on from there after :meth:`restart`, and
    :meth:`supply` takes the next leaf as a block instead. Not thread-safe: use it from one
    thread at a time.
    """

    def __init__(self, root_name: str, leaves: list[tuple[bytes, int]], out: LeafSink) -> None:
        self.root_name = root_name
        self._leaves = leaves
        self._out = out
        self._i = 0
        self._hash: Any = None  # hashlib.sha256 of the current leaf's bytes so far
        self._left = 0
        self.offset = 0
        self.size = sum(size for _, size in leaves)
        self._next_leaf_or_empty()

    @property
    def done(self) -> bool:
        return self._i == len(self._leaves)

    def next_leaf(self) -> bytes | None:
        return self._leaves[self._i][0] if not self.done else None

    def restart(self) -> None:
        """Drop the bytes of an incomplete leaf (the stream will start again at ``offset``)."""
        if self._hash is not None:
            self._out.rewind(self.offset)
            self._hash = None
            self._left = self._leaves[self._i][1]

    def feed(self, chunks: list[bytes]) -> None:
        """Take the next bytes of the file (a batch of received pieces).

        The batch is joined once and written whole, then hashed leaf range by leaf range: few,
        large calls that release the GIL (hashing and writing), rather than several per piece,
        so the thread that reads the network is not held up (nor this one by it).
        """
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        n = len(data)
        if n > self.size - self.offset - self._written_ahead():
            raise DagError(
                f"the node sent more than the {self.size} bytes the DAG of "
                f"{self.root_name} describes",
                self.root_name,
            )
        self._out.write_part(data)
        with memoryview(data) as view:
            pos = 0
            while pos < n:
                if self._hash is None:
                    self._hash = hashlib.sha256()
                take = min(self._left, n - pos)
                with view[pos : pos + take] as part:
                    self._hash.update(part)
                pos += take
                self._left -= take
                if not self._left:
                    self._finish_leaf(self._hash.digest())

    def _written_ahead(self) -> int:
        """Bytes of the current, incomplete leaf already taken."""
        if self._hash is None or self.done:
            return 0
        return self._leaves[self._i][1] - self._left

    def supply(self, cid: bytes, block: bytes) -> None:
        """Take the next leaf as a block (after a stream stopped inside or before it)."""
        if self.next_leaf() != cid:
            raise ValueError("supply() takes the next leaf")
        self.restart()
        size = self._leaves[self._i][1]
        verify_block(parse_cid(cid), block)
        if len(block) != size:
            name = cid_str(cid)
            raise DagError(f"block {name} is {len(block)} bytes; its parent says {size}", name)
        self._out.write_part(block)
        self._finish_leaf(cid[4:])

    def _finish_leaf(self, digest: bytes) -> None:
        """The current leaf's bytes are all in: check them, then move to the next leaf."""
        self._accept(digest)
        self._next_leaf_or_empty()

    def _accept(self, digest: bytes) -> None:
        cid, size = self._leaves[self._i]
        if digest != cid[4:]:
            name = cid_str(cid)
            raise BlockMismatch(
                f"block {name} does not match its CID: its bytes (file offset {self.offset}) "
                f"hash to sha2-256 {digest.hex()}",
                name,
            )
        self._out.add_range(size, digest)
        self._hash = None
        self.offset += size
        self._i += 1

    def _next_leaf_or_empty(self) -> None:
        """Set up the next leaf; empty leaves (no bytes to wait for) are checked at once."""
        while self._i < len(self._leaves):
            self._left = self._leaves[self._i][1]
            if self._left:
                return
            self._accept(_EMPTY_SHA256)
