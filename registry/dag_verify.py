"""Rebuild a UnixFS file of any layout from untrusted blocks, checking every block against its CID.

:class:`FileAssembler` hashes each block it is given and compares the digest with the CID it
came under (``registry.dag_blocks``: sha2-256; identity CIDs carry their bytes), decodes dag-pb
nodes strictly, walks the DAG depth first and writes the leaves' bytes, in order, to a file. It
never trusts the source of the blocks (a CAR stream, ``registry.car``): blocks may come in any
order (those that arrive early are buffered, bounded), may repeat or be left out when the DAG
repeats a subtree (a file of zeros), and anything that does not fit — a digest that does not
match, a malformed node, sizes that disagree with the UnixFS metadata, a directory instead of
a file, a DAG deeper or larger than allowed — raises an error naming the block's CID.

For a file of raw leaves under dag-pb nodes (the layout ``ipfs add --cid-version=1`` writes)
``registry.dag_leaves`` checks the plain file stream instead, with the same guarantee.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from registry.dag_blocks import (
    IDENTITY,
    MAX_DEPTH,
    MIN_BYTES_PER_VISIT,
    RAW,
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

MAX_BUFFERED_BYTES = 32 * 1024 * 1024
"""Bytes of blocks that arrived before they were needed that the assembler keeps, at most."""


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
        self._repeats = 0
        self._repeat_limit = repeat_limit(max_size)
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
                self._repeated()
                stack.pop()
                self._check_size(cid, expected, leaf[1])
                self._copy(*leaf)
                continue
            node = self._nodes.get(cid)
            if node is not None:
                self._repeated()
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
                self._repeat_limit = repeat_limit(filesize)
            self._write(inline)
            if not children:  # a dag-pb leaf: replay it like a raw one
                self._leaves[cid] = (offset, len(inline), None)
                continue
            self._nodes[cid] = _Node(offset, len(inline), children, filesize)
            self._push_children(cid, children, depth)

    def _repeated(self) -> None:
        self._repeats += 1
        if self._repeats > self._repeat_limit:
            raise too_many_repeats(self.root_name)

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
