"""dag-pb nodes: canonical encoding and strict decoding.

CIDs of files added with ``ipfs add`` name dag-pb blocks whose ``Data`` holds a UnixFS message
(``registry.unixfs_data``). This module writes those blocks byte for byte as go-merkledag and
js ``@ipld/dag-pb`` do (``Links`` before ``Data``; inside a link ``Hash``, ``Name``,
``Tsize``) so that their hashes match, and reads them back from untrusted sources: decoding is
bounded by ``MAX_BLOCK_SIZE`` and rejects truncated, oversized, duplicated, out-of-order or
unknown fields with a ``ValueError`` that names the problem. The protobuf primitives are in
``registry.protobuf``.

Protobuf schema (https://ipld.io/specs/codecs/dag-pb/spec/)::

    message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.protobuf import (
    WIRE_BYTES,
    WIRE_VARINT,
    bounded_view,
    decode_varint,
    encode_varint,
    expect_wire,
    field_key,
    len_delimited,
    read_bytes,
    read_key,
)

MAX_BLOCK_SIZE = 4 * 1024 * 1024
"""Largest block the decoders accept (Kubo itself refuses blocks over 1 MiB unless told
``--allow-big-block``, and bitswap messages are capped at 4 MiB)."""


# --------------------------------------------------------------------------------------------
# Binary CIDs (link targets)


def validate_cid_bytes(cid: bytes | memoryview) -> None:
    """Check that ``cid`` is a well-formed binary CID (v0, or v1 with a complete multihash)."""
    view = memoryview(cid)
    n = len(view)
    if n == 34 and view[0] == 0x12 and view[1] == 0x20:
        return  # CIDv0: a bare sha2-256 multihash
    if n == 0:
        raise ValueError("empty CID")
    version, pos = decode_varint(view, 0, "CID version")
    if version != 1:
        raise ValueError(f"unsupported CID version {version}")
    _codec, pos = decode_varint(view, pos, "CID codec")
    _hash_code, pos = decode_varint(view, pos, "CID multihash code")
    digest_len, pos = decode_varint(view, pos, "CID multihash length")
    if pos + digest_len != n:
        raise ValueError(f"CID multihash declares {digest_len} digest bytes, has {n - pos}")


# --------------------------------------------------------------------------------------------
# dag-pb


@dataclass(frozen=True, slots=True)
class PBLink:
    """A link in a dag-pb node: the binary CID of the child, its name and cumulative size."""

    hash: bytes
    name: str | None = None
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    """A dag-pb node: ordered links and an opaque payload (UnixFS ``Data`` for files)."""

    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def encode_link(link: PBLink) -> bytes:
    """Serialize one PBLink (fields in order Hash, Name, Tsize; absent fields omitted)."""
    out = len_delimited(1, link.hash)
    if link.name is not None:
        out += len_delimited(2, link.name.encode("utf-8"))
    if link.tsize is not None:
        out += field_key(3, WIRE_VARINT) + encode_varint(link.tsize)
    return out


def encode_node(node: PBNode) -> bytes:
    """Serialize a PBNode canonically: all ``Links`` (field 2), then ``Data`` (field 1)."""
    parts = [len_delimited(2, encode_link(link)) for link in node.links]
    if node.data is not None:
        parts.append(len_delimited(1, node.data))
    return b"".join(parts)


def _decode_link(buf: memoryview) -> PBLink:
    pos = 0
    last_field = 0
    cid: bytes | None = None
    name: str | None = None
    tsize: int | None = None
    while pos < len(buf):
        field, wire_type, pos = read_key(buf, pos, "PBLink")
        if field <= last_field:
            what = "duplicate" if field == last_field else "out-of-order"
            raise ValueError(f"PBLink: {what} field {field}")
        last_field = field
        if field == 1:
            expect_wire("PBLink", "Hash", wire_type, WIRE_BYTES)
            raw, pos = read_bytes(buf, pos, "PBLink.Hash")
            validate_cid_bytes(raw)
            cid = bytes(raw)
        elif field == 2:
            expect_wire("PBLink", "Name", wire_type, WIRE_BYTES)
            raw, pos = read_bytes(buf, pos, "PBLink.Name")
            try:
                name = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"PBLink.Name is not valid UTF-8: {exc}") from None
        elif field == 3:
            expect_wire("PBLink", "Tsize", wire_type, WIRE_VARINT)
            tsize, pos = decode_varint(buf, pos, "PBLink.Tsize")
        else:
            raise ValueError(f"PBLink: unknown field {field}")
    if cid is None:
        raise ValueError("PBLink: missing Hash")
    return PBLink(cid, name, tsize)


def decode_node(block: bytes | bytearray | memoryview) -> PBNode:
    """Parse a dag-pb block strictly, as the dag-pb spec requires.

    Only fields 1 (Data, at most once) and 2 (Links) are allowed; Data may come before or after
    the links (both orders exist in the wild) but must not split them. Inside a link the fields
    must appear once each, in field order, and Hash must be a well-formed binary CID.
    Raises ``ValueError`` naming the problem otherwise.
    """
    buf = bounded_view(block, "dag-pb block", MAX_BLOCK_SIZE)
    pos = 0
    links: list[PBLink] = []
    data: bytes | None = None
    links_closed = False
    while pos < len(buf):
        field, wire_type, pos = read_key(buf, pos, "PBNode")
        if field == 1:
            expect_wire("PBNode", "Data", wire_type, WIRE_BYTES)
            if data is not None:
                raise ValueError("PBNode: duplicate Data field")
            raw, pos = read_bytes(buf, pos, "PBNode.Data")
            data = bytes(raw)
            links_closed = bool(links)
        elif field == 2:
            expect_wire("PBNode", "Links", wire_type, WIRE_BYTES)
            if links_closed:
                raise ValueError("PBNode: Links field after Data field")
            raw, pos = read_bytes(buf, pos, "PBNode.Links")
            links.append(_decode_link(raw))
        else:
            raise ValueError(f"PBNode: unknown field {field}")
    return PBNode(tuple(links), data)
