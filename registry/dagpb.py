"""dag-pb nodes and UnixFS ``Data`` messages: canonical encoding and strict decoding.

CIDs of files added with ``ipfs add`` name dag-pb blocks whose ``Data`` holds a UnixFS message.
This module writes those blocks byte for byte as go-merkledag and js ``@ipld/dag-pb`` do
(``Links`` before ``Data``; inside a link ``Hash``, ``Name``, ``Tsize``) so that their hashes
match, and reads them back from untrusted sources: decoding is bounded by ``MAX_BLOCK_SIZE``
and rejects truncated, oversized, duplicated, out-of-order or unknown fields with a
``ValueError`` that names the problem.

Protobuf schemas (https://ipld.io/specs/codecs/dag-pb/spec/ and the UnixFS spec)::

    message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }
    message Data {
      required DataType Type = 1; optional bytes Data = 2; optional uint64 filesize = 3;
      repeated uint64 blocksizes = 4; optional uint64 hashType = 5; optional uint64 fanout = 6;
      optional uint32 mode = 7; optional UnixTime mtime = 8;
    }
    message UnixTime { required int64 Seconds = 1; optional fixed32 FractionalNanoseconds = 2; }
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

MAX_BLOCK_SIZE = 4 * 1024 * 1024
"""Largest block the decoders accept (Kubo itself refuses blocks over 1 MiB unless told
``--allow-big-block``, and bitswap messages are capped at 4 MiB)."""

_MAX_UINT64 = (1 << 64) - 1
_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_BYTES = 2
_WIRE_FIXED32 = 5


# --------------------------------------------------------------------------------------------
# Protobuf primitives


def encode_varint(value: int) -> bytes:
    """Encode an unsigned integer (< 2**64) as a protobuf varint."""
    if value < 0 or value > _MAX_UINT64:
        raise ValueError(f"varint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int, what: str = "varint") -> tuple[int, int]:
    """Read a varint at ``pos``; return ``(value, next_pos)``.

    Rejects varints that run past the end of ``buf``, are longer than 10 bytes or exceed 64 bits.
    """
    end = len(buf)
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise ValueError(f"truncated {what} at offset {start}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= 70:
            raise ValueError(f"{what} at offset {start} is longer than 10 bytes")
    if result > _MAX_UINT64:
        raise ValueError(f"{what} at offset {start} exceeds 64 bits")
    return result, pos


def _key(field: int, wire_type: int) -> bytes:
    return encode_varint((field << 3) | wire_type)


def _len_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, _WIRE_BYTES) + encode_varint(len(payload)) + payload


def _read_key(buf: memoryview, pos: int, message: str) -> tuple[int, int, int]:
    key, pos = decode_varint(buf, pos, f"{message} field key")
    field, wire_type = key >> 3, key & 7
    if field == 0:
        raise ValueError(f"{message}: field number 0 is invalid")
    return field, wire_type, pos


def _read_bytes(buf: memoryview, pos: int, what: str) -> tuple[memoryview, int]:
    length, pos = decode_varint(buf, pos, f"{what} length")
    end = pos + length
    if end > len(buf):
        raise ValueError(f"truncated {what}: needs {length} bytes, {len(buf) - pos} left")
    return buf[pos:end], end


def _expect_wire(message: str, name: str, wire_type: int, expected: int) -> None:
    if wire_type != expected:
        raise ValueError(f"{message}.{name}: wire type {wire_type}, expected {expected}")


def _as_view(block: bytes | bytearray | memoryview, what: str) -> memoryview:
    view = memoryview(block).cast("B")
    if len(view) > MAX_BLOCK_SIZE:
        raise ValueError(f"{what} is {len(view)} bytes, more than the {MAX_BLOCK_SIZE} allowed")
    return view


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
    out = _len_delimited(1, link.hash)
    if link.name is not None:
        out += _len_delimited(2, link.name.encode("utf-8"))
    if link.tsize is not None:
        out += _key(3, _WIRE_VARINT) + encode_varint(link.tsize)
    return out


def encode_node(node: PBNode) -> bytes:
    """Serialize a PBNode canonically: all ``Links`` (field 2), then ``Data`` (field 1)."""
    parts = [_len_delimited(2, encode_link(link)) for link in node.links]
    if node.data is not None:
        parts.append(_len_delimited(1, node.data))
    return b"".join(parts)


def _decode_link(buf: memoryview) -> PBLink:
    pos = 0
    last_field = 0
    cid: bytes | None = None
    name: str | None = None
    tsize: int | None = None
    while pos < len(buf):
        field, wire_type, pos = _read_key(buf, pos, "PBLink")
        if field <= last_field:
            what = "duplicate" if field == last_field else "out-of-order"
            raise ValueError(f"PBLink: {what} field {field}")
        last_field = field
        if field == 1:
            _expect_wire("PBLink", "Hash", wire_type, _WIRE_BYTES)
            raw, pos = _read_bytes(buf, pos, "PBLink.Hash")
            validate_cid_bytes(raw)
            cid = bytes(raw)
        elif field == 2:
            _expect_wire("PBLink", "Name", wire_type, _WIRE_BYTES)
            raw, pos = _read_bytes(buf, pos, "PBLink.Name")
            try:
                name = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"PBLink.Name is not valid UTF-8: {exc}") from None
        elif field == 3:
            _expect_wire("PBLink", "Tsize", wire_type, _WIRE_VARINT)
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
    buf = _as_view(block, "dag-pb block")
    pos = 0
    links: list[PBLink] = []
    data: bytes | None = None
    links_closed = False
    while pos < len(buf):
        field, wire_type, pos = _read_key(buf, pos, "PBNode")
        if field == 1:
            _expect_wire("PBNode", "Data", wire_type, _WIRE_BYTES)
            if data is not None:
                raise ValueError("PBNode: duplicate Data field")
            raw, pos = _read_bytes(buf, pos, "PBNode.Data")
            data = bytes(raw)
            links_closed = bool(links)
        elif field == 2:
            _expect_wire("PBNode", "Links", wire_type, _WIRE_BYTES)
            if links_closed:
                raise ValueError("PBNode: Links field after Data field")
            raw, pos = _read_bytes(buf, pos, "PBNode.Links")
            links.append(_decode_link(raw))
        else:
            raise ValueError(f"PBNode: unknown field {field}")
    return PBNode(tuple(links), data)


# --------------------------------------------------------------------------------------------
# UnixFS Data


class UnixFSType(IntEnum):
    """UnixFS ``DataType`` values."""

    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS message carried in a dag-pb node's ``Data``.

    ``mtime`` is ``(seconds, fractional_nanoseconds)``; nanoseconds may be ``None``.
    """

    type: UnixFSType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: tuple[int, int | None] | None = None


