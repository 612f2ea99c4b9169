"""A file of raw leaves checked in its plain file stream, leaf by leaf against their CIDs.

For a file of raw leaves under dag-pb nodes (the layout ``ipfs add --cid-version=1`` writes)
there is a cheaper way than walking its blocks (``registry.dag_verify``), with the same
guarantee: :class:`LeafPlanner` lists the leaves, in file order, from the (verified) dag-pb
nodes alone, and :class:`LeafVerifier` checks the plain file stream range by range against
them; a raw block is exactly its bytes of the file, so each range is that block, hashed and
compared with its CID (``registry.dag_blocks``).
"""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO, Protocol

from registry.dag_blocks import (
    DAG_PB,
    MAX_DEPTH,
    MIN_BYTES_PER_VISIT,
    SHA2_256,
    BlockMismatch,
    Children,
    DagError,
    DagTooLarge,
    cid_str,
    decode_file_node,
    parse_cid,
    repeat_limit,
    too_many_repeats,
    verify_block,
)
from registry.dagpb import MAX_BLOCK_SIZE
from registry.unixfs import RAW_PREFIX

_EMPTY_SHA256 = hashlib.sha256(b"").digest()


class NotPlannable(Exception):
    """The file is not all raw sha2-256 leaves under dag-pb nodes without inline data: its
    bytes cannot be checked leaf by leaf from the file alone (walk its blocks instead)."""


class LeafPlanner:
    """The raw leaves of a UnixFS file, in file order, from its dag-pb nodes alone.

    A raw leaf *is* its bytes of the file, so once the (verified) dag-pb nodes name every leaf
    and its size, the file itself (``cat``) can be checked range by range, each range against
    its leaf's CID (:class:`LeafVerifier`): every block is still hashed and compared with its
    CID, and the node sends the leaves without the CAR framing. Feed the nodes
    :meth:`wanted` names with :meth:`add_node` (verified here, as
    ``dag_verify.FileAssembler`` does, with the same bounds), then call :meth:`leaves`. Raises
    :class:`NotPlannable` for layouts that need the block walk (dag-pb leaves, inline data,
    identity CIDs).
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
        root_size = self._nodes[self.root][1]
        repeats_left = repeat_limit(root_size)
        seen: set[bytes] = set()
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
            if cid in seen:
                repeats_left -= 1
                if repeats_left < 0:
                    raise too_many_repeats(self.root_name)
            else:
                seen.add(cid)
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
    incomplete leaf). ``registry.blob_record.PendingBlob`` is one; :class:`FileSink` adapts a
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
