"""UnixFS ``Data`` messages (carried in a dag-pb node's ``Data``): canonical encoding and strict
decoding.

Encoded in field order, as go-unixfs and js-ipfs-unixfs do, so that the hashes of the blocks
that carry them match; decoded from untrusted sources bounded by ``MAX_BLOCK_SIZE``, rejecting
duplicated or unknown fields, wrong wire types and unknown ``Type`` values with a ``ValueError``
that names the problem. Protobuf schema (the UnixFS spec)::

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

from registry.dagpb import MAX_BLOCK_SIZE
from registry.protobuf import (
    MAX_UINT64,
    WIRE_BYTES,
    WIRE_FIXED32,
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
    out = field_key(1, WIRE_VARINT) + encode_varint(seconds & MAX_UINT64)
    if nanos is not None:
        out += field_key(2, WIRE_FIXED32) + nanos.to_bytes(4, "little")
    return out


def encode_unixfs(msg: UnixFSData) -> bytes:
    """Serialize a UnixFS ``Data`` message in field order, as go-unixfs and js-ipfs-unixfs do.

    ``blocksizes`` are written unpacked (one key per value), which is what both emit.
    """
    out = bytearray(field_key(1, WIRE_VARINT) + encode_varint(int(msg.type)))
    if msg.data is not None:
        out += len_delimited(2, msg.data)
    if msg.filesize is not None:
        out += field_key(3, WIRE_VARINT) + encode_varint(msg.filesize)
    blocksize_key = field_key(4, WIRE_VARINT)
    for size in msg.blocksizes:
        out += blocksize_key + encode_varint(size)
    if msg.hash_type is not None:
        out += field_key(5, WIRE_VARINT) + encode_varint(msg.hash_type)
    if msg.fanout is not None:
        out += field_key(6, WIRE_VARINT) + encode_varint(msg.fanout)
    if msg.mode is not None:
        out += field_key(7, WIRE_VARINT) + encode_varint(msg.mode)
    if msg.mtime is not None:
        out += len_delimited(8, _encode_mtime(*msg.mtime))
    return bytes(out)


def _decode_mtime(buf: memoryview) -> tuple[int, int | None]:
    pos = 0
    seconds: int | None = None
    nanos: int | None = None
    while pos < len(buf):
        field, wire_type, pos = read_key(buf, pos, "UnixTime")
        if field == 1:
            expect_wire("UnixTime", "Seconds", wire_type, WIRE_VARINT)
            if seconds is not None:
                raise ValueError("UnixTime: duplicate Seconds field")
            raw, pos = decode_varint(buf, pos, "UnixTime.Seconds")
            seconds = raw - (1 << 64) if raw >> 63 else raw
        elif field == 2:
            expect_wire("UnixTime", "FractionalNanoseconds", wire_type, WIRE_FIXED32)
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
    buf = bounded_view(payload, "UnixFS Data", MAX_BLOCK_SIZE)
    pos = 0
    seen: set[int] = set()
    fields: dict[int, int] = {}
    data: bytes | None = None
    blocksizes: list[int] = []
    mtime: tuple[int, int | None] | None = None
    names = {1: "Type", 2: "Data", 3: "filesize", 5: "hashType", 6: "fanout", 7: "mode", 8: "mtime"}
    while pos < len(buf):
        field, wire_type, pos = read_key(buf, pos, "UnixFS Data")
        if field == 4:
            if wire_type == WIRE_VARINT:
                value, pos = decode_varint(buf, pos, "UnixFS Data.blocksizes")
                blocksizes.append(value)
            elif wire_type == WIRE_BYTES:
                raw, pos = read_bytes(buf, pos, "UnixFS Data.blocksizes")
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
            expect_wire("UnixFS Data", name, wire_type, WIRE_BYTES)
            raw, pos = read_bytes(buf, pos, "UnixFS Data.Data")
            data = bytes(raw)
        elif field == 8:
            expect_wire("UnixFS Data", name, wire_type, WIRE_BYTES)
            raw, pos = read_bytes(buf, pos, "UnixFS Data.mtime")
            mtime = _decode_mtime(raw)
        else:
            expect_wire("UnixFS Data", name, wire_type, WIRE_VARINT)
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