def _encode_mtime(seconds: int, nanos: int | None) -> bytes:
    out = _key(1, _WIRE_VARINT) + encode_varint(seconds & _MAX_UINT64)
    if nanos is not None:
        out += _key(2, _WIRE_FIXED32) + nanos.to_bytes(4, "little")
    return out


def encode_unixfs(msg: UnixFSData) -> bytes:
    """Serialize a UnixFS ``Data`` message in field order, as go-unixfs and js-ipfs-unixfs do.

    ``blocksizes`` are written unpacked (one key per value), which is what both emit.
    """
    out = bytearray(_key(1, _WIRE_VARINT) + encode_varint(int(msg.type)))
    if msg.data is not None:
        out += _len_delimited(2, msg.data)
    if msg.filesize is not None:
        out += _key(3, _WIRE_VARINT) + encode_varint(msg.filesize)
    blocksize_key = _key(4, _WIRE_VARINT)
    for size in msg.blocksizes:
        out += blocksize_key + encode_varint(size)
    if msg.hash_type is not None:
        out += _key(5, _WIRE_VARINT) + encode_varint(msg.hash_type)
    if msg.fanout is not None:
        out += _key(6, _WIRE_VARINT) + encode_varint(msg.fanout)
    if msg.mode is not None:
        out += _key(7, _WIRE_VARINT) + encode_varint(msg.mode)
    if msg.mtime is not None:
        out += _len_delimited(8, _encode_mtime(*msg.mtime))
    return bytes(out)


