"""Single blocks of a UnixFS file DAG from an untrusted source: CIDs parsed, blocks checked.

A file added to IPFS is a DAG: ``raw`` leaves (or dag-pb leaves holding UnixFS data) under
dag-pb nodes whose links name their children by CID, up to one root. The CID of the root
therefore commits to every byte of the file, but only if every block on the way down is
checked. This module holds what every way of checking them shares: :func:`parse_cid` (strict;
raw or dag-pb, sha2-256 or identity), :func:`verify_block` (the bytes hash to the CID),
:func:`decode_file_node` (a verified dag-pb node as a UnixFS file node, strictly, through
``registry.dagpb`` and ``registry.unixfs_data``), the bounds on a DAG, and the errors, each
naming the offending block's CID. The walks are ``registry.dag_verify.FileAssembler`` (any
layout, block by block) and ``registry.dag_leaves`` (raw leaves checked in the file stream).

Binary CIDs are parsed with ``multiformats.varint``; the hot path compares the 4-byte prefix of
the common CIDv1 sha2-256 forms and the CIDv0 prefix directly, since building a
``multiformats.CID`` per block costs more than hashing it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from multiformats import CID, multicodec, varint

from registry.dagpb import decode_node
from registry.unixfs import DAG_PB_PREFIX, RAW_PREFIX, cid_to_str
from registry.unixfs_data import UnixFSType, decode_unixfs

RAW = multicodec.get("raw").code
DAG_PB = multicodec.get("dag-pb").code
SHA2_256 = 0x12
IDENTITY = 0x00

MAX_DEPTH = 64
"""Deepest DAG accepted (a balanced 174-ary tree of 256 KiB leaves reaches 1 PB at depth 6)."""

MAX_IDENTITY_SIZE = 1024
"""Largest inline (identity-hashed) block accepted."""

MIN_BYTES_PER_VISIT = 64
"""Walking the DAG may visit at most ``1024 + filesize / MIN_BYTES_PER_VISIT`` blocks: a DAG that
repeats tiny or empty subtrees (a decompression bomb) is refused before it costs real work."""

MIN_REPEATED_BYTES = 4096
"""Visits of a block already seen (a repeated link: free for whoever built the DAG, unlike a new
block, which must be sent and hashed) are at most ``1024 + filesize / MIN_REPEATED_BYTES``: the
walk's cost is bounded by the unique blocks plus this. A file of zeros in 256 KiB chunks repeats
one leaf ``filesize / 262144`` times; a file that links one 64-byte block over and over is
refused after a few thousand steps instead of ``filesize / 64``."""

_V0_PREFIX = b"\x12\x20"


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


def repeat_limit(filesize: int) -> int:
    """The most visits of already-seen blocks a walk of a ``filesize``-byte file may make."""
    return 1024 + filesize // MIN_REPEATED_BYTES


def too_many_repeats(root_name: str) -> DagError:
    """The error of a walk past :func:`repeat_limit`."""
    return DagError(
        f"the DAG of {root_name} links blocks it already used more often than a file of its "
        f"size can need (more than one repeat per {MIN_REPEATED_BYTES} bytes)",
        root_name,
    )