def _decode_mtime(buf: memoryview) -> tuple[int, int | None]:
    pos = 0
    seconds: int | None = None
    nanos: int | None = None
    while pos < len(buf):
        field, wire_type, pos = _read_key(buf, pos, "UnixTime")
        if field == 1:
            _expect_wire("UnixTime", "Seconds", wire_type, _WIRE_VARINT)
            if seconds is not None:
                raise ValueError("UnixTime: duplicate Seconds field")
            raw, pos = decode_varint(buf, pos, "UnixTime.Seconds")
            seconds = raw - (1 << 64) if raw >> 63 else raw
        elif field == 2:
            _expect_wire("UnixTime", "FractionalNanoseconds", wire_type, _WIRE_FIXED32)
            if nanos is not None:
                raise ValueError("UnixTime: duplicate FractionalNanoseconds field")
            if pos + 4 > len(buf):
                raise ValueError("truncated UnixTime.FractionalNanoseconds")
            nanos = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
            if nanos > 999_999_999:
                raise ValueError(f"UnixTime.FractionalNanoseconds out of range: {nanos}")
        else:
            raise ValueError(f"UnixTime: unknown field {field}")
    if seconds is None:
        raise ValueError("UnixTime: missing Seconds")
    return seconds, nanos


def _decode_packed_varints(buf: memoryview, what: str) -> list[int]:
    values: list[int] = []
    pos = 0
    while pos < len(buf):
        value, pos = decode_varint(buf, pos, what)
        values.append(value)
    return values


def decode_unixfs(payload: bytes | bytearray | memoryview) -> UnixFSData:
    """Parse a UnixFS ``Data`` message strictly.

    Scalar fields may appear at most once; ``blocksizes`` is accepted packed or unpacked;
    unknown fields, wrong wire types and unknown ``Type`` values raise ``ValueError``.
    """
    buf = _as_view(payload, "UnixFS Data")
    pos = 0
    seen: set[int] = set()
    fields: dict[int, int] = {}
    data: bytes | None = None
    blocksizes: list[int] = []
    mtime: tuple[int, int | None] | None = None
    names = {1: "Type", 2: "Data", 3: "filesize", 5: "hashType", 6: "fanout", 7: "mode", 8: "mtime"}
    while pos < len(buf):
        field, wire_type, pos = _read_key(buf, pos, "UnixFS Data")
        if field == 4:
            if wire_type == _WIRE_VARINT:
                value, pos = decode_varint(buf, pos, "UnixFS Data.blocksizes")
                blocksizes.append(value)
            elif wire_type == _WIRE_BYTES:
                raw, pos = _read_bytes(buf, pos, "UnixFS Data.blocksizes")
                blocksizes.extend(_decode_packed_varints(raw, "UnixFS Data.blocksizes"))
            else:
                raise ValueError(f"UnixFS Data.blocksizes: wire type {wire_type}, expected 0 or 2")
            continue
        name = names.get(field)
        if name is None:
            raise ValueError(f"UnixFS Data: unknown field {field}")
        if field in seen:
            raise ValueError(f"UnixFS Data: duplicate {name} field")
        seen.add(field)
        if field == 2:
            _expect_wire("UnixFS Data", name, wire_type, _WIRE_BYTES)
            raw, pos = _read_bytes(buf, pos, "UnixFS Data.Data")
            data = bytes(raw)
        elif field == 8:
            _expect_wire("UnixFS Data", name, wire_type, _WIRE_BYTES)
            raw, pos = _read_bytes(buf, pos, "UnixFS Data.mtime")
            mtime = _decode_mtime(raw)
        else:
            _expect_wire("UnixFS Data", name, wire_type, _WIRE_VARINT)
            fields[field], pos = decode_varint(buf, pos, f"UnixFS Data.{name}")
    if 1 not in fields:
        raise ValueError("UnixFS Data: missing Type")
    try:
        kind = UnixFSType(fields[1])
    except ValueError:
        raise ValueError(f"UnixFS Data: unknown Type {fields[1]}") from None
    mode = fields.get(7)
    if mode is not None and mode > 0xFFFFFFFF:
        raise ValueError(f"UnixFS Data.mode out of range: {mode}")
    return UnixFSData(
        type=kind,
        data=data,
        filesize=fields.get(3),
        blocksizes=tuple(blocksizes),
        hash_type=fields.get(5),
        fanout=fields.get(6),
        mode=mode,
        mtime=mtime,
    )
